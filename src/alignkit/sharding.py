"""Split a batch job across processes (or Ray tasks) and merge the pieces back, with nothing lost or doubled.

``--shard I/N`` on ``generate``, ``eval``, ``shift``, ``data answers`` and ``data pairs`` makes the command take
the input records at positions k with ``k % N == I`` (0-based: balanced, and the same split every time for one
input file) and write them to files of its own beside the output -- ``runs/x.jsonl`` becomes
``runs/x.shard-0-of-2.jsonl`` (a folder output such as eval's: ``runs/eval.shard-0-of-2/``). Each record keeps
the seed it has in the unsharded run (its position in the whole input), so a sharded job gives the records an
unsharded one gives. When a shard has done every record it was given it writes a *manifest*
(``x.shard-0-of-2.manifest.json``): the command, the input's sha256, the ids it was given and the files it
wrote. A shard resumes like the unsharded command (``--resume``); a shard resumed on a changed input is
refused.

:func:`merge` (``alignkit merge OUTPUT``) checks the manifests (all N shards finished, one input, one command)
and every record (each in the shard its id belongs to, none twice, none missing where the command writes
every id) and writes the merged files atomically, in input order. ``alignkit shards --workers N [--ray
ADDRESS] COMMAND ...`` (:mod:`alignkit.cli.shards`) runs the N shards as local processes or as Ray tasks and
merges them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from alignkit.errors import InputError
from alignkit.io import complete_records

T = TypeVar("T")
MANIFEST_VERSION = 1
_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    @classmethod
    def parse(cls, text: str | None) -> Shard | None:
        """``"I/N"`` (0 <= I < N) -> Shard; None -> None; anything else is a clear error."""
        if text is None or text == "":
            return None
        m = _SHARD.match(str(text))
        if not m:
            raise InputError(f"--shard {text!r}: expected I/N, e.g. 0/2 for the first of two shards")
        i, n = int(m.group(1)), int(m.group(2))
        if n < 1:
            raise InputError(f"--shard {text!r}: the number of shards must be at least 1")
        if i >= n:
            raise InputError(f"--shard {text!r}: shards are numbered from 0 to {n - 1}")
        return cls(i, n)

    @property
    def label(self) -> str:
        return f"shard-{self.index}-of-{self.count}"

    def owns(self, position: int) -> bool:
        return position % self.count == self.index

    def take(self, items: Sequence[T]) -> list[T]:
        """The items at this shard's positions, in order."""
        return [x for k, x in enumerate(items) if self.owns(k)]

    def path(self, output: str | Path) -> Path:
        """Where this shard writes what the unsharded command writes to ``output`` (a file or a folder)."""
        p = Path(output)
        return self.beside(p, p.suffix)

    def beside(self, output: str | Path, ending: str) -> Path:
        """A file of this shard next to ``output``: ``out.jsonl`` -> ``out.shard-I-of-N{ending}``."""
        return Path(output).with_name(f"{stem(output)}.{self.label}{ending}")

    def manifest_path(self, output: str | Path) -> Path:
        return self.beside(output, ".manifest.json")


def stem(output: str | Path) -> str:
    """``runs/x.jsonl`` -> ``x``; a folder ``runs/eval`` -> ``eval``: the name shard files start with."""
    p = Path(output)
    return p.stem if p.suffix else p.name


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class ShardJob:
    """One shard of one command: what it was given, checked on resume, and its manifest when it is done.

    ``files`` names each file the shard writes: ``{"output": merged path, "target": this shard's path, "key":
    ["id"], "complete": True}`` -- records are keyed by ``key`` (``None``: lines merged as a set, for a cache);
    ``complete`` when every id given to the shard must appear (generate, shift, eval's answers) rather than
    some being dropped with a reason (data answers)."""

    shard: Shard
    command: str
    input: str
    output: str
    ids: list[str]
    files: dict[str, dict[str, Any]]
    options: dict[str, Any] | None = None  # the command's resolved options: shards of one job share them

    @property
    def target(self) -> Path:
        return self.shard.path(self.output)

    def check_input(self) -> None:
        """Refuse to mix shards of two different inputs or commands."""
        mp = self.shard.manifest_path(self.output)
        if mp.exists():
            old = read_manifest(mp)
            if old.get("input_sha256") != file_sha256(self.input) or old.get("command") != self.command:
                raise InputError(f"{mp} was written by {old.get('command')!r} on another input (sha256 "
                                 f"{str(old.get('input_sha256'))[:12]}...); remove the shard's files or use "
                                 "another --output")

    def finish(self, counts: dict[str, Any] | None = None) -> Path:
        """Write the manifest: this shard has done every record it was given."""
        data = {"version": MANIFEST_VERSION, "command": self.command, "shard": [self.shard.index, self.shard.count],
                "input": self.input, "input_sha256": file_sha256(self.input), "output": str(self.output),
                "target": str(self.target), "ids": self.ids, "files": self.files, "options": self.options or {},
                "counts": counts or {},
                "host": os.uname().nodename, "pid": os.getpid()}
        mp = self.shard.manifest_path(self.output)
        atomic_write_text(mp, json.dumps(data, ensure_ascii=False, indent=1) + "\n")
        return mp


def read_manifest(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"shard manifest {str(path)!r} cannot be read: {e}") from None
    if not isinstance(data, dict) or data.get("version") != MANIFEST_VERSION or "shard" not in data:
        raise InputError(f"{str(path)!r} is not an alignkit shard manifest (version {MANIFEST_VERSION})")
    return data


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _has_records(path: Path) -> bool:
    if path.is_file():
        return path.stat().st_size > 0
    if path.is_dir():
        return any(p.is_file() and p.stat().st_size > 0 for p in path.rglob("*.jsonl"))
    return False


def find_manifests(output: str | Path) -> list[Path]:
    p = Path(output)
    pat = re.compile(re.escape(stem(p)) + r"\.shard-(\d+)-of-(\d+)\.manifest\.json$")
    if not p.parent.exists():
        return []
    return sorted((q for q in p.parent.iterdir() if pat.match(q.name)),
                  key=lambda q: tuple(int(x) for x in pat.match(q.name).groups()))  # type: ignore[union-attr]


def shard_files_present(output: str | Path) -> list[Path]:
    """Shard outputs beside ``output`` (finished or not): for messages about unfinished shards."""
    p = Path(output)
    pat = re.compile(re.escape(stem(p)) + r"\.shard-(\d+)-of-(\d+)" + re.escape(p.suffix) + "$")
    return sorted(q for q in p.parent.iterdir() if pat.match(q.name)) if p.parent.exists() else []


def merge(output: str | Path, *, force: bool = False, say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Check and merge the shards of ``output``; returns a summary. Raises :class:`InputError` naming every
    problem; nothing is written unless every check passes."""
    say = say or (lambda s: None)
    out = Path(output)
    manifests = find_manifests(out)
    if not manifests:
        present = shard_files_present(out)
        hint = (f" ({len(present)} shard output(s) exist, none finished: rerun them with --resume)" if present else "")
        raise InputError(f"no finished shards of {str(out)!r}: no {stem(out)}.shard-I-of-N.manifest.json beside "
                         f"it{hint}")
    data = [read_manifest(m) for m in manifests]
    counts = {d["shard"][1] for d in data}
    if len(counts) != 1:
        raise InputError(f"shards of {str(out)!r} were split different ways ({sorted(counts)} shards): "
                         "remove the stale ones")
    n = counts.pop()
    have = {d["shard"][0] for d in data}
    missing = sorted(set(range(n)) - have)
    if missing:
        raise InputError(f"{len(missing)} of {n} shard(s) of {str(out)!r} have not finished: "
                         + ", ".join(f"{i}/{n}" for i in missing) + " (rerun them with --shard I/N --resume)")
    for d in data:
        d["layout"] = {name: {k: v for k, v in spec.items() if k != "target"} for name, spec in d["files"].items()}
    for key in ("command", "input_sha256", "layout", "options"):
        values = {json.dumps(d.get(key), sort_keys=True, default=str) for d in data}
        if len(values) != 1:
            raise InputError(f"the shards of {str(out)!r} disagree on their {key.replace('_', ' ')}: they were not "
                             "made by one command on one input with the same options")
    data.sort(key=lambda d: d["shard"][0])
    files: dict[str, dict[str, Any]] = data[0]["layout"]
    # the input order: position k of the whole input is shard k % n's (k // n)-th id
    order: dict[str, int] = {}
    owner: dict[str, int] = {}
    for d in data:
        i = d["shard"][0]
        for j, rid in enumerate(d["ids"]):
            if rid in owner:
                raise InputError(f"id {rid!r} was given to shard {owner[rid]} and to shard {i}")
            owner[rid], order[rid] = i, j * n + i
    problems: list[str] = []
    merged: dict[str, list[dict[str, Any]] | list[str]] = {}
    for rel, spec in sorted(files.items()):
        key = spec.get("key")
        if key is None:  # a set of lines (a cache): union, first occurrence wins
            seen_lines: dict[str, None] = {}
            for d in data:
                path = _file_of(d, rel)
                if path.exists():
                    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                        if line.strip():
                            try:
                                json.loads(line)
                            except json.JSONDecodeError:
                                continue
                            seen_lines.setdefault(line, None)
            merged[rel] = list(seen_lines)
            continue
        rows: list[tuple[tuple[int, int, int], dict[str, Any]]] = []
        seen: dict[tuple, int] = {}
        groups: dict[tuple, int] = {}
        for d in data:
            i = d["shard"][0]
            path = _file_of(d, rel)
            for line_no, rec in enumerate(complete_records(path)):
                k = tuple(str(rec.get(f)) for f in key)
                rid = str(rec.get("id"))
                if "id" not in rec:
                    problems.append(f"{path}: a record without an id (record {line_no + 1})")
                    continue
                if rid not in owner:
                    problems.append(f"{path}: id {rid!r} is not in the input the shards were given")
                    continue
                if owner[rid] != i:
                    problems.append(f"{path}: id {rid!r} belongs to shard {owner[rid]}, not shard {i}")
                    continue
                if k in seen:
                    problems.append(f"{path}: {dict(zip(key, k))} is written twice (shards {seen[k]} and {i})")
                    continue
                seen[k] = i
                group = tuple(x for f, x in zip(key, k) if f != "id")
                groups.setdefault(group, len(groups))
                rows.append(((groups[group], order[rid], line_no), rec))
        if spec.get("complete"):  # every id given to a shard is written (for each model, in shift)
            names = {g: dict(zip([f for f in key if f != "id"], group)) for group, g in groups.items()}
            got: dict[int, set[str]] = {g: set() for g in names} or {0: set()}
            for (g, _, _), r in rows:
                got[g].add(str(r["id"]))
            for g, ids in got.items():
                lost = [rid for rid in sorted(owner, key=order.__getitem__) if rid not in ids]
                if lost:
                    what = f" for {names[g]}" if names.get(g) else ""
                    problems.append(f"{rel}: {len(lost)} id(s) are missing{what} although their shards finished: "
                                    + ", ".join(map(repr, lost[:10])) + (" ..." if len(lost) > 10 else ""))
        rows.sort(key=lambda x: x[0])
        merged[rel] = [r for _, r in rows]
    if problems:
        raise InputError(f"the shards of {str(out)!r} do not merge cleanly ({len(problems)} problem(s)); nothing "
                         "was written:\n  " + "\n  ".join(problems[:20]))
    targets = {rel: Path(files[rel]["output"]) for rel in merged}
    if not force:
        taken = [str(t) for t in targets.values() if t.is_file() and t.stat().st_size > 0]
        if taken:
            raise InputError(f"merged output already exists: {', '.join(taken)}; remove it or pass --force")
    written = {}
    for rel, rows in merged.items():
        lines = [r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in rows]
        atomic_write_text(targets[rel], "".join(line + "\n" for line in lines))
        written[str(targets[rel])] = len(lines)
        say(f"merged {len(lines)} record(s) from {n} shard(s) into {targets[rel]}")
    summary = {"output": str(out), "shards": n, "command": data[0]["command"], "input": data[0]["input"],
               "ids": len(owner), "written": written,
               "per_shard": [{"shard": f"{d['shard'][0]}/{n}", "ids": len(d["ids"]), "host": d.get("host"),
                              "counts": d.get("counts", {})} for d in data]}
    return summary


def _file_of(manifest: dict[str, Any], name: str) -> Path:
    return Path(manifest["files"][name]["target"])

