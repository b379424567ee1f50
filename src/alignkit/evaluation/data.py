"""Instruction sets: the one shipped with alignkit, and loaders for public sets from a local file or the hub.

Every loader returns records ``{"id", "instruction", "type", "topic", "safety", ...}``.

* ``alignkit-eval``: 209 instructions + 52 safety prompts written for alignkit;
* ``just-eval``: just-eval-instruct (fields ``id``, ``instruction``, ``source_id``/``dataset``, ``category``);
* ``alpaca-eval``: AlpacaEval (``instruction``, ``dataset``; optional ``output``/``generator``);
* ``mt-bench``: MT-bench ``question.jsonl`` (``question_id``, ``category``, ``turns``; the first turn is used).

A path (``.json`` or ``.jsonl``) is read locally; otherwise ``hub:NAME`` goes through ``datasets``.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from alignkit.errors import InputError

HUB = {"just-eval": ("re-align/just-eval-instruct", "test"), "alpaca-eval": ("tatsu-lab/alpaca_eval", "eval")}


def _read(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".json":
            data = json.loads(text)
            return data if isinstance(data, list) else list(data.values())[0]
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    except (json.JSONDecodeError, IndexError, AttributeError) as e:
        raise InputError(f"{path} is not valid JSON/JSONL: {e}") from e


def _normalise(kind: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for i, r in enumerate(rows):
        if kind == "mt-bench":
            turns = r.get("turns") or []
            text, rid, typ = (turns[0] if turns else None), r.get("question_id", i), r.get("category", "")
        else:
            text, rid = r.get("instruction"), r.get("id", i)
            typ = r.get("type") or r.get("category") or r.get("dataset") or r.get("source_id") or ""
        if not isinstance(text, str) or not text.strip():
            raise InputError(f"{kind} record {i} has no instruction text")
        safety = bool(r.get("safety")) or "safety" in str(typ).lower() or "harm" in str(r.get("dataset", "")).lower()
        out.append({**{k: v for k, v in r.items() if k not in ("turns",)}, "id": str(rid), "instruction": text,
                    "type": str(typ) or "general", "topic": str(r.get("topic", "")), "safety": safety})
    return out


def load_instructions(source: str = "alignkit-eval", kind: str | None = None, limit: int | None = None,
                      types: list[str] | None = None) -> list[dict[str, Any]]:
    """Load an instruction set (see the module doc); ``limit`` keeps the first N per the set's order."""
    if source == "alignkit-eval":
        text = (resources.files("alignkit") / "prompts" / "eval" / "alignkit-eval.jsonl").read_text(encoding="utf-8")
        rows = [json.loads(x) for x in text.splitlines() if x.strip()]
    elif source.startswith("hub:"):
        name = source[4:]
        if name not in HUB:
            raise InputError(f"unknown hub set {name!r}; known: {', '.join(HUB)} (or give a local file)")
        try:
            import datasets
        except ImportError:
            raise InputError("loading from the hub needs the 'datasets' package: pip install datasets") from None
        repo, split = HUB[name]
        rows = _normalise(name, [dict(r) for r in datasets.load_dataset(repo, split=split)])
    else:
        path = Path(source)
        if not path.is_file():
            raise InputError(f"instruction set {source!r} is not a file, 'alignkit-eval' or hub:NAME")
        guess = kind or ("mt-bench" if "question" in path.name else "just-eval")
        rows = _normalise(guess, _read(path))
    if types:
        rows = [r for r in rows if r["type"] in types]
    return rows[:limit] if limit else rows
