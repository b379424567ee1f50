"""The backend-independent token loop (imports torch; transformers' logits processors only when a request samples
or penalises repetition): per-request sampling, stop strings, streaming deltas and completions, driven over any
backend's steppers -- the transformers engine (:mod:`alignkit.models.hf_decode`) and llama.cpp
(:mod:`alignkit.models.llamacpp`) share it, so both decode by the same rules."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from alignkit.errors import CapabilityError, ContextLengthError
from alignkit.models.base import Stepper, find_stop, stream_safe_length
from alignkit.structured import Guide
from alignkit.types import Completion, GenerationConfig, StreamEvent


@dataclass
class Row:
    index: int
    prompt_ids: list[int]
    config: GenerationConfig
    generator: torch.Generator | None
    processors: list[Any]
    gen: list[int] = field(default_factory=list)
    text: str = ""
    emitted: int = 0
    finish: str | None = None
    stop: str | None = None
    guide: Any = None  # structured output: the row's constraint state (alignkit.structured.Guide)


def _processors(cfg: GenerationConfig) -> list[Any]:
    """transformers' logits processors for a request (imported only when a request needs one)."""
    procs: list[Any] = []
    if cfg.repetition_penalty == 1.0 and cfg.greedy:
        return procs
    from transformers.generation.logits_process import (
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    if cfg.repetition_penalty != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(cfg.repetition_penalty))
    if not cfg.greedy:
        if cfg.temperature != 1.0:
            procs.append(TemperatureLogitsWarper(cfg.temperature))
        if cfg.top_k > 0:
            procs.append(TopKLogitsWarper(cfg.top_k))
        if cfg.top_p < 1.0:
            procs.append(TopPLogitsWarper(cfg.top_p))
    return procs


class TokenLoop:
    """The backend-independent part of decoding: per-request sampling (temperature, top-p, top-k, a
    repetition penalty on the answer's own tokens), stop strings, streaming deltas and the final
    :class:`Completion`. Backends drive it with steppers (objects with ``.logits`` ``[active, V]`` and
    ``.step(tokens, keep)``); the transformers engine batches rows, llama.cpp steps one row at a time."""

    def __init__(self, *, eos_ids: set[int], decode: Callable[[list[int]], str], context_length: int | None) -> None:
        self.eos_ids = eos_ids
        self.decode = decode
        self.context_length = context_length

    #: set by a backend that can enforce structured output: a function giving llguidance's tokenizer (built once,
    #: on first use) and the vocabulary size of the logits
    grammar_tokenizer: Any = None
    grammar_vocab: int = 0

    def _select(self, row: Row, logits: torch.Tensor) -> int:
        if row.guide is not None:  # structured output: only tokens that keep the output valid
            logits = row.guide.mask(logits)
        scores = logits.unsqueeze(0)
        if len(row.processors):
            # by default the repetition penalty looks at the answer so far, not the prompt: a prompt full of
            # examples (in-context alignment) holds the very tokens an answer must be free to use -- its closing
            # fence, the phrasing of a polite refusal; scope "all" counts the prompt too (URIAL's original setting)
            ids = row.gen if row.config.repetition_penalty_scope == "answer" else row.prompt_ids + row.gen
            seen = torch.tensor([ids], dtype=torch.long, device=scores.device)
            for proc in row.processors:
                if ids or type(proc).__name__ != "RepetitionPenaltyLogitsProcessor":
                    scores = proc(seen, scores)
        if row.config.greedy:
            return int(scores.argmax(-1))
        probs = torch.softmax(scores, dim=-1)
        return int(torch.multinomial(probs, 1, generator=row.generator))

    def _advance(self, row: Row, token: int) -> str:
        """Add a token to a row, update its text and finish state; return the text to emit."""
        row.gen.append(token)
        cfg = row.config
        if row.guide is not None and token not in self.eos_ids:
            row.guide.accept(token)
        if token in self.eos_ids:
            row.finish = "stop"
            row.text = self.decode(row.gen[:-1])
        else:
            prev_len = len(row.text)
            row.text = self.decode(row.gen)
            longest = max((len(s) for s in cfg.stop), default=0)
            hit = find_stop(row.text, cfg.stop, max(0, min(prev_len, row.emitted) - longest))
            if hit is not None:
                row.text, row.stop, row.finish = row.text[: hit[0]], hit[1], "stop"
            elif row.guide is not None and row.guide.done:
                row.finish = "stop"  # the constrained output is complete
            elif len(row.gen) >= cfg.max_new_tokens:
                row.finish = "length"
            elif self.context_length and len(row.prompt_ids) + len(row.gen) >= self.context_length:
                row.finish = "length"
        upto = len(row.text) if row.finish else stream_safe_length(row.text, cfg.stop)
        delta = row.text[row.emitted : upto] if upto > row.emitted else ""
        row.emitted = max(row.emitted, upto)
        return delta

    def _event(self, row: Row, delta: str) -> StreamEvent:
        if not row.finish:
            return StreamEvent(row.index, delta)
        comp = Completion(
            text=row.text,
            finish_reason=row.finish,  # type: ignore[arg-type]
            prompt_tokens=len(row.prompt_ids),
            completion_tokens=len(row.gen),
            token_ids=tuple(row.gen),
            stop=row.stop,
        )
        return StreamEvent(row.index, delta, row.finish, comp)  # type: ignore[arg-type]

    def new_rows(self, prompts: Sequence[list[int]], configs: Sequence[GenerationConfig], start: int = 0) -> list[Row]:
        """Rows for the prompts, numbered from ``start`` (the index their events carry)."""
        rows = []
        for i, (ids, cfg) in enumerate(zip(prompts, configs), start):
            gen = None
            if not cfg.greedy:
                gen = torch.Generator(device="cpu")
                gen.manual_seed(cfg.seed if cfg.seed is not None else int(torch.randint(0, 2**62, (1,))))
            row = Row(i, list(ids), cfg, gen, _processors(cfg))
            if cfg.constraint is not None:
                row.guide = self._guide(cfg.constraint)
            rows.append(row)
        return rows

    #: said after a too-long prompt's error: the option that sets the context, if the backend has one
    context_option: str = ""

    def check_fits(self, prompts: Sequence[Sequence[int]]) -> None:
        """Every prompt leaves room for at least one new token in the model's context (a clear error if not)."""
        for i, ids in enumerate(prompts):
            if not ids:
                raise ContextLengthError(f"prompt {i} is empty")
            if self.context_length is not None and len(ids) >= self.context_length:
                raise ContextLengthError(f"prompt {i} has {len(ids)} tokens; the model's context holds "
                                         f"{self.context_length}{self.context_option}")

    def _guide(self, constraint: Any) -> Any:
        if self.grammar_tokenizer is None:
            raise CapabilityError("structured output cannot be enforced by this backend's token loop")
        return Guide(constraint, self.grammar_tokenizer(), self.grammar_vocab)

    @torch.no_grad()
    def loop(
        self,
        rows: list[Row],
        steppers: Sequence[Stepper],
        combine: Callable[[list[torch.Tensor]], torch.Tensor],
        should_stop: Callable[[int], bool] | None = None,
        admit: Admit | None = None,
    ) -> Iterator[StreamEvent]:
        """The token loop: ``combine`` turns the steppers' next-token logits (one ``[active, V]`` tensor each)
        into the logits to sample from; every stepper is then fed the chosen tokens (models in lockstep).

        ``admit(running, room)`` (continuous batching) is asked before every step, with the number of rows
        running and how many more the steppers can hold (``None``: no limit), for requests that join now: a list
        of at most ``room`` ``(row prompt ids, config, [prompt ids for each stepper])``. Their rows are numbered
        after every row before them; each stepper prefills them and merges them into its batch
        (``stepper.join``). The loop ends when no row is left running."""
        active = list(range(len(rows)))
        while True:
            if admit is not None:
                # steppers of models that take rows into a running batch have room and join (see Stepper)
                rooms = [r for r in (getattr(st, "room", None) for st in steppers) if r is not None]
                room = min(rooms) if rooms else None
                joining = admit(len(active), room)
                if room is not None and len(joining) > room:
                    raise RuntimeError(f"admit returned {len(joining)} requests; the steppers had room for {room}")
                if joining:
                    first = rows[-1].index + 1 if rows else 0
                    new = self.new_rows([j[0] for j in joining], [j[1] for j in joining], start=first)
                    extra = max(j[1].max_new_tokens for j in joining)
                    for k, st in enumerate(steppers):
                        st.join([j[2][k] for j in joining], extra=extra)  # type: ignore[attr-defined]
                    active.extend(range(len(rows), len(rows) + len(new)))
                    rows.extend(new)
            if not active:
                break
            logits = combine([st.logits for st in steppers])
            # plain greedy rows (no penalty, no constraint): every row's argmax in one call, read back once
            best = logits.argmax(-1).tolist() if any(_plain(rows[ri]) for ri in active) else None
            tokens, keep = [], []
            for j, ri in enumerate(active):
                row = rows[ri]
                if should_stop is not None and should_stop(row.index):
                    row.finish = "cancelled"
                    continue
                tok = best[j] if best is not None and _plain(row) else self._select(row, logits[j].cpu())
                delta = self._advance(row, tok)
                if delta or row.finish:
                    yield self._event(row, delta)
                if not row.finish:
                    keep.append(j)
                    tokens.append(tok)
            active = [active[j] for j in keep]
            if not keep and admit is None:
                break
            for st in steppers:  # (with no row left, they drop every row; requests may still join)
                st.step(tokens, keep)


def _plain(row: Row) -> bool:
    """A row whose next token is its logits' argmax (greedy, nothing that changes the logits)."""
    return row.config.greedy and row.guide is None and not row.processors


def queued_admit(pending: list[Any], admit: Callable[[int, int | None], Sequence[tuple[Any, GenerationConfig]]] | None,
                 convert: Callable[[Any, GenerationConfig], Any]) -> Admit | None:
    """The ``admit`` of a loop whose steppers could not take every prompt at the start: the waiting rows
    (``pending``, already in the loop's ``(row ids, config, [ids per stepper])`` form, in order, so they keep
    their numbers) join first as room frees; once they are all in, requests from the caller's ``admit`` join,
    each turned into that form by ``convert(prompt, config)``. None when there is nothing to admit."""
    if not pending and admit is None:
        return None

    def joining(running: int, room: int | None) -> list[Any]:
        limit = math.inf if room is None else room
        out: list[Any] = []
        while pending and len(out) < limit:
            out.append(pending.pop(0))
        if admit is not None and not pending and len(out) < limit:
            out += [convert(p, c) for p, c in admit(running + len(out), None if room is None else room - len(out))]
        return out

    return joining


#: continuous batching: ``admit(running rows, room)`` -> the requests that join now (at most ``room`` unless it is
#: None), as ``(row prompt ids, config, [prompt ids for each stepper])``
Admit = Callable[[int, "int | None"], Sequence[tuple[list[int], GenerationConfig, Sequence[Sequence[int]]]]]
