"""Collect what `make rewarded` measured into docs/results/rewarded.json (the source of the docs' tables on
the reward model, the ranked pairs, old vs new DPO sibling and the DeRa sweep), and copy the sweep's plot to
docs/results/rewarded-sweep.png.

    python scripts/rewarded_results.py runs/rewarded --siblings runs/siblings [--out docs/results/rewarded.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections import Counter
from pathlib import Path

from siblings_results import _json  # scripts/siblings_results.py: a JSON file, or None if absent


def _rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="the recipe's folder (runs/rewarded)")
    ap.add_argument("--siblings", default="runs/siblings")
    ap.add_argument("--out", default="docs/results/rewarded.json")
    args = ap.parse_args(argv)
    run, sib = Path(args.run), Path(args.siblings)
    out: dict = {"command": "make rewarded (scripts/rewarded.sh)", "model": "gemma-3-270m",
                 "times_seconds": _json(run / "times.json")}
    rm_pairs = _rows(run / "rm-pairs.jsonl")
    rm = _json(run / "rm" / "alignkit.json") or {}
    out["reward_model"] = {
        "pairs": dict(Counter(r["source"] for r in rm_pairs)),
        "train_pairs": rm.get("data", {}).get("train_pairs"), "held_out_pairs": rm.get("data", {}).get("held_out_pairs"),
        "held_out_accuracy": rm.get("result", {}).get("eval_accuracy"),
        "held_out_accuracy_before": rm.get("result", {}).get("eval_accuracy_before"),
        "held_out_margin": rm.get("result", {}).get("eval_margin"),
        "train_accuracy": rm.get("result", {}).get("train_accuracy"),
        "first_loss": rm.get("result", {}).get("first_loss"), "final_loss": rm.get("result", {}).get("final_loss"),
        "steps": rm.get("result", {}).get("steps"),
    }
    ranked, dropped = _rows(run / "ranked.jsonl"), _rows(run / "ranked-dropped.jsonl")
    prompts = _rows(run / "rank-prompts.jsonl")
    kind = {p["id"]: ("harmful" if str(p["id"]).startswith("harm-") else "scary" if str(p["id"]).startswith("scary-")
                      else "general") for p in prompts}
    from urial_selfstop import refused  # bench/urial_selfstop.py

    declines_chosen = sum(1 for r in ranked if kind.get(r["id"]) == "harmful" and refused(r["chosen"]))
    out["ranked_pairs"] = {
        "prompts": len(prompts), "written": len(ranked), "dropped": len(dropped),
        "dropped_reasons": dict(Counter(d["reason"].split(":")[0].split(" (")[0] for d in dropped)),
        "by_kind": dict(Counter(kind.get(r["id"], "general") for r in ranked)),
        "harmful_pairs_whose_chosen_declines": declines_chosen,
        "mean_margin": round(sum(r["scores"]["margin"] for r in ranked) / len(ranked), 3) if ranked else None,
    }
    for name, folder in (("old_dpo", sib / "dpo"), ("new_dpo", run / "dpo")):
        info = _json(folder / "alignkit.json") or {}
        out[name] = {"data": info.get("data", {}).get("path"), "pairs": info.get("data", {}).get("records"),
                     "result": info.get("result")}
    check = _json(run / "check.json") or {}
    out["check"] = {("old_dpo" if spec.startswith(str(sib)) else "new_dpo"): r["totals"] for spec, r in check.items()}
    sweep = _json(run / "sweep" / "summary.json")
    if sweep:
        out["sweep"] = {
            "ref": sweep["ref"], "aligned": sweep["aligned"], "scorer": (sweep.get("scorer") or {}).get("spec"),
            "lams": {lam: {"mean_tokens": round(s["mean_tokens"], 1),
                           "kl_per_token": round(s["all"]["kl_per_token"], 4) if s.get("all") else None,
                           "score_all": round(s["all"]["mean_score"], 3) if s.get("all") and s["all"]["mean_score"] is not None else None,
                           "score_validation": round(s["validation"]["mean_score"], 3)
                           if s.get("validation") and s["validation"]["mean_score"] is not None else None,
                           "score_test": round(s["test"]["mean_score"], 3)
                           if s.get("test") and s["test"]["mean_score"] is not None else None,
                           "stderr_validation": round(s["validation"]["stderr"], 3)
                           if s.get("validation") and s["validation"].get("stderr") is not None else None,
                           "stderr_test": round(s["test"]["stderr"], 3)
                           if s.get("test") and s["test"].get("stderr") is not None else None,
                           "refusal_rate": round(s["refusal_rate"], 3)}
                     for lam, s in sweep["lams"].items()},
            "recommendation": sweep.get("recommendation"),
        }
        if (run / "sweep" / "sweep.png").is_file():
            shutil.copy(run / "sweep" / "sweep.png", Path(args.out).with_name("rewarded-sweep.png"))
    Path(args.out).write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent.parent / "bench"))
    sys.exit(main())
