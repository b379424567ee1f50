"""Data synthesis with the toolkit's own models: SFT records whose answers come from a teacher (any model
and method, e.g. the base model aligned in context), and preference pairs from two routes (e.g. the
in-context-aligned answer preferred over the raw base continuation). Every record keeps its provenance
(model, method, template hash, decoding, finish reason); output is appended record by record and resumable.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

from alignkit.io import JsonlAppender, written_ids
from alignkit.progress import SILENT, Progress
from alignkit.types import GenerationConfig, as_messages


def _prompt_messages(rec: dict[str, Any]) -> list[dict[str, str]]:
    if "prompt" in rec:
        return [{"role": "user", "content": rec["prompt"]}]
    return [{"role": m.role, "content": m.content} for m in as_messages(rec["messages"])]


def _generate(model: Any, records: Sequence[dict[str, Any]], cfg: GenerationConfig) -> list[Any]:
    return model.generate([as_messages(_prompt_messages(r)) for r in records], [cfg] * len(records))


def _usable(comp: Any, keep_truncated: bool) -> str | None:
    if not comp.text.strip():
        return "empty answer"
    if comp.finish_reason == "length" and not keep_truncated:
        return "hit the token limit (a runaway answer)"
    return None


def synthesize_answers(records: Sequence[dict[str, Any]], teacher: Any, cfg: GenerationConfig, output: str, *,
                       batch_size: int = 8, keep_truncated: bool = False,
                       report: Callable[[str], None] | None = None, progress: Progress = SILENT) -> dict[str, int]:
    """Append one SFT record per usable teacher answer; ids already in ``output`` are skipped."""
    report = report or (lambda s: print(s, file=sys.stderr))
    done = written_ids(output)
    todo = [r for r in records if str(r["id"]) not in done]
    counts = {"written": 0, "skipped_done": len(records) - len(todo), "dropped": 0}
    provenance = {"teacher": teacher.info(), "generation": cfg.to_dict()}
    with JsonlAppender(output) as out, progress.task("answers", len(todo)) as advance:
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            comps = _generate(teacher, batch, cfg)
            advance(len(batch))
            for rec, comp in zip(batch, comps):
                problem = _usable(comp, keep_truncated)
                if problem:
                    counts["dropped"] += 1
                    report(f"  dropped {rec['id']!r}: {problem}")
                    continue
                msgs = _prompt_messages(rec) + [{"role": "assistant", "content": comp.text.strip()}]
                extra = {k: v for k, v in rec.items() if k not in ("id", "prompt", "messages")}
                out.write({"id": rec["id"], "messages": msgs, **extra,
                           "provenance": {**provenance, "finish_reason": comp.finish_reason,
                                          "completion_tokens": comp.completion_tokens}})
                counts["written"] += 1
    return counts


def synthesize_pairs(records: Sequence[dict[str, Any]], chosen_model: Any, rejected_model: Any,
                     chosen_cfg: GenerationConfig, rejected_cfg: GenerationConfig, output: str, *, batch_size: int = 8, keep_truncated: bool = False,
                     report: Callable[[str], None] | None = None, progress: Progress = SILENT) -> dict[str, int]:
    """Append one preference record per prompt: the chosen route's answer over the rejected route's. The
    chosen answer must be usable (non-empty, stopped by itself unless ``keep_truncated``); the rejected one
    only has to differ from it."""
    report = report or (lambda s: print(s, file=sys.stderr))
    done = written_ids(output)
    todo = [r for r in records if str(r["id"]) not in done]
    counts = {"written": 0, "skipped_done": len(records) - len(todo), "dropped": 0}
    prov = {"chosen": {"model": chosen_model.info(), "generation": chosen_cfg.to_dict()},
            "rejected": {"model": rejected_model.info(), "generation": rejected_cfg.to_dict()}}
    with JsonlAppender(output) as out, progress.task("pairs", len(todo)) as advance:
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            good = _generate(chosen_model, batch, chosen_cfg)
            bad = _generate(rejected_model, batch, rejected_cfg)
            advance(len(batch))
            for rec, c, r in zip(batch, good, bad):
                problem = _usable(c, keep_truncated)
                if problem is None and not r.text.strip():
                    problem = "the rejected answer is empty"
                if problem is None and c.text.strip() == r.text.strip():
                    problem = "both routes gave the same answer"
                if problem:
                    counts["dropped"] += 1
                    report(f"  dropped {rec['id']!r}: {problem}")
                    continue
                msgs = _prompt_messages(rec)
                prompt: Any = msgs[0]["content"] if len(msgs) == 1 else msgs
                extra = {k: v for k, v in rec.items() if k not in ("id", "prompt", "messages")}
                out.write({"id": rec["id"], "prompt": prompt, "chosen": c.text.strip(), "rejected": r.text.strip(),
                           **extra, "provenance": {**prov, "chosen_finish_reason": c.finish_reason,
                                                   "rejected_finish_reason": r.finish_reason}})
                counts["written"] += 1
    return counts
