"""Read judge answers, tolerantly and honestly (pure functions).

JSON first (the first balanced ``{...}`` that parses, with common slips repaired: code fences, trailing commas,
single quotes); then per-aspect patterns such as ``clarity: 4``, ``Clarity - 4/5``, ``"clarity": {"score": 4}``.
A score counts only if it is a whole number in 1..5 (``4.0`` is 4; ``4.5``, ``"1-5"``, ``"N/A"`` are not).
Anything that cannot be read is **missing** (None) -- never replaced by a number.
"""

from __future__ import annotations

import json
import re
from typing import Any

_FENCE = re.compile(r"```(?:json)?", re.I)


def _json_objects(text: str):
    """Candidate JSON objects in the text, outermost first."""
    text = _FENCE.sub("", text)
    for start in [i for i, ch in enumerate(text) if ch == "{"][:20]:
        depth, in_str, esc = 0, False, False
        for j in range(start, min(len(text), start + 20000)):
            ch = text[j]
            if in_str:  # the character after a backslash is escaped, whatever it is
                if esc:
                    esc = False
                elif ch == "\\":
                    esc = True
                elif ch == '"':
                    in_str = False
                continue
            if ch == '"':
                in_str = True
            elif ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    yield text[start : j + 1]
                    break


def _loads(candidate: str) -> Any:
    for fix in (lambda s: s, lambda s: re.sub(r",\s*([}\]])", r"\1", s),
                lambda s: re.sub(r",\s*([}\]])", r"\1", s.replace("'", '"'))):
        try:
            return json.loads(fix(candidate))
        except (json.JSONDecodeError, ValueError):
            continue
    return None


def first_json(text: str) -> dict[str, Any] | None:
    for cand in _json_objects(text):
        obj = _loads(cand)
        if isinstance(obj, dict):
            return obj
    return None


def valid_score(value: Any) -> int | None:
    """A whole number 1..5, or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return int(value) if float(value).is_integer() and 1 <= value <= 5 else None
    if isinstance(value, str):
        m = re.fullmatch(r"\s*([1-5])(?:\.0+)?\s*(?:/\s*5)?\s*", value)
        return int(m.group(1)) if m else None
    return None


def _lookup(obj: dict[str, Any], aspect: str) -> Any:
    for k, v in obj.items():
        if isinstance(k, str) and k.strip().lower() == aspect:
            return v
    return None


def _read_json_entries(text: str, aspects: list[str], key: str, read: Any, out: dict[str, dict[str, Any]]) -> None:
    """Fill ``out[aspect][key]`` (through ``read``) and ``out[aspect]["reason"]`` from the reply's first JSON
    object: ``{"aspect": {"reason": ..., key: ...}}`` or ``{"aspect": value}``."""
    obj = first_json(text)
    if obj is None:
        return
    for a in aspects:
        v = _lookup(obj, a)
        if isinstance(v, dict):
            out[a][key] = read(_lookup(v, key))
            r = _lookup(v, "reason")
            out[a]["reason"] = r if isinstance(r, str) else None
        else:
            out[a][key] = read(v)


def parse_scores(text: str, aspects: list[str]) -> dict[str, dict[str, Any]]:
    """``{aspect: {"score": int | None, "reason": str | None}}`` from a judge's answer."""
    out: dict[str, dict[str, Any]] = {a: {"score": None, "reason": None} for a in aspects}
    if not isinstance(text, str):
        return out
    _read_json_entries(text, aspects, "score", valid_score, out)
    for a in aspects:  # fall back to "aspect: 4" patterns for what JSON did not give
        if out[a]["score"] is None:
            m = re.search(rf"\b{re.escape(a)}\b[\"']?\s*(?:score)?\s*[:=\-–]\s*\"?([1-5])(?:\.0+)?\"?(?:\s*/\s*5)?(?![\d.\-])",
                          text, re.I)
            if m:
                out[a]["score"] = int(m.group(1))
    if len(aspects) == 1 and out[aspects[0]]["score"] is None:  # a one-aspect rubric answered with the bare digit
        m = re.fullmatch(r"\s*([1-5])(?:\.0+)?\s*(?:/\s*5)?\s*\.?\s*", text)
        if m:
            out[aspects[0]]["score"] = int(m.group(1))
    return out


def parse_pairwise(text: str, aspects: list[str]) -> dict[str, str | None]:
    """``{aspect: "A" | "B" | "tie" | None}`` from a pairwise judge's answer."""
    out: dict[str, str | None] = {a: None for a in aspects}
    if not isinstance(text, str):
        return out

    def norm(v: Any) -> str | None:
        if not isinstance(v, str):
            return None
        v = v.strip().strip('"').strip().lower()
        return {"a": "A", "answer a": "A", "b": "B", "answer b": "B", "tie": "tie", "equal": "tie", "draw": "tie"}.get(v)

    obj = first_json(text)
    if obj is not None:
        for a in aspects:
            out[a] = norm(_lookup(obj, a))
    for a in aspects:
        if out[a] is None:
            m = re.search(rf"\b{re.escape(a)}\b[\"']?\s*[:=\-–]\s*\"?(answer a|answer b|a|b|tie)\b", text, re.I)
            if m:
                out[a] = norm(m.group(1))
    return out


def parse_labels(text: str, aspects: list[str], labels: list[str]) -> dict[str, dict[str, Any]]:
    """``{aspect: {"label": one of labels | None, "reason": str | None}}`` from a label judge's answer. A value that
    is not exactly one of ``labels`` (ignoring case, spaces/hyphens for underscores, and XSTest's ``1_``/``2_``/
    ``3_`` numbering) is None: a label is never guessed."""
    out: dict[str, dict[str, Any]] = {a: {"label": None, "reason": None} for a in aspects}
    if not isinstance(text, str):
        return out
    known = {lab.lower(): lab for lab in labels}

    def norm(v: Any) -> str | None:
        if not isinstance(v, str):
            return None
        key = re.sub(r"[\s-]+", "_", v.strip().strip('"').strip().lower())
        key = re.sub(r"^\d_", "", key)
        return known.get(key)

    _read_json_entries(text, aspects, "label", norm, out)
    return out
