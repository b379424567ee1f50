"""Instruction sets: the one shipped with alignkit, and loaders for public sets from a local file or the hub.

Every loader returns records ``{"id", "instruction", "type", "topic", "safety", ...}``.

* ``alignkit-eval``: 209 instructions + 52 safety prompts written for alignkit;
* ``just-eval``: just-eval-instruct (fields ``id``, ``instruction``, ``source_id``/``dataset``, ``category``);
* ``alpaca-eval``: AlpacaEval (``instruction``, ``dataset``; optional ``output``/``generator``);
* ``mt-bench``: MT-bench ``question.jsonl`` (``question_id``, ``category``, ``turns``; the first turn is used);
* ``xstest``: XSTest's prompt file (CSV: ``id``, ``prompt``, ``type``, ``label`` safe/unsafe, ...): safe prompts
  that sound unsafe and their unsafe contrasts. ``label: unsafe`` rows are safety prompts; the safe ones count as
  benign, so a refusal of one is an over-refusal.

A path (``.json``, ``.jsonl`` or ``.csv``) is read locally; otherwise ``hub:NAME`` goes through ``datasets``.
``hub:just-eval-safety`` is just-eval's safety part only (its red-teaming sources), ``hub:just-eval`` all of it.

Tags (:func:`load_tags`): just-eval publishes per-instruction tags -- task types (math, coding, writing,
info-seek, role-play, procedure, reasoning) and topics (stem, humanities, lifestyle, finance, medical, nature,
ethics, malicious) -- either as lists (``task_types``, ``topics``) or as one boolean field per tag; joined by id,
they drive the report's per-tag breakdowns (an instruction with two tags counts under both).
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from alignkit.errors import InputError

HUB = {"just-eval": ("re-align/just-eval-instruct", "test"), "just-eval-safety": ("re-align/just-eval-instruct", "test"),
       "alpaca-eval": ("tatsu-lab/alpaca_eval", "eval"), "xstest": ("Paul/XSTest", "train")}
#: just-eval's safety prompts come from red-teaming sets; a record whose source names one of these is a safety prompt
SAFETY_SOURCES = ("maliciousinstruct", "advbench", "red-team", "red_team", "redteam", "harm", "beavertails")
TASK_TYPES = ("math", "coding", "writing", "info-seek", "role-play", "procedure", "reasoning")
TOPICS = ("stem", "humanities", "lifestyle", "finance", "medical", "nature", "ethics", "malicious")


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The records of a local ``.json`` (a list, or a mapping holding one), ``.jsonl`` or ``.csv`` file, with
    clear errors. A UTF-8 byte-order mark at the start is dropped."""
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix == ".csv":
        import csv
        import io

        try:
            rows = list(csv.DictReader(io.StringIO(text)))
        except csv.Error as e:
            raise InputError(f"{path} is not a valid CSV file: {e}") from e
        if not rows:
            raise InputError(f"{path} has no rows (a header line and one row per prompt)")
        return rows
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
        elif kind == "xstest":
            label = str(r.get("label", "")).strip().lower()
            if label not in ("safe", "unsafe"):
                raise InputError(f"xstest record {i}: label must be 'safe' or 'unsafe', got {r.get('label')!r}")
            text, rid, typ = r.get("prompt"), r.get("id", i), r.get("type") or label
        else:
            text, rid = r.get("instruction"), r.get("id", i)
            typ = r.get("type") or r.get("category") or r.get("dataset") or r.get("source_id") or ""
        if not isinstance(text, str) or not text.strip():
            raise InputError(f"{kind} record {i} has no instruction text")
        if kind == "xstest":  # its label says which prompts are unsafe; its focus word is the topic
            safety, topic = label == "unsafe", str(r.get("focus") or "")
        else:
            source = f"{r.get('dataset', '')} {r.get('source_id', '')}".lower()
            safety = (bool(r.get("safety")) or "safety" in str(typ).lower()
                      or any(name in source for name in SAFETY_SOURCES))
            topic = str(r.get("topic", ""))
        out.append({**{k: v for k, v in r.items() if k not in ("turns",)}, "id": str(rid), "instruction": text,
                    "type": str(typ) or "general", "topic": topic, "safety": safety})
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
        rows = _normalise("just-eval" if name == "just-eval-safety" else name,
                          [dict(r) for r in datasets.load_dataset(repo, split=split)])
        if name == "just-eval-safety":
            rows = [r for r in rows if r["safety"]]
    else:
        path = Path(source)
        if not path.is_file():
            raise InputError(f"instruction set {source!r} is not a file, 'alignkit-eval' or hub:NAME")
        raw = read_rows(path)
        guess = kind or ("mt-bench" if "question" in path.name
                         else "xstest" if raw and isinstance(raw[0], dict) and "prompt" in raw[0] and "label" in raw[0]
                         else "just-eval")
        rows = _normalise(guess, raw)
    if types:
        rows = [r for r in rows if r["type"] in types]
    return rows[:limit] if limit else rows


def load_tags(path: str) -> dict[str, dict[str, list[str]]]:
    """``{id: {"task_types": [...], "topics": [...]}}`` from a just-eval tags file (JSON list or JSONL): records
    with ``task_types``/``topics`` lists, or with one boolean field per known tag."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"tags file {path!r} does not exist")
    rows = read_rows(p)
    out: dict[str, dict[str, list[str]]] = {}
    for i, r in enumerate(rows):
        if not isinstance(r, dict) or "id" not in r:
            raise InputError(f"{path}: tag record {i} has no id")
        if "task_types" in r or "topics" in r:
            types, topics = r.get("task_types") or [], r.get("topics") or []
            if not isinstance(types, list) or not isinstance(topics, list):
                raise InputError(f"{path}: tag record {i}: task_types and topics must be lists")
        else:
            types = [t for t in TASK_TYPES if r.get(t) is True]
            topics = [t for t in TOPICS if r.get(t) is True]
        out[str(r["id"])] = {"task_types": [str(t) for t in types], "topics": [str(t) for t in topics]}
    return out


def apply_tags(items: list[dict[str, Any]], tags: dict[str, dict[str, list[str]]]) -> list[dict[str, Any]]:
    """The items with their tags joined by id (an item without tags keeps its own type/topic). Fails when no
    item has tags: the file is for another instruction set."""
    if items and not any(it["id"] in tags for it in items):
        raise InputError("no instruction id appears in the tags file: is it the tags of another instruction set?")
    return [{**it, **tags[it["id"]]} if it["id"] in tags else it for it in items]
