"""The one resumable generate loop: records in, one output record per input appended to JSONL as each batch
finishes, ids already written skipped on resume. ``alignkit generate`` and :func:`alignkit.generate` run here."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from alignkit.errors import InputError
from alignkit.evaluation.cheap import answer_metrics
from alignkit.io import JsonlAppender, complete_records, nonempty, written_ids
from alignkit.methods.routes import usage
from alignkit.progress import SILENT
from alignkit.records import record_prompt
from alignkit.types import Completion, GenerationConfig


def with_seed(cfg: GenerationConfig, i: int) -> GenerationConfig:
    """Each record's own seed, so its output does not depend on which batch it lands in."""
    return cfg if cfg.seed is None else replace(cfg, seed=cfg.seed + i)


def output_record(rec: dict[str, Any], comp: Completion, provenance: dict[str, Any]) -> dict[str, Any]:
    """An output record: the input's fields, the answer, its stop, usage (every stage of a route), metrics, the
    route's stage records, the backend's meta and the provenance."""
    row = {**rec, "output": comp.text, "finish_reason": comp.finish_reason, "stop": comp.stop, "usage": usage(comp),
           "metrics": answer_metrics(comp.text, comp.finish_reason, comp.completion_tokens)}
    meta = {k: v for k, v in (comp.meta or {}).items() if k not in ("route", "usage")}
    if comp.meta and comp.meta.get("route"):
        row["route"] = comp.meta["route"]  # every stage: its model, input, output and usage
    if meta:
        row["meta"] = meta
    return {**row, "provenance": provenance}


def provenance_of(model: Any, config: GenerationConfig) -> dict[str, Any]:
    """What a generated record says about how it was made: the model (or route) and the decoding; a model built
    from a route tree also records the tree."""
    prov: dict[str, Any] = {"model": model.info(), "generation": config.to_dict()}
    tree = getattr(model, "tree", None)
    if tree is not None:
        prov["tree"] = tree.to_dict()
    return prov


def generate_records(model: Any, records: Sequence[dict[str, Any]], config: GenerationConfig, *,
                     output: str | Path | None = None, resume: bool = False, batch_size: int = 8,
                     progress: Any = None, label: str = "generate", index: Mapping[str, int] | None = None
                     ) -> list[dict[str, Any]]:
    """Generate an answer for every record (``{id, prompt | messages, ...}``); record ``i`` samples with seed
    ``config.seed + i``. With ``output``: append each batch's records to that JSONL file as it finishes and, with
    ``resume``, skip ids already there (an output with records is never touched without ``resume``); returns the
    file's records for these ids. Without: returns the new records. ``index``: each id's place in the whole input
    (its seed offset) when ``records`` are a part of it (a shard)."""
    index = index if index is not None else {str(r["id"]): i for i, r in enumerate(records)}
    done = written_ids(output) if output is not None and resume else set()
    if output is not None and not resume and nonempty(output):
        raise InputError(f"output file {str(output)!r} already has records; pass --resume (resume=True) to continue "
                         "it, or choose another output file")
    todo = [r for r in records if str(r["id"]) not in done]
    out_rows: list[dict[str, Any]] = []
    if todo:
        provenance = provenance_of(model, config)
        sink = JsonlAppender(output) if output is not None else None
        tracker = progress or SILENT
        try:
            with tracker.task(label, len(todo)) as advance:
                for start in range(0, len(todo), batch_size):
                    batch = todo[start : start + batch_size]
                    configs = [with_seed(config, index[str(r["id"])]) for r in batch]
                    for rec, comp in zip(batch, model.generate([record_prompt(r) for r in batch], configs)):
                        row = output_record(rec, comp, provenance)
                        out_rows.append(row)
                        if sink is not None:
                            sink.write(row)
                    advance(len(batch))
        finally:
            if sink is not None:
                sink.close()
    if output is None:
        return out_rows
    wanted = {str(r["id"]) for r in records}
    return [r for r in complete_records(output) if str(r.get("id")) in wanted]
