"""Training data: schemas, validation with line numbers, cleaning (exact and near duplicates, length
filters) and diversity selection.

Two record kinds, one per line of a JSONL file (shipped sets are YAML lists of the same records):

* **sft** -- ``{"id": ..., "messages": [{"role": "system"|"user"|"assistant", "content": ...}, ...]}``: an
  optional system message first, then user and assistant turns alternating, starting with a user turn and
  ending with an assistant turn (the loss falls on every assistant turn). Other fields (``tags``,
  ``provenance``, ...) are carried along.
* **prefs** -- ``{"id": ..., "prompt": TEXT or MESSAGES, "chosen": TEXT, "rejected": TEXT}``: the prompt
  is one user message (text) or a conversation ending with a user turn; chosen and rejected are the two
  answers, and must differ.

``id`` is optional; a record without one is called ``line-N`` after its line. Every problem found is
reported as ``file:line: reason``; nothing is trained on a file with problems unless they are skipped on
purpose.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from alignkit.errors import InputError
from alignkit.io import BadLine, read_jsonl

KINDS = ("sft", "prefs")
SHIPPED = {"alignkit-sft": "sft"}
"""Data sets shipped with alignkit, by name (see ``src/alignkit/data/``)."""


@dataclass
class Record:
    lineno: int
    data: dict[str, Any]
    id: str = ""

    def __post_init__(self) -> None:
        if not self.id:
            raw = self.data.get("id")
            self.id = str(raw) if raw not in (None, "") else f"line-{self.lineno}"


@dataclass
class Loaded:
    path: str
    kind: str
    records: list[Record]
    problems: list[BadLine] = field(default_factory=list)

    def raise_if_problems(self, what: str = "nothing was done") -> None:
        if self.problems:
            raise InputError(f"{len(self.problems)} bad record(s) in {self.path}, {what}:\n{format_problems(self.problems)}")


def format_problems(problems: Sequence[BadLine], limit: int = 20) -> str:
    shown = "\n".join(f"  {b}" for b in problems[:limit])
    return shown + (f"\n  ... and {len(problems) - limit} more" if len(problems) > limit else "")


def shipped_path(name: str) -> Path:
    return Path(str(resources.files("alignkit") / "data" / f"{name}.yaml"))


def resolve_data(path_or_name: str) -> tuple[str, str | None]:
    """(file path, shipped kind or None): a shipped set's name or a file path."""
    if path_or_name in SHIPPED:
        return str(shipped_path(path_or_name)), SHIPPED[path_or_name]
    return path_or_name, None


def load(path_or_name: str, kind: str) -> Loaded:
    """Read and check every record; problems are collected (with line numbers), not raised."""
    if kind not in KINDS:
        raise InputError(f"unknown data kind {kind!r}; expected one of {', '.join(KINDS)}")
    path, shipped_kind = resolve_data(path_or_name)
    if shipped_kind is not None and shipped_kind != kind:
        raise InputError(f"{path_or_name!r} is a shipped {shipped_kind} set, not {kind}")
    check = check_sft if kind == "sft" else check_prefs
    out = Loaded(path, kind, [])
    seen: dict[str, int] = {}
    for lineno, rec in _read_any(path):
        if isinstance(rec, BadLine):
            out.problems.append(rec)
            continue
        problem = check(rec)
        r = Record(lineno, rec)
        if problem is None and r.id in seen:
            problem = f"duplicate id {r.id!r} (first on line {seen[r.id]})"
        if problem:
            out.problems.append(BadLine(path, lineno, problem))
            continue
        seen[r.id] = lineno
        out.records.append(r)
    if not out.records and not out.problems:
        out.problems.append(BadLine(path, 0, "the file has no records"))
    return out


def _read_any(path: str) -> Iterable[tuple[int, dict[str, Any] | BadLine]]:
    if path.endswith((".yaml", ".yml")):
        import yaml

        p = Path(path)
        if not p.is_file():
            raise InputError(f"input file {path!r} does not exist")
        try:
            docs = yaml.safe_load(p.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise InputError(f"{path}: not valid YAML: {e}") from e
        records = docs.get("records") if isinstance(docs, dict) else docs
        if not isinstance(records, list):
            raise InputError(f"{path}: a YAML data file must be a list of records (or have a 'records' list)")
        for i, rec in enumerate(records, 1):
            yield i, rec if isinstance(rec, dict) else BadLine(path, i, f"expected a mapping, got {type(rec).__name__}")
        return
    yield from read_jsonl(path)


def _check_id(rec: dict[str, Any]) -> str | None:
    if "id" in rec and (not isinstance(rec["id"], (str, int)) or isinstance(rec["id"], bool) or rec["id"] == ""):
        return "'id' must be a non-empty string or an integer"
    return None


def _check_messages(msgs: Any, *, last: str) -> str | None:
    if not isinstance(msgs, list) or not msgs:
        return "'messages' must be a non-empty list of {role, content}"
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or set(m) - {"role", "content", "name"} or "role" not in m or "content" not in m:
            return f"message {i} must be an object with 'role' and 'content'"
        if m["role"] not in ("system", "user", "assistant"):
            return f"message {i} has unknown role {m['role']!r} (system, user or assistant)"
        if not isinstance(m["content"], str):
            return f"message {i} content must be a string, got {type(m['content']).__name__}"
        if not m["content"].strip():
            return f"message {i} ({m['role']}) is empty"
        if m["role"] == "system" and i != 0:
            return f"message {i} is a system message; only the first message may be one"
    turns = [m["role"] for m in msgs if m["role"] != "system"]
    if not turns:
        return "the conversation has no user or assistant turn"
    for i, role in enumerate(turns):
        want = "user" if i % 2 == 0 else "assistant"
        if role != want:
            return f"turn {i} is {role!r} but turns must alternate user/assistant starting with user"
    if turns[-1] != last:
        return f"the conversation must end with a{'n' if last == 'assistant' else ''} {last} turn"
    return None


def check_sft(rec: dict[str, Any]) -> str | None:
    if (p := _check_id(rec)) is not None:
        return p
    if "messages" not in rec:
        return "record needs 'messages' (a list of {role, content} ending with an assistant turn)"
    return _check_messages(rec["messages"], last="assistant")


def check_prefs(rec: dict[str, Any]) -> str | None:
    if (p := _check_id(rec)) is not None:
        return p
    missing = [k for k in ("prompt", "chosen", "rejected") if k not in rec]
    if missing:
        return f"record needs 'prompt', 'chosen' and 'rejected' (missing: {', '.join(missing)})"
    prompt = rec["prompt"]
    if isinstance(prompt, str):
        if not prompt.strip():
            return "'prompt' is empty"
    elif (p := _check_messages(prompt, last="user")) is not None:
        return f"bad 'prompt' conversation: {p}"
    for k in ("chosen", "rejected"):
        if not isinstance(rec[k], str) or not rec[k].strip():
            return f"'{k}' must be a non-empty string"
    if rec["chosen"].strip() == rec["rejected"].strip():
        return "'chosen' and 'rejected' are the same answer"
    return None


# -- views of a record -------------------------------------------------------------------------------------


def prompt_messages(rec: dict[str, Any]) -> list[dict[str, str]]:
    """A preference record's prompt as messages."""
    p = rec["prompt"]
    return [{"role": "user", "content": p}] if isinstance(p, str) else list(p)


def user_text(rec: dict[str, Any]) -> str:
    msgs = rec["messages"] if "messages" in rec else prompt_messages(rec)
    return "\n".join(m["content"] for m in msgs if m["role"] == "user")


def answer_text(rec: dict[str, Any]) -> str:
    if "messages" in rec:
        return "\n".join(m["content"] for m in rec["messages"] if m["role"] == "assistant")
    return rec["chosen"]


def full_text(rec: dict[str, Any]) -> str:
    if "messages" in rec:
        return "\n".join(f"{m['role']}: {m['content']}" for m in rec["messages"])
    return f"{user_text(rec)}\nchosen: {rec['chosen']}\nrejected: {rec['rejected']}"


def data_hash(records: Sequence[Record]) -> str:
    """A content hash of the records as trained on (order matters, ids and extra fields do not)."""
    h = hashlib.sha256()
    for r in records:
        key = r.data.get("messages") if "messages" in r.data else [r.data["prompt"], r.data["chosen"], r.data["rejected"]]
        h.update(json.dumps(key, sort_keys=True, ensure_ascii=False).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()[:16]


# -- cleaning ----------------------------------------------------------------------------------------------

_NON_WORD = re.compile(r"[^\w]+", re.UNICODE)


def normalise(text: str) -> str:
    return " ".join(_NON_WORD.sub(" ", text.lower()).split())


def shingles(text: str, n: int = 3) -> set[str]:
    words = normalise(text).split()
    if len(words) < n:
        return {" ".join(words)} if words else set()
    return {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}


@dataclass
class CleanOptions:
    near_duplicate: float = 0.8
    """Jaccard similarity of word 3-gram sets (user text + answer) at or above which a record is a near
    duplicate of an earlier one (1.0 turns near-duplicate removal off)."""
    min_words: int = 1
    max_words: int = 2000
    """Bounds on the words of the answer (all assistant turns; for prefs, the chosen answer)."""


def clean(records: Sequence[Record], options: CleanOptions) -> tuple[list[Record], list[tuple[Record, str]]]:
    """Keep the first of exact and near duplicates and records within the length bounds; return (kept,
    [(removed, reason)])."""
    kept: list[Record] = []
    removed: list[tuple[Record, str]] = []
    exact: dict[str, Record] = {}
    index: dict[str, list[int]] = defaultdict(list)  # shingle -> positions in `kept`
    kept_shingles: list[set[str]] = []
    for r in records:
        words = len(answer_text(r.data).split())
        if words < options.min_words:
            removed.append((r, f"answer too short ({words} words < {options.min_words})"))
            continue
        if words > options.max_words:
            removed.append((r, f"answer too long ({words} words > {options.max_words})"))
            continue
        key = normalise(full_text(r.data))
        if key in exact:
            removed.append((r, f"exact duplicate of {exact[key].id!r} (line {exact[key].lineno})"))
            continue
        sh = shingles(user_text(r.data) + "\n" + answer_text(r.data))
        if options.near_duplicate < 1.0 and sh:
            overlap: dict[int, int] = defaultdict(int)
            for s in sh:
                for j in index.get(s, ()):
                    overlap[j] += 1
            best, best_sim = None, 0.0
            for j, inter in overlap.items():
                sim = inter / (len(sh) + len(kept_shingles[j]) - inter)
                if sim > best_sim:
                    best, best_sim = j, sim
            if best is not None and best_sim >= options.near_duplicate:
                other = kept[best]
                removed.append((r, f"near duplicate of {other.id!r} (line {other.lineno}, similarity {best_sim:.2f})"))
                continue
        exact[key] = r
        for s in sh:
            index[s].append(len(kept))
        kept_shingles.append(sh)
        kept.append(r)
    return kept, removed


# -- diversity selection -----------------------------------------------------------------------------------


def select_diverse(records: Sequence[Record], n: int, embed: Callable[[Sequence[str]], Any]) -> list[Record]:
    """N records spread over the space of user requests: greedy farthest-point selection on normalised
    sentence embeddings, starting from the record closest to the centre. Deterministic; returned in the
    input order."""
    import numpy as np

    if n <= 0:
        raise InputError(f"--n must be positive, got {n}")
    if n >= len(records):
        return list(records)
    vecs = np.asarray(embed([user_text(r.data) for r in records]), dtype=np.float64)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True).clip(min=1e-12)
    centre = vecs.mean(axis=0)
    chosen = [int(np.argmax(vecs @ centre))]
    dist = 1.0 - vecs @ vecs[chosen[0]]
    dist[chosen[0]] = -np.inf
    while len(chosen) < n:
        nxt = int(np.argmax(dist))
        chosen.append(nxt)
        dist = np.minimum(dist, 1.0 - vecs @ vecs[nxt])
        dist[chosen] = -np.inf
    return [records[i] for i in sorted(chosen)]
