"""Critique and revise: a critic route writes a critique of an answer -- what is wrong or missing, in words, not a
score -- and a reviser route rewrites the answer following it; repeated for up to N rounds, stopping early when the
critic finds nothing to fix. Every round's critique and revision stay in the record; the preference pairs it implies
(the final revision over the original answer) are written on request.

Input: SFT records (``messages`` ending with the assistant's answer), ``{id, prompt, answer}`` records, or prompts
alone (``{id, prompt}`` / messages ending with a user turn) that an answering route answers first. Output: SFT
records whose last turn is the final revision, with ``original``, ``rounds`` and provenance; records that cannot be
revised (an empty critique, a revision that is empty, unchanged, cut off by the token limit, a copy of the critique
or an echo of the reviser's instructions, in the first round)
go to the ``removed`` file with the reason -- nothing is invented. Appended record by record; a rerun skips the ids
already written or removed (resume after a kill).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from alignkit.errors import InputError
from alignkit.io import JsonlAppender, written_ids
from alignkit.progress import SILENT, Progress
from alignkit.types import GenerationConfig, Message, as_messages

#: what the critic is asked (alignkit's own wording); {conversation} and {answer} are filled in
CRITIQUE_PROMPT = (
    "Below is a conversation and the assistant's latest answer.\n\n{conversation}\n\nAnswer to review:\n{answer}\n\n"
    "Review the answer as a careful editor. List, as short concrete points, what is wrong, missing, unclear, "
    "unhelpful or unsafe in it. Do not write a new answer. If nothing is worth fixing, reply with exactly: NO ISSUES")
#: what the reviser is asked
REVISION_PROMPT = (
    "Below is a conversation, the assistant's latest answer, and a review of that answer.\n\n{conversation}\n\n"
    "Answer:\n{answer}\n\nReview:\n{critique}\n\n"
    "Rewrite the answer so that it fixes every point of the review and keeps what was already right. Reply with "
    "the new answer only, without any preamble.")
NO_ISSUES = re.compile(r"^\W*no (issues|problems)\b", re.IGNORECASE)
#: sentences of the reviser's own request: a revision containing one echoes its instructions (a small model's habit)
_ECHOES = ("Rewrite the answer so that it fixes every point of the review", "Reply with the new answer only",
           "Review the answer as a careful editor")


@dataclass
class _Item:
    rec: dict[str, Any]
    conversation: list[Message]  # up to the last user turn
    original: str
    answer: str = ""
    rounds: list[dict[str, Any]] = field(default_factory=list)
    done: str | None = None  # why it stopped
    dropped: str | None = None


def _conversation_text(msgs: Sequence[Message]) -> str:
    return "\n\n".join(f"{m.role.capitalize()}: {m.content}" for m in msgs)


def split_record(rec: dict[str, Any]) -> tuple[list[Message], str | None]:
    """(the conversation up to the last user turn, the answer to revise or None when there is none yet)."""
    if "messages" in rec:
        msgs = as_messages(rec["messages"])
        if msgs[-1].role == "assistant":
            if len(msgs) < 2 or msgs[-2].role != "user":
                raise InputError(f"record {rec['id']!r}: the answer must follow a user turn")
            return list(msgs[:-1]), msgs[-1].content
        if msgs[-1].role != "user":
            raise InputError(f"record {rec['id']!r}: messages must end with a user turn or the assistant's answer")
        return list(msgs), None
    answer = rec.get("answer")
    if answer is not None and not isinstance(answer, str):
        raise InputError(f"record {rec['id']!r}: 'answer' must be text")
    return [Message("user", rec["prompt"])], answer


def _generate(model: Any, prompts: list[list[Message]], cfg: GenerationConfig) -> list[Any]:
    return model.generate(prompts, [cfg] * len(prompts)) if prompts else []


def critique_and_revise(records: Sequence[dict[str, Any]], critic: Any, reviser: Any, cfg: GenerationConfig,
                        output: str, *, rounds: int = 2, answerer: Any = None, removed: str | None = None,
                        pairs: str | None = None, batch_size: int = 8, report: Callable[[str], None] | None = None,
                        progress: Progress = SILENT) -> dict[str, int]:
    """Critique and revise the answers of ``records`` for up to ``rounds`` rounds (see the module); returns counts:
    written, dropped, skipped_done, stopped_early (the critic found nothing to fix before the last round), pairs."""
    if not isinstance(rounds, int) or rounds < 1:
        raise InputError(f"rounds must be a positive integer, got {rounds!r}")
    report = report or (lambda s: print(s, file=sys.stderr))
    items: list[_Item] = []
    for rec in records:
        conv, answer = split_record(rec)
        if answer is None and answerer is None:
            raise InputError(f"record {rec['id']!r} has no answer to revise: give SFT records (messages ending with "
                             "the answer) or {id, prompt, answer}, or an answering route")
        items.append(_Item(rec, conv, answer or ""))
    done = written_ids(output) | (written_ids(removed) if removed else set())
    todo = [it for it in items if str(it.rec["id"]) not in done]
    counts = {"written": 0, "dropped": 0, "skipped_done": len(items) - len(todo), "stopped_early": 0, "pairs": 0}
    prov = {"critic": critic.info(), "reviser": reviser.info(), "rounds": rounds, "generation": cfg.to_dict(),
            **({"answerer": answerer.info()} if answerer is not None else {})}
    with JsonlAppender(output) as out, JsonlAppender(removed) if removed else _Nothing() as gone, \
            JsonlAppender(pairs) if pairs else _Nothing() as pair_out, progress.task("revise", len(todo)) as advance:
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            _answer_missing(batch, answerer, cfg)
            for it in batch:
                it.answer = it.original
            _rounds(batch, critic, reviser, cfg, rounds)
            for it in batch:
                rid = it.rec["id"]
                if it.dropped:
                    counts["dropped"] += 1
                    report(f"  dropped {rid!r}: {it.dropped}")
                    gone.write({"id": rid, "reason": it.dropped, "original": it.original, "rounds": it.rounds})
                    continue
                extra = {k: v for k, v in it.rec.items() if k not in ("id", "prompt", "messages", "answer")}
                msgs = [m.to_dict() for m in it.conversation] + [{"role": "assistant", "content": it.answer}]
                out.write({"id": rid, "messages": msgs, **extra, "original": it.original, "rounds": it.rounds,
                           "stopped": it.done, "provenance": prov})
                counts["written"] += 1
                counts["stopped_early"] += it.done == "the critic found nothing to fix" and len(it.rounds) < rounds
                if pairs and it.answer.strip() != it.original.strip():
                    prompt: Any = it.conversation[0].content if len(it.conversation) == 1 else [
                        m.to_dict() for m in it.conversation]
                    pair_out.write({"id": rid, "prompt": prompt, "chosen": it.answer, "rejected": it.original,
                                    "provenance": {**prov, "kind": "revision over original",
                                                   "rounds": len(it.rounds)}})
                    counts["pairs"] += 1
            advance(len(batch))
    return counts


class _Nothing:
    """A stand-in writer when an optional output file is not asked for."""

    def __enter__(self) -> _Nothing:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def write(self, row: dict[str, Any]) -> None:
        return None


def _answer_missing(batch: list[_Item], answerer: Any, cfg: GenerationConfig) -> None:
    missing = [it for it in batch if not it.original]
    for it, comp in zip(missing, _generate(answerer, [it.conversation for it in missing], cfg)):
        it.original = comp.text.strip()
        if not it.original:
            it.dropped = "the answering route gave an empty answer"


def _rounds(batch: list[_Item], critic: Any, reviser: Any, cfg: GenerationConfig, rounds: int) -> None:
    for r in range(rounds):
        live = [it for it in batch if it.dropped is None and it.done is None]
        if not live:
            return
        crits = _generate(critic, [[Message("user", CRITIQUE_PROMPT.format(
            conversation=_conversation_text(it.conversation), answer=it.answer))] for it in live], cfg)
        revise = []
        for it, c in zip(live, crits):
            text = c.text.strip()
            if not text:
                _stop(it, r, "the critic gave an empty critique", {"critique": ""})
            elif NO_ISSUES.match(text):
                it.done = "the critic found nothing to fix"
                it.rounds.append({"round": r + 1, "critique": text, "revision": None})
            else:
                revise.append((it, text))
        revs = _generate(reviser, [[Message("user", REVISION_PROMPT.format(
            conversation=_conversation_text(it.conversation), answer=it.answer, critique=crit))]
            for it, crit in revise], cfg)
        for (it, crit), c in zip(revise, revs):
            text = c.text.strip()
            step = {"critique": crit, "revision": text, "finish_reason": c.finish_reason}
            if not text:
                _stop(it, r, "the reviser gave an empty revision", step)
            elif c.finish_reason == "length":
                _stop(it, r, "the revision hit the token limit (cut off)", step)
            elif text == it.answer.strip():
                _stop(it, r, "the revision did not change the answer", step)
            elif any(e in text for e in _ECHOES):
                _stop(it, r, "the revision echoes the reviser's instructions", step)
            elif text == crit.strip():
                _stop(it, r, "the revision copies the critique", step)
            else:
                it.rounds.append({"round": r + 1, **step})
                it.answer = text
    for it in batch:
        if it.dropped is None and it.done is None:
            it.done = f"{rounds} round(s)"


def _stop(it: _Item, r: int, reason: str, step: dict[str, Any]) -> None:
    """A round that produced nothing usable: the record keeps its earlier revisions (and says why it stopped); with
    none, it is dropped with the reason."""
    it.rounds.append({"round": r + 1, **step, "rejected": reason})
    if any("rejected" not in x and x.get("revision") for x in it.rounds):
        it.done = reason
    else:
        it.dropped = reason
