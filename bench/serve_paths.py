"""The transformers and llama.cpp serving paths: where the time goes, and alignkit's code before and after a change,
measured side by side in one run.

For each backend (``hf``: ``alignkit serve --model gemma-3-270m``; ``llamacpp``: ``--model llamacpp:gemma-3-270m``;
both ``--method urial --max-batch 16``) two servers run at once: alignkit from a worktree of an earlier commit
(``--before REV``, run on this checkout's environment with ``PYTHONPATH`` pointing at that tree) and alignkit from
this checkout. Each is warmed with one full-length request per client, then the load of bench/serve_peers.py (28
conversations under URIAL, 16 clients x 6 requests, 64 tokens, greedy, no penalty) runs ``--rounds`` times on each,
alternating before/after so the machine's drift falls on both; the median round of each is kept. Greedy decoding in
float32 must not change with the code: the before and after answers are compared one by one.

``--profile`` samples each "after" server with py-spy (``pip install py-spy``) during one extra round and reports
where its time went: in the model's forward pass / llama.cpp's decode (the engine), in alignkit's own code
(scheduling, the token loop, cache bookkeeping, tokenising), or idle.

    python bench/serve_paths.py --before REV [--backends hf,llamacpp] [--rounds 3] [--profile] [--name serve_paths]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path

from _results import RESULTS, write_result
from serve_peers import ROOT, load_items, run_load, start

SERVER = {"hf": "alignkit-hf", "llamacpp": "alignkit-llamacpp"}


def _llama_decode_line() -> str:
    """The frame py-spy shows while llama.cpp decodes (a ctypes call has no Python frame of its own: the line of
    alignkit's llamacpp.py that calls it)."""
    src = ROOT / "src" / "alignkit" / "models" / "llamacpp.py"
    for n, line in enumerate(src.read_text().splitlines(), 1):
        if "llama_decode(self.ctx" in line:
            return f"alignkit/models/llamacpp.py:{n})"
    raise SystemExit("llama_decode's call not found in llamacpp.py")


def classify(stack: list[str], decode_line: str) -> str:
    """One py-spy sample by its innermost telling frame: ``engine`` (transformers' model code, torch modules,
    llama.cpp's decode), ``tokenizer``, ``alignkit`` (its own code: scheduling, the token loop, cache bookkeeping,
    torch calls made from it) or ``other``."""
    for f in reversed(stack):
        if "tokeniz" in f.lower():
            return "tokenizer"
        if decode_line in f or any(e in f for e in ("modeling_", "torch/nn/", "transformers/", "llama_cpp/")):
            return "engine"
        if "alignkit/" in f:
            return "alignkit"
    return "other"


def profile(pid: int, seconds: float, out: Path) -> dict:
    """Sample a server's threads with py-spy for ``seconds``; the share of samples in each class, and alignkit's
    own lines that took the most samples."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    subprocess.run([spy, "record", "--nonblocking", "-p", str(pid), "-d", str(int(seconds)), "-r", "50", "-f", "raw",
                    "-o", str(out)], check=True, capture_output=True)
    kinds: Counter[str] = Counter()
    lines: Counter[str] = Counter()
    total, decode_line = 0, _llama_decode_line()
    for row in out.read_text().splitlines():
        stack_text, _, n = row.rpartition(" ")
        stack = stack_text.split(";")
        if not any("Service._run" in f for f in stack):
            continue  # the server's event loop and idle threads: only the thread that generates is counted
        total += int(n)
        kind = classify(stack, decode_line)
        kinds[kind] += int(n)
        if kind == "alignkit":
            lines[[f for f in stack if "alignkit/" in f][-1]] += int(n)
    return {"samples": total, "share": {k: round(v / total, 3) for k, v in kinds.most_common()} if total else {},
            "alignkit_lines": {k: round(v / total, 3) for k, v in lines.most_common(8)} if total else {}}


def worktree(rev: str) -> Path:
    where = Path(tempfile.mkdtemp(prefix="alignkit-before-")) / "tree"
    subprocess.run(["git", "worktree", "add", "--detach", str(where), rev], cwd=ROOT, check=True,
                   capture_output=True)
    return where


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", required=True, help="the commit to compare with (e.g. HEAD~3)")
    ap.add_argument("--backends", default="hf,llamacpp")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=6)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--port", type=int, default=8941)
    ap.add_argument("--profile", action="store_true", help="sample each 'after' server with py-spy in one more round")
    ap.add_argument("--name", default="serve_paths", help="the result file: docs/results/NAME.json")
    args = ap.parse_args()
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    for b in backends:
        if b not in SERVER:
            raise SystemExit(f"unknown backend {b!r}; choose from {', '.join(SERVER)}")
    rev = subprocess.run(["git", "rev-parse", "--short", args.before], cwd=ROOT, check=True, capture_output=True,
                         text=True).stdout.strip()
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, check=True, capture_output=True,
                          text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                                capture_output=True, text=True).stdout.strip())
    _, items = load_items()
    tree = worktree(rev)
    results: dict[str, dict] = {}
    try:
        for b in backends:
            name = SERVER[b]
            print(f"[serve_paths] {b}: starting before ({rev}) and after ({head})", file=sys.stderr)
            procs = {"before": start(name, args.port, src=tree / "src", tag="-before"),
                     "after": start(name, args.port + 1, tag="-after")}
            urls = {"before": f"http://127.0.0.1:{args.port}/v1", "after": f"http://127.0.0.1:{args.port + 1}/v1"}
            try:
                for side in procs:
                    run_load(name, urls[side], items, args.clients, 1, args.max_tokens)  # warm-up
                rounds: dict[str, list[dict]] = {"before": [], "after": []}
                for _ in range(args.rounds):
                    for side in procs:  # alternating: drift falls on both
                        rounds[side].append(run_load(name, urls[side], items, args.clients, args.requests,
                                                     args.max_tokens))
                prof = None
                if args.profile:
                    load = threading.Thread(target=run_load, args=(name, urls["after"], items, args.clients,
                                                                   args.requests, args.max_tokens))
                    load.start()
                    prof = profile(procs["after"].pid, 20, RESULTS.parent.parent / "runs" / f"serve-paths-{b}.txt")
                    load.join()
            finally:
                for p in procs.values():
                    p.terminate()
                for p in procs.values():
                    try:
                        p.wait(60)
                    except subprocess.TimeoutExpired:
                        p.kill()
            entry: dict = {"server": name}
            answers = {}
            for side, rs in rounds.items():
                rs.sort(key=lambda r: r["tokens_per_s"])
                med = rs[len(rs) // 2]
                answers[side] = med.pop("answers")
                entry[side] = {**med, "rounds_tokens_per_s": [r["tokens_per_s"] for r in rs],
                               "p50_rounds_s": [r["p50_s"] for r in rs]}
            entry["tokens_per_s_after_over_before"] = round(entry["after"]["tokens_per_s"] /
                                                            entry["before"]["tokens_per_s"], 3)
            entry["p50_after_over_before"] = round(entry["after"]["p50_s"] / entry["before"]["p50_s"], 3)
            keys = sorted(set(answers["before"]) & set(answers["after"]))
            entry["identical_answers"] = sum(answers["before"][k]["text"] == answers["after"][k]["text"] for k in keys)
            entry["compared"] = len(keys)
            if prof is not None:
                entry["profile_after"] = prof
            results[b] = entry
            print(f"[serve_paths] {b}: before {entry['before']['tokens_per_s']} tok/s p50 {entry['before']['p50_s']} s;"
                  f" after {entry['after']['tokens_per_s']} tok/s p50 {entry['after']['p50_s']} s; "
                  f"x{entry['tokens_per_s_after_over_before']}; identical {entry['identical_answers']}/"
                  f"{entry['compared']}", file=sys.stderr)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, capture_output=True)
    write_result(args.name, {"before": rev, "after": head + ("+uncommitted" if dirty else ""),
                                 "load": {"conversations": len(items), "clients": args.clients,
                                          "requests_per_client": args.requests, "max_tokens": args.max_tokens,
                                          "temperature": 0, "rounds": args.rounds},
                                 "backends": results})
    print(json.dumps({b: {k: v for k, v in e.items() if k in ("tokens_per_s_after_over_before",
                                                                "p50_after_over_before", "identical_answers")}
                          for b, e in results.items()}, indent=1))


if __name__ == "__main__":
    main()
