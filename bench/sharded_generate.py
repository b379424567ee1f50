"""Sharded generate against one worker, whole commands side by side in one run: the embedded Gemma-3-270m under
URIAL answers 16 instructions (greedy, at most 96 new tokens) as

* 1 worker: ``alignkit shards --workers 1 generate ...`` (all the machine's cores in one process);
* 2 workers: ``alignkit shards --workers 2 generate ...`` (local processes, cores split between them);
* 2 workers as Ray tasks: ``alignkit shards --workers 2 --ray local generate ...`` (a private Ray cluster on this
  machine; its start-up is in the time).

Every time is a whole command (model loads, generation, merge) measured from outside. The merged outputs are
compared with the one-worker output, id by id.

    python bench/sharded_generate.py [--n 16] [--max-new-tokens 96] [--no-ray] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _results import write_result  # bench/_results.py: docs/results/NAME.json
from engines import INSTRUCTIONS


def run(label: str, shards_args: list[str], job: list[str]) -> tuple[float, list[tuple[str, str]]]:
    out = Path(job[job.index("--output") + 1])
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "alignkit", "shards", *shards_args, *job], capture_output=True,
                       text=True, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    seconds = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{label} failed:\n{r.stderr[-3000:]}")
    rows = [json.loads(x) for x in out.read_text().splitlines() if x.strip()]
    print(f"{label}: {seconds:.1f} s", file=sys.stderr)
    return seconds, [(r["id"], r["output"]) for r in rows]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--no-ray", action="store_true")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    with tempfile.TemporaryDirectory() as tmp:
        inp = Path(tmp) / "in.jsonl"
        inp.write_text("".join(json.dumps({"id": f"i{k}", "prompt": q}) + "\n"
                               for k, q in enumerate(INSTRUCTIONS[: args.n])))

        def job(name: str) -> list[str]:
            return ["generate", "--model", args.model, "--method", "urial", "--input", str(inp), "--output",
                    str(Path(tmp) / f"{name}.jsonl"), "--max-new-tokens", str(args.max_new_tokens), "--quiet"]

        one_s, one = run("1 worker", ["--workers", "1"], job("one"))
        two_s, two = run("2 workers", ["--workers", "2"], job("two"))
        rows = {"1 worker": {"seconds": round(one_s, 2)},
                "2 workers": {"seconds": round(two_s, 2), "speedup": round(one_s / two_s, 2),
                              "identical": sum(a == b for a, b in zip(one, two))}}
        if not args.no_ray:
            ray_s, ray = run("2 Ray tasks", ["--workers", "2", "--ray", "local"], job("ray"))
            rows["2 Ray tasks (--ray local)"] = {"seconds": round(ray_s, 2), "speedup": round(one_s / ray_s, 2),
                                                 "identical": sum(a == b for a, b in zip(one, ray))}
    result = {"instructions": args.n, "max_new_tokens": args.max_new_tokens, "model": args.model, "method": "urial",
              "cores": cores, "runs": rows}
    for label, r in rows.items():
        extra = f", {r['speedup']}x one worker, {r['identical']}/{args.n} outputs identical" if "speedup" in r else ""
        print(f"{label}: {r['seconds']} s{extra} ({cores} cores)")
    write_result("sharded_generate", result, path=args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
