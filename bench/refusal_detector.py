"""How well the judge-free refusal detector holds, next to the detectors it replaces, on the same rows.

    python bench/refusal_detector.py [--xstest ../shared/data/xstest-dev] [--labelled FILE ...]
                                     [--judge SPEC --judge-rows N]

Detectors compared on every row set: the packaged classifier (alignkit.evaluation.refusal_classifier), the pattern
detector it grew from (one of its features), and the string matcher published with XSTest.

- alignkit's labelled set, by split (``blind`` is never trained on; the other splits are, so their figures are
  in-sample and marked so);
- XSTest's labelled completions of the development models in --xstest (Röttger et al., NAACL 2024, CC BY 4.0):
  leave-one-model-out -- for each model, a classifier trained as the packaged one (its card's C and weighting,
  its threshold) on alignkit's rows and the *other* model's rows, measured on this model's -- pooled and per model;
- any other labelled file given with --labelled (e.g. completions of models never trained on): the packaged
  classifier as shipped;
- speed: answers per second of the packaged classifier on one core;
- with --judge: the LLM-judge classifier (the ``refusal`` rubric: XSTest's three labels) on a seeded sample of
  the development rows: its agreement with people's labels and with the judge-free detector.

Writes docs/results/refusal_detector.json.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

from _results import write_result  # bench/_results.py: docs/results/NAME.json

from alignkit.evaluation.refusal import (
    at_threshold,
    cross_model,
    detector_quality,
    judge_refusals,
    load_labelled,
    load_xstest,
    xstest_string_match,
)
from alignkit.evaluation.refusal_classifier import RefusalClassifier, pattern_refusal

ROOT = Path(__file__).resolve().parents[1]
KEEP_ERRORS = 15


def quality(rows, detect) -> dict:
    q = detector_quality(rows, detect)
    q["errors"] = q["errors"][:KEEP_ERRORS]
    return q


def compare(rows, clf) -> dict:
    return {"classifier": quality(rows, clf), "patterns": quality(rows, pattern_refusal),
            "xstest_string_match": quality(rows, xstest_string_match)}


def line(name: str, q: dict) -> str:
    return f"{name:22} n={q['n']:4} P={q['precision'] or 0:.3f} R={q['recall'] or 0:.3f} F1={q['f1'] or 0:.3f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--xstest", default=str(ROOT.parent / "shared" / "data" / "xstest-dev"),
                    help="folder with XSTest's development completions (xstest_v2_completions_<model>.csv)")
    ap.add_argument("--labelled", action="append", default=[], help="another labelled completions file (repeatable)")
    ap.add_argument("--judge", help="a judge model spec for the LLM-judge refusal classifier (optional)")
    ap.add_argument("--judge-rows", type=int, default=60, help="development rows the judge classifies (seeded)")
    ap.add_argument("--judge-method", default="template", help="the judge's method (its chat template: template)")
    args = ap.parse_args(argv)

    clf = RefusalClassifier.load()
    choice = clf.card.get("choice", {})
    shipped = ROOT / "src" / "alignkit" / "evaluation" / "refusal-classifier.json"
    result: dict = {"detector": {**clf.info(), "choice": choice, "file_kb": round(shipped.stat().st_size / 1024)},
                    "alignkit_set": {}}

    own = load_labelled()
    for split in ("dev", "test", "train", "blind"):
        rows = [r for r in own if r["split"] == split]
        result["alignkit_set"][split] = {"in_training": split != "blind", **compare(rows, clf)}
        print(f"alignkit {split:5} ({'trained on' if split != 'blind' else 'held out'})")
        for name, q in result["alignkit_set"][split].items():
            if isinstance(q, dict):
                print("   " + line(name, q))

    by_model = load_xstest(args.xstest)
    own_train = [dict(r, source="alignkit") for r in own if r["split"] != "blind"]
    probs = cross_model(own_train, by_model, c=float(choice["C"]), own_weight=float(choice["own_weight"]))
    t = clf.threshold
    dev: dict = {"source": "XSTest v2 labelled completions (Röttger et al., NAACL 2024; CC BY 4.0), development "
                           "models: " + ", ".join(by_model), "models": {}}
    for m, rows in by_model.items():
        dev["models"][m] = {"classifier_left_out": quality(rows, at_threshold(probs[m], t)),
                            "patterns": quality(rows, pattern_refusal),
                            "xstest_string_match": quality(rows, xstest_string_match)}
    pooled_rows = [r for rows in by_model.values() for r in rows]
    pooled_probs = [p for m in by_model for p in probs[m]]
    dev["pooled"] = {"classifier_left_out": quality(pooled_rows, at_threshold(pooled_probs, t)),
                     "patterns": quality(pooled_rows, pattern_refusal),
                     "xstest_string_match": quality(pooled_rows, xstest_string_match)}
    result["xstest_dev"] = dev
    print("XSTest development models, leave one model out")
    for m, d in [*dev["models"].items(), ("pooled", dev["pooled"])]:
        for name, q in d.items():
            print(f"   {m:10} " + line(name, q))

    result["other_files"] = {}
    for path in args.labelled:
        rows = load_labelled(path)
        result["other_files"][Path(path).name] = compare(rows, clf)
        for name, q in result["other_files"][Path(path).name].items():
            print(f"   {Path(path).name} " + line(name, q))

    texts = [r["completion"] for r in pooled_rows + own]
    t0 = time.perf_counter()
    for text in texts:
        clf(text)
    secs = time.perf_counter() - t0
    result["speed"] = {"answers": len(texts), "seconds": round(secs, 3),
                       "answers_per_second": round(len(texts) / secs, 1)}
    print(f"speed: {len(texts)} answers in {secs:.2f} s ({len(texts) / secs:.0f} answers/s, one core)")

    if args.judge:
        result["llm_judge"] = judge_agreement(args, pooled_rows, clf)
    write_result("refusal_detector", result)
    return 0


def judge_agreement(args, rows, clf) -> dict:
    from alignkit.api import load

    sample = random.Random(0).sample(rows, min(args.judge_rows, len(rows)))
    judge = load(args.judge, method=args.judge_method)
    t0 = time.perf_counter()
    labels = judge_refusals(judge, sample, cache=ROOT / "runs" / "refusal-judge" / "cache.jsonl")
    secs = time.perf_counter() - t0
    read = [(r, lab) for r, lab in zip(sample, labels) if lab is not None]
    people3 = sum(lab == r["label"] for r, lab in read)
    judge_bin = [lab != "full_compliance" for _, lab in read]
    people_bin = [r["label"] != "full_compliance" for r, _ in read]
    free_bin = [clf(r["completion"]) for r, _ in read]
    n = len(read)
    out = {"judge": args.judge, "method": args.judge_method, "rows": len(sample), "readable": n,
           "seconds": round(secs, 1),
           "three_way_agreement_with_people": people3 / n if n else None,
           "refusal_agreement_with_people": sum(a == b for a, b in zip(judge_bin, people_bin)) / n if n else None,
           "refusal_agreement_with_judge_free": sum(a == b for a, b in zip(judge_bin, free_bin)) / n if n else None,
           # in-sample: the packaged classifier was trained on these development rows
           "judge_free_agreement_with_people_in_sample": sum(a == b for a, b in zip(free_bin, people_bin)) / n
           if n else None,
           "judge_labels": {lab: labels.count(lab) for lab in ("full_compliance", "full_refusal", "partial_refusal")},
           "unreadable": labels.count(None)}
    print(f"LLM judge {args.judge}: {n}/{len(sample)} readable; agreement with people (3-way) "
          f"{out['three_way_agreement_with_people']}, with the judge-free detector {out['refusal_agreement_with_judge_free']}")
    return out


if __name__ == "__main__":
    sys.exit(main())
