"""The shift headline: the embedded base vs its tuned sibling (``make siblings``' SFT adapter) over the shipped
instruction set (``alignkit/prompts/eval/alignkit-eval.jsonl``: every instruction, by task type; safety prompts as
their own category), exact mode, both KL directions -- the paper's comparison (a base and its tuned sibling) on a
few hundred answers rather than twenty.

    python bench/shift_headline.py [--aligned runs/siblings/sft] [--limit N]

Runs ``alignkit shift`` (resumable: runs/headline/shift.jsonl) and writes docs/results/shift_headline.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from importlib import resources
from pathlib import Path

from _results import write_result  # bench/_results.py: docs/results/NAME.json


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--aligned", default="runs/siblings/sft")
    ap.add_argument("--out", default="runs/headline")
    ap.add_argument("--limit", type=int, default=0, help="first N instructions only (0: all)")
    args = ap.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    src = resources.files("alignkit") / "prompts" / "eval" / "alignkit-eval.jsonl"
    rows = [json.loads(x) for x in src.read_text(encoding="utf-8").splitlines() if x.strip()]
    if args.limit:
        rows = rows[: args.limit]
    inp = out / "instructions.jsonl"
    inp.write_text("".join(json.dumps({"id": r["id"], "instruction": r["instruction"],
                                       "category": "safety" if r.get("safety") else r["type"]}) + "\n" for r in rows))
    cmd = [sys.executable, "-m", "alignkit", "shift", "--base", "gemma-3-270m", "--context", "urial", "--aligned",
           args.aligned, "--aligned-method", "auto", "--input", str(inp), "--output", str(out / "shift.jsonl"),
           "--report", str(out / "shift.html"), "--resume", "--json", "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    summary = json.loads(proc.stdout[proc.stdout.index("{"):])
    result = {"command": " ".join(cmd[1:]), "instructions": len(rows), "summary": summary}
    print(json.dumps(result, indent=2))
    write_result("shift_headline", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
