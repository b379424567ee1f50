"""The one resumable generate loop: records in, one output record per input appended to a JSONL file as each batch
finishes, ids already there skipped. ``alignkit generate`` and :func:`alignkit.generate`, the evaluation harness's
answers, the DeRa sweep and the data tools' teacher answers all run through :func:`generate_into`; each says what
its records hold (``to_record``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from alignkit.errors import InputError
from alignkit.io import JsonlAppender, nonempty, written_ids
from alignkit.progress import SILENT, Progress
from alignkit.records import record_prompt
from alignkit.types import Completion, GenerationConfig, Prompt


def with_seed(cfg: GenerationConfig, i: int) -> GenerationConfig:
    """Each record's own seed, so its output does not depend on which batch it lands in."""
    return cfg if cfg.seed is None else replace(cfg, seed=cfg.seed + i)


def provenance_of(model: Any, config: GenerationConfig) -> dict[str, Any]:
    """What a generated record says about how it was made: the model (or route) and the decoding; a model built
    from a route tree also records the tree."""
    prov: dict[str, Any] = {"model": model.info(), "generation": config.to_dict()}
    tree = getattr(model, "tree", None)
    if tree is not None:
        prov["tree"] = tree.to_dict()
    return prov


def generate_into(model: Any, records: Sequence[dict[str, Any]], config: GenerationConfig, *,
                  to_record: Callable[[dict[str, Any], Completion], dict[str, Any] | None],
                  output: str | Path | None = None, resume: bool = True, batch_size: int = 8,
                  progress: Progress = SILENT, label: str = "generate",
                  prompt_of: Callable[[dict[str, Any]], Prompt] = record_prompt,
                  index: Mapping[str, int] | None = None, per_record_seed: bool = False,
                  after_batch: Callable[[list[dict[str, Any]]], None] | None = None) -> list[dict[str, Any]]:
    """Generate for every record whose id is not yet in ``output`` and append ``to_record(record, completion)``
    (``None``: nothing written for it) as each batch finishes; returns the records this call made. ``resume``
    False refuses an output that already holds records. ``per_record_seed``: record ``i`` samples with seed
    ``config.seed + i``, ``i`` its place in ``index`` (default: in ``records``), so its text does not depend on
    its batchmates or on how a run was split. ``after_batch(made so far)`` runs once each batch is on disk."""
    if output is not None and not resume and nonempty(output):
        raise InputError(f"output file {str(output)!r} already has records; pass --resume (resume=True) to continue "
                         "it, or choose another output file")
    done = written_ids(output) if output is not None else set()
    todo = [r for r in records if str(r["id"]) not in done]
    places = index if index is not None else {str(r["id"]): i for i, r in enumerate(records)}
    made: list[dict[str, Any]] = []
    if not todo:
        return made
    sink = JsonlAppender(output) if output is not None else None
    try:
        with progress.task(label, len(todo)) as advance:
            for start in range(0, len(todo), batch_size):
                batch = todo[start : start + batch_size]
                configs = [with_seed(config, places[str(r["id"])]) if per_record_seed else config for r in batch]
                for rec, comp in zip(batch, model.generate([prompt_of(r) for r in batch], configs)):
                    row = to_record(rec, comp)
                    if row is None:
                        continue
                    made.append(row)
                    if sink is not None:
                        sink.write(row)
                advance(len(batch))
                if after_batch is not None:
                    after_batch(made)
    finally:
        if sink is not None:
            sink.close()
    return made
