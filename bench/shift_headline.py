"""The shift headline: the embedded base vs its tuned sibling (``make siblings``' SFT adapter) over the shipped
instruction set (``alignkit/prompts/eval/alignkit-eval.jsonl``: every instruction, by task type; safety prompts as
their own category), exact mode, both KL directions -- the paper's comparison (a base and its tuned sibling) on a
few hundred answers rather than twenty. Three rows, each its own run:

    python bench/shift_headline.py [--row sft|dpo|urial] [--limit N]

- ``sft``: the SFT sibling's greedy answers, scored by the base in the sibling's layout (base context ``urial``);
- ``dpo``: the same for the DPO sibling (``runs/siblings/dpo``, trained on top of the SFT adapter);
- ``urial``: the base's own answers under URIAL K=3, scored by the bare base (base context ``plain``) -- the
  in-context row.

Runs ``alignkit shift`` (resumable: runs/headline/shift[-ROW].jsonl) and writes the row into
docs/results/shift_headline.json (other rows kept).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

from _results import RESULTS, write_result  # bench/_results.py: docs/results/NAME.json

# row -> (aligned model, its method, the base's context when it scores)
ROWS = {"sft": ("runs/siblings/sft", "auto", "urial"), "dpo": ("runs/siblings/dpo", "auto", "urial"),
        "urial": ("gemma-3-270m", "urial", "plain")}


def rank_curve(path: Path) -> dict:
    """The base rank of the aligned token by answer position, on Re-Align's reading: the mean rank with each rank
    capped at 50 (the paper's cap) and the median, per position for the first ten and pooled after."""
    from alignkit.analysis.aggregate import summarize

    records = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
    (curves,) = [s["curves"] for s in summarize(records).values()]

    def pooled(key: str, lo: int, hi: float) -> float:
        pairs = [(v, n) for t, v, n in zip(curves["t"], curves[key], curves["count"]) if lo <= t < hi]
        return sum(v * n for v, n in pairs) / sum(n for _, n in pairs)

    first = [{"t": t, "mean_rank_cap50": c, "median_rank": m, "positions": n}
             for t, c, m, n in zip(curves["t"], curves["mean_base_rank_cap50"], curves["median_base_rank"],
                                   curves["count"]) if t < 10]
    return {"first_ten": first, "mean_rank_cap50_positions_0_to_4": pooled("mean_base_rank_cap50", 0, 5),
            "mean_rank_cap50_positions_5_to_9": pooled("mean_base_rank_cap50", 5, 10),
            "mean_rank_cap50_after_10": pooled("mean_base_rank_cap50", 10, float("inf")),
            "max_median_rank_after_10": max(m for t, m in zip(curves["t"], curves["median_base_rank"]) if t >= 10)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--row", choices=sorted(ROWS), default="sft")
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
    aligned, method, context = ROWS[args.row]
    stem = "shift" if args.row == "sft" else f"shift-{args.row}"
    cmd = [sys.executable, "-m", "alignkit", "shift", "--base", "gemma-3-270m", "--context", context, "--aligned",
           aligned, "--aligned-method", method, "--input", str(inp), "--output", str(out / f"{stem}.jsonl"),
           "--report", str(out / f"{stem}.html"), "--resume", "--json", "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    summary = json.loads(proc.stdout[proc.stdout.index("{"):])
    row = {"command": " ".join(cmd[1:]), "instructions": len(rows), "summary": summary,
           "rank_curve": rank_curve(out / f"{stem}.jsonl"),
           "_measured": {"command": " ".join(["python", *sys.argv]), "date": time.strftime("%Y-%m-%d")}}
    print(json.dumps(row, indent=2))
    old = RESULTS / "shift_headline.json"
    rows_out = json.loads(old.read_text(encoding="utf-8")).get("rows", {}) if old.exists() else {}
    rows_out[args.row] = row
    write_result("shift_headline", {"rows": {k: rows_out[k] for k in sorted(rows_out)}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
