"""Style or content? The shifted positions of a token-shift run split by the stated rule of
``alignkit/analysis/tokens.py`` (markup / function-and-discourse words / content), next to the same split over all
positions, from the run's own JSONL -- no model is loaded.

    python bench/shift_token_classes.py [runs/siblings/shift-sft.jsonl ...]

Writes docs/results/shift_token_classes.json (`make siblings` runs it on the tuned sibling's shift run).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from _results import write_result  # bench/_results.py: docs/results/NAME.json


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="*", default=["runs/siblings/shift-sft.jsonl"])
    args = ap.parse_args(argv)

    from alignkit.analysis.aggregate import summarize
    from alignkit.analysis.tokens import CLASSES, token_class

    out: dict = {"rule": "alignkit/analysis/tokens.py", "runs": {}}
    for path in args.runs:
        records = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
        for label, s in summarize(records).items():
            shifted = Counter(p["token"] for r in records if r["aligned"] == label for p in r["positions"]
                              if p["category"] == "shifted")
            out["runs"][f"{path}::{label}"] = {
                "answers": s["answers"], "positions": s["positions"], "shifted": s["shifted"],
                "token_classes": s["token_classes"],
                "top_shifted_by_class": {c: [[t, n] for t, n in shifted.most_common() if token_class(t) == c][:10]
                                         for c in CLASSES},
            }
            tc = s["token_classes"]
            print(f"{label}: shifted positions {tc['shifted']['positions']}: markup {tc['shifted']['markup']:.1%}, "
                  f"function {tc['shifted']['function']:.1%}, content {tc['shifted']['content']:.1%}; all positions "
                  f"{tc['all']['positions']}: {tc['all']['markup']:.1%} / {tc['all']['function']:.1%} / "
                  f"{tc['all']['content']:.1%}", file=sys.stderr)
    print(json.dumps(out, indent=2))
    write_result("shift_token_classes", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
