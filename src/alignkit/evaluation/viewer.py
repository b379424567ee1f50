"""The evaluation viewer: one self-contained HTML file written beside the report (``viewer.html``; it opens from
disk, no server, no CDN). Filters by task type, topic, contestant and aspect (and flagged answers, and text); a
sortable table of the contestants over the instructions shown and one of the instructions; per instruction, every
contestant's answer side by side with the judge's scores and reasons, the refusal / self-stop / leak flags and the
pairwise verdicts against the baseline. The report's tables link into it (``viewer.html#type=...``).

The data rides in the page as JSON (every ``<`` escaped, so no text in it can close the script element) and the
page sets all of it as text, never as HTML."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from alignkit.evaluation.cheap import leaked_delimiter

ASPECT_ORDER = ("helpfulness", "clarity", "factuality", "depth", "engagement", "safety")


def tags_of(it: dict[str, Any], key: str) -> list[str]:
    """An instruction's task types or topics: its loaded tags (just-eval), else its own type/topic."""
    if key == "type":
        return [str(t) for t in it.get("task_types") or []] or [it["type"]]
    return [str(t) for t in it.get("topics") or []] or ([it["topic"]] if it.get("topic") else [])


def _answers(path: Path, ids: set[str]) -> dict[str, Any]:
    if not path.exists():
        return {}
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        r = json.loads(line)
        if r.get("id") in ids:
            out[r["id"]] = {"answer": r.get("answer", ""), "finish_reason": r.get("finish_reason"),
                            "metrics": r.get("metrics") or {}, "leaked": leaked_delimiter(r.get("answer", ""))}
    return out


def _reason(order: dict[str, Any]) -> str | None:
    result = order.get("result") or {}
    reason = result.get("reason") if isinstance(result, dict) else None
    return reason if isinstance(reason, str) else None


def viewer_data(items, judged, pairwise, provenance: dict[str, Any], answers_dir: Path) -> dict[str, Any]:
    """What the viewer shows, from what the report is built of."""
    ids = {it["id"] for it in items}
    names = list(judged)
    aspects = {a for recs in judged.values() for r in recs.values() for a in (r.get("result") or {})}
    judge = (provenance.get("judge") or {}).get("judge")
    return {
        "contestants": names,
        "aspects": [a for a in ASPECT_ORDER if a in aspects] + sorted(aspects - set(ASPECT_ORDER)),
        "baseline": provenance.get("pairwise_baseline") if pairwise else None,
        "judge": f"judge {judge}" if judge else "no judge (judge-free metrics only)",
        "items": [{"id": it["id"], "instruction": it["instruction"], "types": tags_of(it, "type"),
                   "topics": tags_of(it, "topic"), "safety": bool(it.get("safety"))} for it in items],
        "answers": {n: _answers(answers_dir / f"{n}.jsonl", ids) for n in names},
        "judged": {n: {rid: {"result": {a: {"score": v.get("score"), "reason": v.get("reason")}
                                        for a, v in (r.get("result") or {}).items()},
                             "missing": list(r.get("missing") or [])}
                       for rid, r in recs.items() if rid in ids} for n, recs in judged.items()},
        "pairwise": {n: {rid: {"verdict": r.get("verdict") or {}, "reasons": [_reason(o) for o in r.get("orders") or []]}
                         for rid, r in recs.items() if rid in ids} for n, recs in pairwise.items()},
    }


def write_viewer(out: Path, data: dict[str, Any]) -> Path:
    page = (resources.files("alignkit.evaluation") / "viewer.html").read_text(encoding="utf-8")
    blob = json.dumps(data, ensure_ascii=False).replace("<", "\\u003c")
    path = out / "viewer.html"
    path.write_text(page.replace("__DATA__", blob, 1), encoding="utf-8")
    return path
