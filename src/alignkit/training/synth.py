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
from alignkit.methods.best_of_n import sample
from alignkit.progress import SILENT, Progress
from alignkit.resumable import generate_into
from alignkit.scoring import score_records
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

    def sft_record(rec: dict[str, Any], comp: Any) -> dict[str, Any] | None:
        problem = _usable(comp, keep_truncated)
        if problem:
            counts["dropped"] += 1
            report(f"  dropped {rec['id']!r}: {problem}")
            return None  # a dropped answer is not written: a later run asks again
        msgs = _prompt_messages(rec) + [{"role": "assistant", "content": comp.text.strip()}]
        extra = {k: v for k, v in rec.items() if k not in ("id", "prompt", "messages")}
        counts["written"] += 1
        return {"id": rec["id"], "messages": msgs, **extra,
                "provenance": {**provenance, "finish_reason": comp.finish_reason,
                               "completion_tokens": comp.completion_tokens}}

    generate_into(teacher, todo, cfg, to_record=sft_record, output=output, batch_size=batch_size, progress=progress,
                  label="answers", prompt_of=lambda r: as_messages(_prompt_messages(r)))
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


def synthesize_ranked_pairs(records: Sequence[dict[str, Any]], model: Any, cfg: GenerationConfig, scorer: Any,
                            output: str, *, k: int = 4, pick: str = "worst", min_margin: float = 0.0,
                            batch_size: int = 8, keep_truncated: bool = False, removed: str | None = None,
                            seed: int = 0, report: Callable[[str], None] | None = None,
                            progress: Progress = SILENT) -> dict[str, int]:
    """AI-feedback pairs: ``k`` sampled answers per prompt from one route, rated by ``scorer``; chosen = the best,
    rejected = the worst (``pick="worst"``) or a random one of those at least ``min_margin`` below the best
    (``pick="random-lower"``). Prompts whose answers tie (best - worst <= ``min_margin``), or that have fewer
    than two usable, rated, distinct answers, are dropped with the reason (to ``removed`` if given). Every
    record keeps all candidates with their scores, the route and the scorer."""
    import random


    if pick not in ("worst", "random-lower"):
        raise ValueError(f"unknown pick {pick!r}")
    report = report or (lambda s: print(s, file=sys.stderr))
    done = written_ids(output) | (written_ids(removed) if removed else set())
    todo = [r for r in records if str(r["id"]) not in done]
    counts = {"written": 0, "skipped_done": len(records) - len(todo), "dropped": 0, "tie": 0, "unrated": 0,
              "too_few": 0}
    prov = {"route": model.info(), "generation": cfg.to_dict(), "scorer": scorer.info(), "k": k, "pick": pick,
            "min_margin": min_margin}
    drop_out = JsonlAppender(removed) if removed else None
    with JsonlAppender(output) as out, progress.task("ranked pairs", len(todo)) as advance:
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            prompts = [as_messages(_prompt_messages(r)) for r in batch]
            groups = sample(model, prompts, [cfg] * len(batch), k)
            items, owners = [], []
            for i, (p, group) in enumerate(zip(prompts, groups)):
                seen: set[str] = set()
                for c in group:
                    text = c.text.strip()
                    if _usable(c, keep_truncated) is None and text not in seen:
                        seen.add(text)
                        items.append((p, text))
                        owners.append(i)
            scores = score_records(scorer, items)
            advance(len(batch))
            for i, rec in enumerate(batch):
                mine = [(items[j][1], scores[j]) for j in range(len(items)) if owners[j] == i]
                rated = [(t, s.value) for t, s in mine if s.value is not None]
                candidates = [{"text": c.text.strip(), "finish_reason": c.finish_reason,
                               "usable": _usable(c, keep_truncated) is None} for c in groups[i]]
                by_text = {t: s.to_dict() for t, s in mine}
                for c in candidates:
                    c.update(by_text.get(c["text"], {}))
                problem, key = None, None
                if len(mine) < 2:
                    problem, key = f"fewer than two usable, distinct answers among {k}", "too_few"
                elif len(rated) < 2:
                    reasons = sorted({s.reason or "" for _, s in mine if s.value is None})
                    problem, key = f"fewer than two answers could be rated ({'; '.join(reasons)[:300]})", "unrated"
                else:
                    rated.sort(key=lambda x: -x[1])
                    best_text, best = rated[0]
                    lower = [(t, v) for t, v in rated[1:] if best - v > min_margin]
                    if not lower:
                        problem, key = (f"tie: best {best:.4g} and worst {rated[-1][1]:.4g} differ by no more than "
                                        f"--min-margin {min_margin:g}"), "tie"
                if problem:
                    counts["dropped"] += 1
                    counts[key] += 1
                    report(f"  dropped {rec['id']!r}: {problem}")
                    if drop_out:
                        drop_out.write({"id": rec["id"], "reason": problem, "candidates": candidates})
                    continue
                if pick == "worst":
                    rej_text, rej = lower[-1]
                else:
                    rej_text, rej = random.Random(f"{seed}:{rec['id']}").choice(lower)
                msgs = _prompt_messages(rec)
                prompt: Any = msgs[0]["content"] if len(msgs) == 1 else msgs
                extra = {k2: v for k2, v in rec.items() if k2 not in ("id", "prompt", "messages")}
                out.write({"id": rec["id"], "prompt": prompt, "chosen": best_text, "rejected": rej_text, **extra,
                           "scores": {"chosen": round(best, 6), "rejected": round(rej, 6), "margin": round(best - rej, 6)},
                           "provenance": {**prov, "candidates": candidates}})
                counts["written"] += 1
    if drop_out:
        drop_out.close()
    return counts
