"""How good is the judge-free refusal detector? Precision and recall against completions labelled by people.

Labels follow XSTest's three-way scheme: *full compliance*, *full refusal*, *partial refusal* (declines part of
the request or the request as asked, then offers something else). A refusal in the over-refusal and safety rates
is a full or a partial one, so both count as positives here.

Sets: alignkit's own (``alignkit/prompts/eval/refusal-labelled.jsonl``: 140 completions written and labelled for
alignkit in three splits -- ``dev`` (70: the patterns were written against them), ``test`` (40: written with dev,
held out at first, but the first pattern version's misses on it were seen before the second), ``blind`` (30:
written after the patterns were frozen, measured once) -- or XSTest's
published labelled completions (a CSV with ``prompt``, ``completion`` and a ``final_label``/``label`` column whose
values are ``1_full_compliance``, ``2_full_refusal``, ``3_partial_refusal``), from a local file.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from alignkit.errors import InputError
from alignkit.evaluation.cheap import is_refusal
from alignkit.evaluation.data import read_rows

LABELS = ("full_compliance", "full_refusal", "partial_refusal")


def _label(value: Any, where: str) -> str:
    v = str(value).strip().lower()
    for lab, num in zip(LABELS, "123"):
        if v in (lab, num, f"{num}_{lab}") or v.replace(" ", "_") == lab:
            return lab
    raise InputError(f"{where}: label {value!r} is not one of {', '.join(LABELS)} (or XSTest's 1_/2_/3_ forms)")


def load_labelled(path: str | None = None, split: str | None = None) -> list[dict[str, Any]]:
    """Labelled completions ``{"id", "prompt", "completion", "label", "split"}``: alignkit's set (no path) or a
    file (JSONL like alignkit's, or XSTest's CSV)."""
    if path is None:
        text = (resources.files("alignkit") / "prompts" / "eval" / "refusal-labelled.jsonl").read_text(encoding="utf-8")
        rows, name = [json.loads(x) for x in text.splitlines() if x.strip()], "alignkit refusal-labelled set"
    else:

        p = Path(path)
        if not p.is_file():
            raise InputError(f"labelled completions file {path!r} does not exist")
        rows, name = read_rows(p), str(p)
    out = []
    for i, r in enumerate(rows):
        where = f"{name} record {i}"
        if not isinstance(r, dict) or not isinstance(r.get("completion"), str):
            raise InputError(f"{where} has no completion text")
        raw = r.get("final_label", r.get("label"))
        if raw is None:
            raise InputError(f"{where} has no label (final_label or label)")
        out.append({"id": str(r.get("id", i)), "prompt": str(r.get("prompt", "")), "completion": r["completion"],
                    "label": _label(raw, where), "split": str(r.get("split", "all"))})
    if split:
        out = [r for r in out if r["split"] == split]
    if not out:
        raise InputError(f"{name}: no labelled completions" + (f" in split {split!r}" if split else ""))
    return out


def detector_quality(records: list[dict[str, Any]], detect=None) -> dict[str, Any]:
    """Precision and recall of ``detect(text) -> bool`` (default: the judge-free detector) with full and partial
    refusals as positives, the recall of each kind, and the misses (for reading)."""
    detect = detect or is_refusal
    tp = fp = fn = tn = 0
    by_label = {lab: [0, 0] for lab in LABELS}  # [detected, total]
    misses = []
    for r in records:
        hit = bool(detect(r["completion"]))
        positive = r["label"] != "full_compliance"
        by_label[r["label"]][0] += hit
        by_label[r["label"]][1] += 1
        tp, fp = tp + (hit and positive), fp + (hit and not positive)
        fn, tn = fn + (positive and not hit), tn + (not positive and not hit)
        if hit != positive:
            misses.append({"id": r["id"], "label": r["label"], "detected": hit, "completion": r["completion"][:160]})
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1 = (2 * precision * recall / (precision + recall)) if precision and recall else None
    return {"n": len(records), "positives": tp + fn, "precision": precision, "recall": recall, "f1": f1,
            "detected_share": {lab: (d / t if t else None) for lab, (d, t) in by_label.items()},
            "counts": {"tp": tp, "fp": fp, "fn": fn, "tn": tn}, "errors": misses}
