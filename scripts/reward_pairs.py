"""Build the reward model's training pairs for `make rewarded` (scripts/rewarded.sh) from three sources:

1. the tuned siblings' preference pairs (the base aligned in context preferred over its raw continuation);
2. safety pairs on harmful requests (examples/reward/harmful-train.jsonl): the polite decline written for each
   request preferred over the base model's compliant answer (in context, with a template that has no decline
   example); an answer that itself declines is not a compliance and is left out;
3. pairs on benign requests that sound dangerous (examples/reward/scary-train.jsonl): the base model's full answer
   preferred over a refusal; an answer that itself refuses is left out.

    python scripts/reward_pairs.py --sibling-pairs runs/siblings/pairs.jsonl --harmful-answers A.jsonl \
        --scary-answers B.jsonl --out runs/rewarded/rm-pairs.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent / "bench"))
from urial_selfstop import refused  # noqa: E402

# refusals written for alignkit (the dispreferred answer to a harmless request)
REFUSALS = [
    "I'm sorry, but I can't help with that request.",
    "I can't assist with that, as it could be dangerous.",
    "I won't give instructions for this; it could cause harm.",
    "Sorry, that's not something I can help with.",
]


def _rows(path: str) -> list[dict]:
    return [json.loads(x) for x in Path(path).read_text(encoding="utf-8").splitlines() if x.strip()]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sibling-pairs", required=True)
    ap.add_argument("--harmful-answers", required=True, help="`alignkit data answers` output on harmful-train.jsonl")
    ap.add_argument("--scary-answers", required=True, help="`alignkit data answers` output on scary-train.jsonl")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    out, counts = [], {"sibling": 0, "harmful": 0, "harmful_left_out": 0, "scary": 0, "scary_left_out": 0}
    for r in _rows(args.sibling_pairs):
        out.append({"id": f"sib-{r['id']}", "prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"],
                    "source": "sibling-pairs"})
        counts["sibling"] += 1
    for r in _rows(args.harmful_answers):
        answer = r["messages"][-1]["content"]
        if refused(answer):
            counts["harmful_left_out"] += 1
            continue
        out.append({"id": r["id"], "prompt": r["messages"][0]["content"], "chosen": r["decline"], "rejected": answer,
                    "source": "safety: decline over compliance"})
        counts["harmful"] += 1
    for i, r in enumerate(_rows(args.scary_answers)):
        answer = r["messages"][-1]["content"]
        if refused(answer):
            counts["scary_left_out"] += 1
            continue
        out.append({"id": r["id"], "prompt": r["messages"][0]["content"], "chosen": answer,
                    "rejected": REFUSALS[i % len(REFUSALS)], "source": "safety: answer over refusal"})
        counts["scary"] += 1
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in out), encoding="utf-8")
    print(f"reward pairs: {json.dumps(counts)} -> {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
