"""Running the token-shift analysis: items from a file or from Python, the aligned model's answers generated where
they are missing, one record per answer appended to a JSONL file as it is done (resumable by aligned label and id).
The command line (``alignkit shift``) and the Python API (``alignkit.shift``) both run through here."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from alignkit.analysis.shift import Item, ShiftAnalyzer, answer_ids
from alignkit.errors import InputError
from alignkit.io import BadLine, complete_records, read_jsonl
from alignkit.models.base import walk
from alignkit.types import GenerationConfig

#: (id, instruction, answer or None, extra fields)
ShiftItem = tuple[str, str, "str | None", dict[str, Any]]


def read_items(path: str) -> list[tuple[str, str, str | None, dict[str, Any]]]:
    """The items of a shift input file; malformed lines are all reported at once."""
    out, bad, seen = [], [], set()
    for lineno, rec in read_jsonl(path):
        if isinstance(rec, BadLine):
            bad.append(str(rec))
            continue
        rid = rec.get("id")
        text = rec.get("instruction", rec.get("prompt"))
        answer = rec.get("answer", rec.get("output"))
        if rid is None or not isinstance(text, str) or not text.strip():
            bad.append(f"{path}:{lineno}: record needs an 'id' and a non-empty 'instruction' (or 'prompt')")
            continue
        if answer is not None and not isinstance(answer, str):
            bad.append(f"{path}:{lineno}: 'answer' must be a string")
            continue
        if str(rid) in seen:
            bad.append(f"{path}:{lineno}: duplicate id {rid!r}")
            continue
        seen.add(str(rid))
        extra = {"category": rec["category"]} if "category" in rec else {}
        out.append((str(rid), text, answer, extra))
    if bad:
        raise InputError(f"{len(bad)} malformed input line(s):\n  " + "\n  ".join(bad[:20]))
    return out


def run_items(analyzer: ShiftAnalyzer, aligned: Any, todo: Sequence[ShiftItem], max_new_tokens: int,
              write: Callable[[dict[str, Any]], None], advance: Callable[[int], None] = lambda n: None) -> None:
    """Analyse ``todo`` batch by batch: answers the aligned model still has to give are generated (plain greedy),
    each record goes to ``write`` with its provenance."""
    # plain greedy: every answer token is then the aligned model's own top choice, so a shift measures the
    # base model, not a decoding trick (a repetition penalty would move tokens away from P_A's argmax)
    cfg = GenerationConfig(max_new_tokens=max_new_tokens)
    prov = analyzer.provenance()
    bs = analyzer.options.batch_size
    for start in range(0, len(todo), bs):
        chunk = todo[start : start + bs]
        missing = [i for i, (_, _, a, _) in enumerate(chunk) if a is None]
        comps = dict(zip(missing, aligned.generate([chunk[i][1] for i in missing], cfg))) if missing else {}
        batch = []
        for i, (rid, text, a, extra) in enumerate(chunk):
            c = comps.get(i)
            ids = answer_ids(aligned, c) if c is not None and analyzer.mode == "exact" else None
            batch.append(Item(rid, text, c.text if c is not None else (a or ""), {**extra, "generated": c is not None}, ids))
        for rec in analyzer.analyse(batch):
            write({**rec, "provenance": {**prov, "generation": cfg.to_dict() if rec["generated"] else None}})
        advance(len(chunk))


def done_keys(path: str) -> set[tuple[str, str]]:
    """``(aligned label, id)`` of every answer already in a shift output file."""
    return {(r["aligned"], str(r["id"])) for r in complete_records(path) if "aligned" in r and "id" in r}


def shift_label(aligned: Any, spec: str) -> str:
    """An aligned model's label in shift records: ``METHOD:SPEC`` (a route's method is its stages, ``bpo > urial``;
    DeRa's carries its lambda)."""
    info = aligned.info()
    own = getattr(aligned, "method", aligned.backend)
    name = info.get("method", own) if info.get("route") else own
    dera = next((m for _, m in walk(aligned) if getattr(m, "method", None) == "dera"), None)
    return f"{name}:{spec}" + (f"@lam={dera.lam:g}" if dera is not None else "")
