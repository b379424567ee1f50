"""alignkit's server against the servers of the engines underneath it, on one load, in one run.

The load: 28 conversations (20 single-turn instructions of bench/urial_selfstop.py and 8 two-turn ones below),
cycled; C concurrent clients each send R requests, at most T new tokens, greedy, no repetition penalty (sent
explicitly: alignkit's URIAL route would otherwise add its recommended 1.15) -- every server gets the same sampling
parameters, and each engine runs in vLLM's default precision for this model (``--dtype auto``: bfloat16 on a CPU
with AMX; alignkit's own default is float32). alignkit gets chat messages on a URIAL route
(``alignkit serve --model X --method urial``); an engine's own server gets the identical rendered URIAL prompt with
its stop strings on ``/v1/completions`` (what the route sends its engine).

Servers (each started here as a subprocess, measured alone, then stopped):

* ``vllm``: vLLM's own OpenAI server (``python -m vllm.entrypoints.openai.api_server``, the converted Gemma folder,
  ``--enforce-eager``), from the vLLM environment;
* ``alignkit-vllm``: ``alignkit serve --model vllm:gemma-3-270m --method urial`` (vLLM's async engine);
* ``alignkit-vllm-offline``: the same with ``--vllm-engine offline`` (the offline engine in static batches -- the
  path before the async engine);
* ``alignkit-hf``, ``alignkit-llamacpp``: the transformers and llama.cpp backends;
* ``llamacpp``: llama-cpp-python's own server on the embedded GGUF.

Each server is warmed with one full-length request per client, then the load runs ``--rounds`` times (3) and the
median round (by tokens/s) is kept, with every round's tokens/s: a 2-core machine shared with the engine's own
processes is noisy. Per server: tokens/s (completion tokens over wall time), p50/p95 request latency, the ratio to vLLM's own server,
and -- where the engine is the same -- how many answers are identical (alignkit's answer is the route's cleaned
completion: it is compared with the route's cleaning of the engine server's raw completion).

``--dtype float32`` runs both vLLM engines in float32 instead (written to ``serve_peers_float32.json``): vLLM's CPU
build is batch-invariant there, so the answers of two servers on one engine can be compared exactly.

    python bench/serve_peers.py [--servers vllm,alignkit-vllm,...] [--clients 16] [--requests 6] [--max-tokens 64]
                                [--dtype auto|float32] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from _results import RESULTS, write_result

ROOT = Path(__file__).resolve().parents[1]
MAIN = ROOT / ".venv" / "bin"
VLLM = ROOT / ".venv-vllm" / "bin"
PENALTY = 1.0  # sent to every server (off)

TWO_TURN = [
    ("Suggest a name for a grey kitten.", "Ash is short and soft.", "Why would that name suit her?"),
    ("How many legs does a spider have?", "A spider has eight legs.", "And an insect?"),
    ("Give me a word for a very large house.", "Mansion.", "Use it in a sentence."),
    ("What is the boiling point of water at sea level?", "100 degrees Celsius.", "What is that in Fahrenheit?"),
    ("Recommend a fruit that is high in vitamin C.", "An orange is a good choice.", "What else has a lot?"),
    ("Which planet is closest to the Sun?", "Mercury.", "How long is a year there?"),
    ("Name a musical instrument with strings.", "The violin.", "How is it played?"),
    ("What should I pack for a day of hiking?", "Water, a snack and a map.", "Anything for rain?"),
]

ENGINE_OF = {"vllm": "vllm", "alignkit-vllm": "vllm", "alignkit-vllm-offline": "vllm",
             "alignkit-hf": "hf", "alignkit-llamacpp": "llamacpp", "llamacpp": "llamacpp"}
SERVERS = tuple(ENGINE_OF)


def conversations() -> list[list[dict[str, str]]]:
    from urial_selfstop import INSTRUCTIONS

    convs = [[{"role": "user", "content": q}] for _, q in INSTRUCTIONS]
    for q, a, q2 in TWO_TURN:
        convs.append([{"role": "user", "content": q}, {"role": "assistant", "content": a},
                      {"role": "user", "content": q2}])
    return convs


def urial_route():
    """The URIAL route alignkit serves (on the llama.cpp backend: only its prompt and cleaning are used here)."""
    from alignkit import load_model
    from alignkit.methods import MethodOptions, apply_method

    return apply_method(load_model("llamacpp:gemma-3-270m"), MethodOptions(method="urial"))


def load_items() -> tuple:
    """The URIAL route and the load's items: each conversation as chat messages (for alignkit) and as the rendered
    prompt with its stop strings (for an engine's own server)."""
    route = urial_route()
    items = []
    for conv in conversations():
        prepared = route.prepare_batch([conv], [route_config()])[0]
        items.append({"messages": conv, "prompt": prepared.prompt, "stop": list(prepared.stop)})
    return route, items


def engine_processes() -> list[str]:
    """vLLM engine processes running on this machine (named ``VLLM::...``)."""
    out = subprocess.run(["pgrep", "-af", "VLLM::"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if line.strip()]


def start(name: str, port: int, dtype: str = "auto", src: Path | None = None, tag: str = "") -> subprocess.Popen:
    """Start a server and wait until it answers. ``src``: run alignkit from another source tree (its ``src``
    folder, e.g. a worktree of an earlier commit) on this checkout's environment; ``tag`` names its log."""
    from alignkit.models import catalog

    left = engine_processes()
    if left:  # a leftover engine would take cores from the server measured
        raise SystemExit(f"vLLM engine processes are running ({len(left)}); stop them before measuring: {left[:2]}")

    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "2", "HF_HUB_OFFLINE": "1"}
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
    serve = ["serve", "--method", "urial", "--port", str(port), "--name", "m", "--max-queue", "256"]
    if name == "vllm":
        cmd = [str(VLLM / "python"), "-m", "vllm.entrypoints.openai.api_server",
               "--model", str(catalog.locate("gemma-3-270m")), "--served-model-name", "m", "--port", str(port),
               "--enforce-eager", "--max-model-len", "4096", "--disable-log-stats", "--dtype", dtype]
    elif name == "alignkit-vllm":
        cmd = [str(VLLM / "alignkit"), *serve, "--model", "vllm:gemma-3-270m", "--dtype", dtype]
    elif name == "alignkit-vllm-offline":
        cmd = [str(VLLM / "alignkit"), *serve, "--model", "vllm:gemma-3-270m", "--dtype", dtype, "--vllm-engine", "offline",
               "--max-batch", "16"]
        env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    elif name == "alignkit-hf":
        cmd = [str(MAIN / "alignkit"), *serve, "--model", "gemma-3-270m", "--max-batch", "16"]
    elif name == "alignkit-llamacpp":
        cmd = [str(MAIN / "alignkit"), *serve, "--model", "llamacpp:gemma-3-270m", "--max-batch", "16",
               "--n-seq", "16"]
    elif name == "llamacpp":
        cmd = [str(MAIN / "python"), "-m", "llama_cpp.server", "--model", str(catalog.gguf_path("gemma-3-270m")),
               "--model_alias", "m", "--port", str(port), "--n_ctx", "4096"]
    else:
        raise SystemExit(f"unknown server {name!r}; choose from {', '.join(SERVERS)}")
    if src is not None:  # the same command, alignkit imported from the other tree
        if not name.startswith("alignkit"):
            raise SystemExit(f"{name} is not alignkit: it has no other source tree")
        cmd = [str(Path(cmd[0]).parent / "python"), "-m", "alignkit", *cmd[1:]]
        env["PYTHONPATH"] = str(src)
    (RESULTS.parent.parent / "runs").mkdir(exist_ok=True)  # a fresh checkout has none
    log = open(RESULTS.parent.parent / "runs" / f"serve-peers-{name}{tag}.log", "w")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    deadline = time.time() + 900
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"{name} exited while starting; see {log.name}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2):
                return proc
        except OSError:
            if time.time() > deadline:
                proc.kill()
                raise SystemExit(f"{name} did not start in 900 s; see {log.name}") from None
            time.sleep(1)


def run_load(name: str, url: str, items: list[dict], clients: int, requests: int, max_tokens: int) -> dict:
    """Every client sends its requests one after another; returns throughput, latencies and the answers."""
    import httpx

    chat = name.startswith("alignkit")
    answers: dict[str, dict] = {}
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def client(c: int) -> None:
        with httpx.Client(timeout=900) as http:
            for r in range(requests):
                k = (c * requests + r) % len(items)
                it = items[k]
                body = {"model": "m", "max_tokens": max_tokens, "temperature": 0, "repetition_penalty": PENALTY,
                        "repeat_penalty": PENALTY}  # (llama-cpp-python's server names it so; the others ignore it)
                if chat:
                    body["messages"] = it["messages"]
                else:
                    body.update(prompt=it["prompt"], stop=it["stop"])
                t = time.perf_counter()
                resp = http.post(f"{url}/{'chat/completions' if chat else 'completions'}", json=body)
                dt = time.perf_counter() - t
                with lock:
                    if resp.status_code != 200:
                        errors.append(f"{resp.status_code}: {resp.text[:200]}")
                        continue
                    out = resp.json()
                    choice = out["choices"][0]
                    text = choice["message"]["content"] if chat else choice["text"]
                    answers[f"{c}/{r}"] = {"item": k, "text": text,
                                           "tokens": out["usage"]["completion_tokens"]}
                    latencies.append(dt)

    t = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t
    tokens = sum(a["tokens"] for a in answers.values())
    lat = sorted(latencies)
    return {"requests": len(answers), "errors": len(errors), "first_errors": errors[:3], "seconds": round(wall, 1),
            "completion_tokens": tokens, "tokens_per_s": round(tokens / wall, 1),
            "p50_s": round(statistics.median(lat), 2) if lat else None,
            "p95_s": round(lat[max(0, int(round(0.95 * len(lat))) - 1)], 2) if lat else None,
            "answers": answers}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--servers", default=",".join(SERVERS))
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=6)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--port", type=int, default=8931)
    ap.add_argument("--rounds", type=int, default=3, help="measured rounds per server; the median round is kept")
    ap.add_argument("--dtype", choices=["auto", "float32"], default="auto",
                    help="the engines' precision: vLLM's default (bfloat16 here) or float32, where vLLM's CPU build "
                         "is batch-invariant and the answers can be compared exactly (written to serve_peers_float32)")
    ap.add_argument("--keep", action="store_true", help="keep the results of servers not run now (same load)")
    args = ap.parse_args()
    names = [s.strip() for s in args.servers.split(",") if s.strip()]
    for n in names:
        if n not in ENGINE_OF:
            raise SystemExit(f"unknown server {n!r}; choose from {', '.join(SERVERS)}")

    route, items = load_items()
    load = {"conversations": len(items), "clients": args.clients, "requests_per_client": args.requests,
            "max_tokens": args.max_tokens, "temperature": 0, "repetition_penalty": PENALTY, "rounds": args.rounds}
    result_name = "serve_peers" if args.dtype == "auto" else f"serve_peers_{args.dtype}"
    if args.dtype != "auto":
        load["dtype"] = args.dtype

    previous = RESULTS / f"{result_name}.json"
    results: dict[str, dict] = {}
    if args.keep and previous.is_file():
        old = json.loads(previous.read_text())
        if old.get("load") == load:
            results = {k: v for k, v in old.get("servers", {}).items() if k not in names}
    answers: dict[str, dict] = {}
    for name in names:
        print(f"[serve_peers] {name}: starting", file=sys.stderr)
        proc = start(name, args.port, args.dtype)
        try:
            url = f"http://127.0.0.1:{args.port}/v1"
            # warm-up: one request per client, full length (the first batches of each shape are slow on the CPU)
            run_load(name, url, items, args.clients, 1, args.max_tokens)
            rounds = [run_load(name, url, items, args.clients, args.requests, args.max_tokens)
                      for _ in range(args.rounds)]
            rounds.sort(key=lambda r: r["tokens_per_s"])
            res = rounds[len(rounds) // 2]  # the median round (of an odd number; the upper middle of an even one)
            res["rounds_tokens_per_s"] = [r["tokens_per_s"] for r in rounds]
        finally:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
            deadline = time.time() + 60
            while engine_processes() and time.time() < deadline:  # the engine's own processes stop too
                time.sleep(1)
        answers[name] = res.pop("answers")
        results[name] = {**res, "engine": ENGINE_OF[name]}
        print(f"[serve_peers] {name}: {res['tokens_per_s']} tok/s, p50 {res['p50_s']} s, p95 {res['p95_s']} s, "
              f"errors {res['errors']}", file=sys.stderr)

    saved = RESULTS.parent.parent / "runs" / f"{result_name.replace('_', '-')}-answers.json"
    if args.keep and saved.is_file():
        answers = {**json.loads(saved.read_text()), **answers}
    saved.write_text(json.dumps(answers))
    ref = results.get("vllm")
    for name, res in results.items():
        if ref:
            res["tokens_per_s_vs_vllm"] = round(res["tokens_per_s"] / ref["tokens_per_s"], 2)
            res["p50_vs_vllm"] = round(res["p50_s"] / ref["p50_s"], 2)
        same = [o for o in results if o != name and ENGINE_OF[o] == ENGINE_OF[name] and not o.startswith("alignkit")]
        if name.startswith("alignkit") and same and name in answers and same[0] in answers:
            mine, theirs = answers[name], answers[same[0]]
            keys = sorted(set(mine) & set(theirs))
            res["identical_to"] = same[0]
            res["identical_answers"] = sum(mine[k]["text"] == route.clean(theirs[k]["text"]) for k in keys)
            res["compared"] = len(keys)
    write_result(result_name, {"load": load, "servers": results})
    for name, res in results.items():
        print(f"{name:24} {res['tokens_per_s']:7} tok/s  p50 {res['p50_s']:6} s  p95 {res['p95_s']:6} s  "
              f"x vLLM {res.get('tokens_per_s_vs_vllm', '-')}  p50 x {res.get('p50_vs_vllm', '-')}  "
              f"identical {res.get('identical_answers', '-')}/{res.get('compared', '-')}")


def route_config():
    from alignkit import GenerationConfig

    return GenerationConfig()


if __name__ == "__main__":
    main()
