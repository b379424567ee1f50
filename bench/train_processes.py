"""`alignkit train sft` on the embedded Gemma-3-270m as one process and as two (accelerate launch, gloo on the
CPU), side by side in one run, at the same global batch: 8 conversations of the shipped set, LoRA, global batch 8
(one process: batch 4 x 2 accumulation steps; two processes: batch 4 each), 3 optimiser steps. Every step sees
all 8 conversations, so both runs must log the same losses; the times are whole commands.

    python bench/train_processes.py [--records 8] [--steps 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _results import write_result  # bench/_results.py: docs/results/NAME.json


def losses(folder: Path) -> list[float]:
    rows = [json.loads(x) for x in (folder / "train_log.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--json")
    args = ap.parse_args(argv)

    import yaml

    from alignkit.training.data import shipped_path

    records = yaml.safe_load(shipped_path("alignkit-sft").read_text())
    records = records["records"] if isinstance(records, dict) else records
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    bin_dir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "sft.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in records[: args.records]))
        common = ["train", "sft", "--model", args.model, "--data", str(data), "--template", "tuned-k0",
                  "--max-steps", str(args.steps), "--max-length", "384", "--lora-dropout", "0", "--logging-steps",
                  "1", "--save-steps", "1000"]
        runs = {}
        for label, launcher, extra in (
                ("1 process", [sys.executable, "-m", "alignkit"], ["--batch-size", "4", "--grad-accum", "2"]),
                ("2 processes", [str(bin_dir / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
                                 "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                                 "--main_process_port", str(_port()), "-m", "alignkit"],
                 ["--batch-size", "4", "--grad-accum", "1"])):
            out = Path(tmp) / label.replace(" ", "-")
            t0 = time.perf_counter()
            r = subprocess.run([*launcher, *common, *extra, "--output", str(out)], capture_output=True, text=True)
            seconds = time.perf_counter() - t0
            if r.returncode != 0:
                raise SystemExit(f"{label} failed:\n{r.stderr[-3000:]}")
            info = json.loads((out / "alignkit.json").read_text())
            runs[label] = {"seconds": round(seconds, 1), "train_seconds": round(info["result"]["train_seconds"], 1),
                           "losses": losses(out), "processes": info["processes"]}
            print(f"{label}: {seconds:.1f} s whole command, {info['result']['train_seconds']:.1f} s training, "
                  f"losses {runs[label]['losses']}", file=sys.stderr)
    a, b = runs["1 process"]["losses"], runs["2 processes"]["losses"]
    diff = max(abs(x - y) for x, y in zip(a, b)) if a and len(a) == len(b) else None
    result = {"model": args.model, "records": args.records, "global_batch": 8, "steps": args.steps, "cores": cores,
              "runs": runs, "max_loss_difference": None if diff is None else round(diff, 6),
              "speedup": round(runs["1 process"]["train_seconds"] / runs["2 processes"]["train_seconds"], 2)}
    print(f"1 vs 2 processes ({cores} cores): largest loss difference {result['max_loss_difference']}, "
          f"training {result['speedup']}x")
    write_result("train_processes", result, path=args.json)
    return 0


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    sys.exit(main())
