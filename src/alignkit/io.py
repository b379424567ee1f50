"""JSONL in and out: every record on its own line, keyed by a stable ``id``.

Writers append and flush record by record, so a killed run loses nothing; ``--resume`` reads the ids
already written and skips them, so a resumed run duplicates nothing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignkit import _fault
from alignkit.errors import InputError


@dataclass(frozen=True)
class BadLine:
    path: str
    lineno: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.lineno}: {self.reason}"


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any] | BadLine]]:
    """Yield ``(line number, record)`` for every non-blank line; malformed lines come as :class:`BadLine`. A
    UTF-8 byte-order mark at the start (as some Windows editors save files) is not part of the first record."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"input file {str(path)!r} does not exist")
    with p.open("r", encoding="utf-8-sig", errors="strict") as f:
        lineno = 0
        while True:
            try:
                line = f.readline()
            except UnicodeDecodeError as e:
                raise InputError(f"{path}:{lineno + 1}: not valid UTF-8 ({e.reason})") from e
            if not line:
                break
            lineno += 1
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                yield lineno, BadLine(str(path), lineno, f"invalid JSON ({e.msg} at column {e.colno})")
                continue
            if not isinstance(rec, dict):
                yield lineno, BadLine(str(path), lineno, f"expected a JSON object, got {type(rec).__name__}")
                continue
            yield lineno, rec


def complete_records(path: str | Path) -> list[dict[str, Any]]:
    """The complete records of an output file, in order (a torn last line from a killed run is not a record)."""
    p = Path(path)
    out: list[dict[str, Any]] = []
    if not p.exists():
        return out
    with p.open("r", encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict):
                out.append(rec)
    return out


def nonempty(path: str | Path) -> bool:
    """Whether a file exists and holds anything (an output that a run without ``resume`` must not touch)."""
    p = Path(path)
    return p.is_file() and p.stat().st_size > 0


def written_ids(path: str | Path) -> set[str]:
    """Ids of the complete records already in an output file (a torn last line is ignored)."""
    return {str(rec["id"]) for rec in complete_records(path) if "id" in rec}


class JsonlAppender:
    """Append records to a JSONL file, flushing each one to disk."""

    def __init__(self, path: str | Path, *, fsync: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync
        # a run killed mid-line leaves a torn last line: start on a fresh line so no record is glued to it
        needs_newline = self.path.exists() and self.path.stat().st_size > 0 and not _ends_with_newline(self.path)
        self._f = self.path.open("a", encoding="utf-8")
        if needs_newline:
            self._f.write("\n")

    def write(self, record: dict[str, Any]) -> None:
        _fault.write_record(self._f, json.dumps(record, ensure_ascii=False) + "\n")
        self._f.flush()
        if self.fsync:
            os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"
