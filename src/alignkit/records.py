"""Input records: reading a JSONL file of ``{id, prompt | messages, ...}`` with every bad line reported, and the
one way a record becomes a prompt. Used by ``alignkit generate``, the Python API and the training commands."""

from __future__ import annotations

import sys
from typing import Any

from alignkit.errors import InputError
from alignkit.io import BadLine, read_jsonl
from alignkit.types import Prompt, as_messages


def parse_records(path: str, on_error: str) -> list[tuple[int, dict[str, Any]]]:
    """Read and check the input; malformed lines are reported with their line numbers."""
    good, bad, seen = [], [], {}
    for lineno, rec in read_jsonl(path):
        if isinstance(rec, BadLine):
            bad.append(rec)
            continue
        problem = check_record(rec)
        if problem is None and str(rec["id"]) in seen:
            problem = f"duplicate id {rec['id']!r} (first on line {seen[str(rec['id'])]})"
        if problem:
            bad.append(BadLine(path, lineno, problem))
            continue
        seen[str(rec["id"])] = lineno
        good.append((lineno, rec))
    if bad:
        shown = "\n".join(f"  {b}" for b in bad[:20]) + (f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else "")
        if on_error == "stop":
            raise InputError(f"{len(bad)} malformed input line(s), nothing generated (use --on-error skip to "
                             f"skip them):\n{shown}")
        print(f"alignkit generate: skipping {len(bad)} malformed input line(s):\n{shown}", file=sys.stderr)
    return good


def check_record(rec: dict[str, Any]) -> str | None:
    if "id" not in rec or not isinstance(rec["id"], (str, int)) or isinstance(rec["id"], bool) or rec["id"] == "":
        return "record needs an 'id' (a non-empty string or an integer)"
    has_prompt, has_msgs = "prompt" in rec, "messages" in rec
    if has_prompt == has_msgs:
        return "record needs exactly one of 'prompt' (text) or 'messages' (a list of {role, content})"
    if has_prompt and (not isinstance(rec["prompt"], str) or not rec["prompt"]):
        return "'prompt' must be a non-empty string"
    if has_msgs:
        try:
            as_messages(rec["messages"])
        except ValueError as e:
            return f"bad 'messages': {e}"
    return None


def record_prompt(rec: dict[str, Any]) -> Prompt:
    """A record's prompt: its ``prompt`` text, or its ``messages`` as a conversation."""
    return rec["prompt"] if "prompt" in rec else as_messages(rec["messages"])

