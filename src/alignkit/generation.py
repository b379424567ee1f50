"""Generation as ``alignkit generate`` and :func:`alignkit.generate` do it: the output record (the answer, usage of
every stage, judge-free metrics, the route's stage records, provenance with the route tree), on the one resumable
loop (:func:`alignkit.resumable.generate_into`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from alignkit.evaluation.cheap import answer_metrics
from alignkit.io import complete_records
from alignkit.methods.routes import usage
from alignkit.progress import SILENT
from alignkit.resumable import generate_into, provenance_of
from alignkit.types import Completion, GenerationConfig


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


def generate_records(model: Any, records: Sequence[dict[str, Any]], config: GenerationConfig, *,
                     output: str | Path | None = None, resume: bool = False, batch_size: int = 8,
                     progress: Any = None, label: str = "generate", index: Mapping[str, int] | None = None
                     ) -> list[dict[str, Any]]:
    """Generate an answer for every record (``{id, prompt | messages, ...}``) as ``alignkit generate`` does: record
    ``i`` samples with seed ``config.seed + i`` (``index``: each id's place in the whole input when ``records`` are a
    part of it, a shard). With ``output``: appended to that JSONL file batch by batch and, with ``resume``, ids
    already there skipped (an output with records is never touched without ``resume``); returns the file's records
    for these ids. Without: returns the new records."""
    provenance = provenance_of(model, config)
    made = generate_into(model, records, config, to_record=lambda rec, comp: output_record(rec, comp, provenance),
                         output=output, resume=resume, batch_size=batch_size, progress=progress or SILENT,
                         label=label, index=index, per_record_seed=True)
    if output is None:
        return made
    wanted = {str(r["id"]) for r in records}
    return [r for r in complete_records(output) if str(r.get("id")) in wanted]
