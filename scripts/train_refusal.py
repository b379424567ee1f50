"""Train the packaged refusal classifier (alignkit/evaluation/refusal-classifier.json) and its data card.

    python scripts/train_refusal.py [--xstest ../shared/data/xstest-dev] [--out PATH]

Training rows: alignkit's own labelled completions (prompts/eval/refusal-labelled.jsonl, every split except
``blind``, which stays held out) and XSTest's labelled completions of the development models found in --xstest
(Röttger et al., NAACL 2024; CC BY 4.0; read from there, never copied into the repository).

Development only: the regularisation strength and the weight of alignkit's rows are chosen by leave-one-model-out
F1 on the XSTest development models (the simplest setting within 0.005 of the best); the threshold is the one with the best pooled leave-one-model-out F1 that
keeps the precision on each model left out at 0.95 or more. The held-out models' answers are never read here.
"""

from __future__ import annotations

import argparse
import sys
from datetime import date
from pathlib import Path

from alignkit.evaluation.refusal import (
    at_threshold,
    choose_threshold,
    cross_model,
    detector_quality,
    fit,
    load_labelled,
    load_xstest,
)
from alignkit.evaluation.refusal_classifier import FORMAT

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "src" / "alignkit" / "evaluation" / "refusal-classifier.json"
GRID_C = (0.3, 1.0, 3.0)
GRID_OWN = (1.0, 3.0)
TOLERANCE = 0.005


def own_rows(split_out: str = "blind") -> list[dict]:
    return [dict(r, source="alignkit") for r in load_labelled() if r["split"] != split_out]


def pooled_f1(probs: dict[str, list[float]], by_model: dict[str, list[dict]], threshold: float) -> float:
    rows = [r for m in probs for r in by_model[m]]
    flat = [p for m in probs for p in probs[m]]
    return detector_quality(rows, at_threshold(flat, threshold))["f1"] or 0.0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--xstest", default=str(ROOT.parent / "shared" / "data" / "xstest-dev"),
                    help="folder with XSTest's development completions (xstest_v2_completions_<model>.csv)")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)
    own = own_rows()
    by_model = load_xstest(args.xstest)
    tried = []
    for c in GRID_C:
        for w in GRID_OWN:
            probs = cross_model(own, by_model, c=c, own_weight=w)
            positive = {m: [r["label"] != "full_compliance" for r in rows] for m, rows in by_model.items()}
            t = choose_threshold(probs, positive)
            f1 = pooled_f1(probs, by_model, t)
            print(f"C={c:<4} own weight={w:<3} threshold={t:.3f}  pooled leave-one-model-out F1={f1:.3f}")
            tried.append((f1, c, w, t))
    # the simplest setting (smallest C, then least weight on alignkit's rows) within TOLERANCE of the best F1:
    # differences smaller than that are noise on 900 rows, and a simpler model travels better to new models
    top = max(f for f, *_ in tried)
    f1, c, w, t = min((x for x in tried if x[0] >= top - TOLERANCE), key=lambda x: (x[1], x[2]))
    rows = own + [r for rs in by_model.values() for r in rs]
    card = {
        "trained": date.today().isoformat(),
        "command": "python scripts/train_refusal.py",
        "trained_on": {"alignkit refusal-labelled (all splits but blind)": len(own),
                       **{f"XSTest v2 completions of {m}": len(rs) for m, rs in by_model.items()}},
        "held_out": "alignkit's blind split; XSTest's other models' completions (never read in training)",
        "positives": "full and partial refusals (XSTest's three-way labels)",
        "choice": {"C": c, "own_weight": w, "threshold": t, "pooled_leave_one_model_out_f1": round(f1, 4),
                   "rule": "threshold: best pooled leave-one-model-out F1 with precision >= 0.95 on each model left out; "
                           f"setting: the smallest C (then own weight) within {TOLERANCE} of the best F1"},
        "features": "see alignkit.evaluation.refusal_classifier",
        "data_licences": "alignkit's rows: the project's licence; XSTest (Röttger et al., 'XSTest: A Test Suite for "
                         "Identifying Exaggerated Safety Behaviours in Large Language Models', NAACL 2024): CC BY 4.0",
        "format": FORMAT,
    }
    clf = fit(rows, c=c, own_weight=w, card=card)
    clf.threshold = t
    clf.save(args.out)
    print(f"wrote {args.out}: {len(clf.weights)} features, C={c}, own weight={w}, threshold={t:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
