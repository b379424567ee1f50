"""Collect what `make siblings` measured into docs/results/siblings.json (the source of the docs' tables on
the tuned siblings): training results of SFT and DPO, the preference pairs kept, the self-stop checks with
the layout's repetition penalty and without any, and the token-shift summary of base vs base + SFT.

    python scripts/siblings_results.py runs/siblings [--times runs/siblings/times.json] [--out docs/results/siblings.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _json(path: Path):
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _count(path: Path) -> int:
    return sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip()) if path.is_file() else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="the siblings folder (runs/siblings)")
    ap.add_argument("--times", help="JSON of step -> seconds written by scripts/siblings.sh")
    ap.add_argument("--out", default="docs/results/siblings.json")
    args = ap.parse_args(argv)
    run = Path(args.run)
    out: dict = {"command": "make siblings (scripts/siblings.sh)", "model": "gemma-3-270m"}
    for name in ("sft", "dpo"):
        info = _json(run / name / "alignkit.json") or {}
        log = [json.loads(x) for x in (run / name / "train_log.jsonl").read_text().splitlines()] \
            if (run / name / "train_log.jsonl").is_file() else []
        losses = [r["loss"] for r in log if "loss" in r]
        out[name] = {"result": info.get("result"), "recipe": info.get("recipe"),
                     "first_loss": round(losses[0], 2) if losses else None,
                     "last_loss": round(losses[-1], 2) if losses else None, "steps": len(losses)}
    out["pairs"] = {"prompts": _count(Path("examples/dpo-prompts.jsonl")), "kept": _count(run / "pairs.jsonl")}
    for key, file in (("check", "check.json"), ("check_no_penalty", "check-nopenalty.json")):
        rep = _json(run / file) or {}
        out[key] = {spec: r["totals"] for spec, r in rep.items()}
    shift_path = run / "shift-sft.jsonl"
    if shift_path.is_file():
        from alignkit.analysis.aggregate import summarize

        records = [json.loads(x) for x in shift_path.read_text().splitlines() if x.strip()]
        summary = summarize(records)
        out["shift_sft"] = {label: {k: v for k, v in s.items() if k != "curves"} for label, s in summary.items()}
    if args.times:
        times = _json(Path(args.times)) or {}
        out["seconds"] = times
        out["minutes"] = {k: round(v / 60, 1) for k, v in times.items()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
