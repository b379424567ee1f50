"""Load on the OpenAI-compatible server with the embedded Gemma-3-270m under in-context alignment, and a short
request's latency while a long one runs -- the schedulers side by side in one process.

1. **Throughput**: N concurrent clients (official openai client, real sockets) each send R chat requests under
   URIAL, temperature 0. The same load runs three times: the continuous scheduler (requests join the running
   batch between decode steps), the static scheduler (a batch runs until its last row ends), both with
   --max-batch B, and one request at a time (--max-batch 1). Prints requests answered, refused (503), other 5xx
   (must be 0), wall time, throughput, the ratios to one at a time, and how many answers are identical to the
   static scheduler's (temperature 0: they should all be).
2. **Latency**: raw completions on the same weights. A short request (S tokens) alone, then the same request
   sent while a long one (10 x S tokens) is generating; the median of a few tries, for each scheduler.

    python bench/server_load.py [--clients 16] [--requests 10] [--max-tokens 24] [--max-batch 16]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time

from _results import write_result  # bench/_results.py: docs/results/NAME.json


def run_load(url: str, clients: int, requests: int, max_tokens: int) -> tuple[dict, dict]:
    import openai
    from urial_selfstop import INSTRUCTIONS

    counts = {"ok": 0, "refused_503": 0, "server_error": 0, "other_error": 0, "completion_tokens": 0}
    answers: dict[str, str] = {}
    lock = threading.Lock()

    def client(c: int) -> None:
        api = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=600)
        for r in range(requests):
            q = INSTRUCTIONS[(c * requests + r) % len(INSTRUCTIONS)][1]
            while True:
                try:
                    resp = api.chat.completions.create(model="m", messages=[{"role": "user", "content": q}],
                                                       max_tokens=max_tokens, temperature=0)
                    with lock:
                        counts["ok"] += 1
                        counts["completion_tokens"] += resp.usage.completion_tokens
                        answers[f"{c}/{r}"] = resp.choices[0].message.content
                    break
                except openai.APIStatusError as e:
                    with lock:
                        key = ("refused_503" if e.status_code == 503 else "server_error" if e.status_code >= 500
                               else "other_error")
                        counts[key] += 1
                    if e.status_code != 503:
                        break
                    time.sleep(float(e.response.headers.get("retry-after", "1")))  # then try again

    t = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t
    return ({**counts, "seconds": round(wall, 1), "requests_per_s": round(counts["ok"] / wall, 3),
             "tokens_per_s": round(counts["completion_tokens"] / wall, 1)}, answers)


SHORT_PROMPT = "The history of the printing press begins"
LONG_PROMPT = "A detailed guide to growing tomatoes at home. Chapter one:"


def short_latency(url: str, short: int, long: int, tries: int) -> dict:
    """Median seconds of the short request alone and while the long one generates."""
    import httpx

    def post(prompt: str, n: int) -> tuple[float, int]:
        t = time.perf_counter()
        r = httpx.post(url + "/completions", json={"model": "raw", "prompt": prompt, "max_tokens": n,
                                                   "temperature": 0}, timeout=600).json()
        return time.perf_counter() - t, r["usage"]["completion_tokens"]

    alone, during, tokens = [], [], {}
    for _ in range(tries):
        s, tokens["short"] = post(SHORT_PROMPT, short)
        alone.append(s)
        started = threading.Event()
        result = {}

        def long_run(started: threading.Event = started, result: dict = result) -> None:
            t = time.perf_counter()
            with httpx.stream("POST", url + "/completions", json={"model": "raw", "prompt": LONG_PROMPT,
                                                                  "max_tokens": long, "temperature": 0,
                                                                  "stream": True,
                                                                  "stream_options": {"include_usage": True}},
                              timeout=600) as r:
                for line in r.iter_lines():
                    if line.startswith("data: {"):
                        started.set()
                        usage = json.loads(line[6:]).get("usage")
                        if usage:
                            result["tokens"] = usage["completion_tokens"]
            result["seconds"] = time.perf_counter() - t

        th = threading.Thread(target=long_run)
        th.start()
        started.wait(600)
        time.sleep(0.3)  # well into the long request's decoding
        s, _ = post(SHORT_PROMPT, short)
        during.append(s)
        th.join()
        tokens["long"] = result.get("tokens")
    a, d = statistics.median(alone), statistics.median(during)
    return {"short_alone_s": round(a, 3), "short_while_long_runs_s": round(d, 3), "ratio": round(d / a, 2),
            "short_tokens": tokens["short"], "long_tokens": tokens["long"], "tries": tries}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=10)
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--max-queue", type=int, default=64)
    ap.add_argument("--short-tokens", type=int, default=16)
    ap.add_argument("--tries", type=int, default=3)
    args = ap.parse_args(argv)

    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    from alignkit import load_model
    from alignkit.methods import MethodOptions, apply_method
    from alignkit.server.app import build_app
    from alignkit.server.service import Service

    sys.path.insert(0, __file__.rsplit("/", 2)[0])
    from tests.support.openai_server import ServerThread

    base = load_model("gemma-3-270m")
    urial = apply_method(base, MethodOptions(method="urial"))
    raw = apply_method(base, MethodOptions(method="none"))
    out: dict = {}
    answers: dict[str, dict[str, str]] = {}
    for label, max_batch, scheduler in (("continuous", args.max_batch, "continuous"),
                                        ("static", args.max_batch, "static"), ("one_at_a_time", 1, "static")):
        service = Service(urial, "m", max_batch=max_batch, max_queue=args.max_queue, scheduler=scheduler)
        with ServerThread(build_app(service)) as srv:
            out[label], answers[label] = run_load(srv.url, args.clients, args.requests, args.max_tokens)
        out[label].update(largest_batch=service.stats.max_batch_rows, batches=service.stats.batches,
                          joined_running_batch=service.stats.joined)
        print(label, json.dumps(out[label]), file=sys.stderr, flush=True)
    one = out["one_at_a_time"]["requests_per_s"]
    ratios = {f"{k}_vs_one_at_a_time": round(out[k]["requests_per_s"] / one, 2) for k in ("continuous", "static")}
    ratios["continuous_vs_static"] = round(out["continuous"]["requests_per_s"] / out["static"]["requests_per_s"], 2)
    same = sum(answers["continuous"].get(k) == v for k, v in answers["static"].items())
    latency = {}
    for scheduler in ("continuous", "static"):
        service = Service(raw, "raw", max_batch=args.max_batch, scheduler=scheduler)
        with ServerThread(build_app(service)) as srv:
            latency[scheduler] = short_latency(srv.url, args.short_tokens, 10 * args.short_tokens, args.tries)
        print("latency", scheduler, json.dumps(latency[scheduler]), file=sys.stderr, flush=True)
    result = {
        "clients": args.clients, "requests_each": args.requests, "max_tokens": args.max_tokens,
        "max_batch": args.max_batch, "cores": _cores(), **out, "throughput_ratios": ratios,
        "answers_identical_continuous_vs_static": f"{same}/{len(answers['static'])}",
        "zero_5xx_besides_503": all(out[k]["server_error"] == 0 for k in out),
        "short_request_latency": latency,
    }
    print(json.dumps(result, indent=2))
    write_result("server_load", result)
    return 0


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


if __name__ == "__main__":
    sys.exit(main())
