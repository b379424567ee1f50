"""Batched decoding for the transformers backend: prefill with prefix reuse, then a step loop with
per-request sampling, stop strings and streaming (imports torch; used by :mod:`alignkit.models.hf`).

Prefill has two paths that give the same tokens:

* **plain**: the prompts, left-padded into one batch, in one forward pass;
* **prefix reuse**: when the prompts share a prefix of at least ``min_prefix`` tokens (a constant in-context
  preamble), its key/values are computed once -- or taken from the :class:`PrefixStore` filled by an
  earlier call -- and each prompt's remaining tokens are run on a copy; the rows are then merged into one
  left-padded batch for decoding.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers.generation.logits_process import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from alignkit.models.base import find_stop, stream_safe_length
from alignkit.models.kvcache import (
    PrefixStore,
    cache_from_layers,
    cache_layers,
    common_prefix_length,
    join_left_padded,
    layer_windows,
    merge_left_padded,
    new_cache,
)
from alignkit.types import Completion, GenerationConfig, StreamEvent


@dataclass
class _Row:
    index: int
    prompt_ids: list[int]
    config: GenerationConfig
    generator: torch.Generator | None
    processors: LogitsProcessorList
    gen: list[int] = field(default_factory=list)
    text: str = ""
    emitted: int = 0
    finish: str | None = None
    stop: str | None = None
    guide: Any = None  # structured output: the row's constraint state (alignkit.structured.Guide)


def _processors(cfg: GenerationConfig) -> LogitsProcessorList:
    procs = LogitsProcessorList()
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

    def _select(self, row: _Row, logits: torch.Tensor) -> int:
        if row.guide is not None:  # structured output: only tokens that keep the output valid
            logits = row.guide.mask(logits)
        scores = logits.unsqueeze(0)
        if len(row.processors):
            # the repetition penalty looks at the answer so far, not the prompt: a prompt full of examples
            # (in-context alignment) holds the very tokens an answer must be free to use -- its closing
            # fence, the phrasing of a polite refusal
            seen = torch.tensor([row.gen], dtype=torch.long, device=scores.device)
            for proc in row.processors:
                if row.gen or not isinstance(proc, RepetitionPenaltyLogitsProcessor):
                    scores = proc(seen, scores)
        if row.config.greedy:
            return int(scores.argmax(-1))
        probs = torch.softmax(scores, dim=-1)
        return int(torch.multinomial(probs, 1, generator=row.generator))

    def _advance(self, row: _Row, token: int) -> str:
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

    def _event(self, row: _Row, delta: str) -> StreamEvent:
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

    def new_rows(self, prompts: Sequence[list[int]], configs: Sequence[GenerationConfig], start: int = 0) -> list[_Row]:
        """Rows for the prompts, numbered from ``start`` (the index their events carry)."""
        rows = []
        for i, (ids, cfg) in enumerate(zip(prompts, configs), start):
            gen = None
            if not cfg.greedy:
                gen = torch.Generator(device="cpu")
                gen.manual_seed(cfg.seed if cfg.seed is not None else int(torch.randint(0, 2**62, (1,))))
            row = _Row(i, list(ids), cfg, gen, _processors(cfg))
            if cfg.constraint is not None:
                row.guide = self._guide(cfg.constraint)
            rows.append(row)
        return rows

    def _guide(self, constraint: Any) -> Any:
        from alignkit.errors import CapabilityError
        from alignkit.structured import Guide

        if self.grammar_tokenizer is None:
            raise CapabilityError("structured output cannot be enforced by this backend's token loop")
        return Guide(constraint, self.grammar_tokenizer(), self.grammar_vocab)

    @torch.no_grad()
    def loop(
        self,
        rows: list[_Row],
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
                rooms = [st.room for st in steppers if st.room is not None]
                room = min(rooms) if rooms else None
                joining = admit(len(active), room)
                if room is not None and len(joining) > room:
                    raise RuntimeError(f"admit returned {len(joining)} requests; the steppers had room for {room}")
                if joining:
                    first = rows[-1].index + 1 if rows else 0
                    new = self.new_rows([j[0] for j in joining], [j[1] for j in joining], start=first)
                    extra = max(j[1].max_new_tokens for j in joining)
                    for k, st in enumerate(steppers):
                        st.join([j[2][k] for j in joining], extra=extra)
                    active.extend(range(len(rows), len(rows) + len(new)))
                    rows.extend(new)
            if not active:
                break
            logits = combine([st.logits for st in steppers])
            tokens, keep = [], []
            for j, ri in enumerate(active):
                row = rows[ri]
                if should_stop is not None and should_stop(row.index):
                    row.finish = "cancelled"
                    continue
                tok = self._select(row, logits[j].cpu())
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


#: continuous batching: ``admit(running rows, room)`` -> the requests that join now (at most ``room`` unless it is
#: None), as ``(row prompt ids, config, [prompt ids for each stepper])``
Admit = Callable[[int, "int | None"], Sequence[tuple[list[int], GenerationConfig, Sequence[Sequence[int]]]]]


class DecodeEngine(TokenLoop):
    """Runs batches of token-id prompts through a causal LM."""

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        eos_ids: set[int],
        pad_id: int,
        decode: Callable[[list[int]], str],
        context_length: int | None,
        decoder: torch.nn.Module,
        head: Callable[[torch.Tensor], torch.Tensor],
        min_prefix: int = 32,
    ) -> None:
        super().__init__(eos_ids=eos_ids, decode=decode, context_length=context_length)
        self.model = model
        self.decoder = decoder
        self.head = head
        self.pad_id = pad_id
        self.min_prefix = min_prefix
        self.store = PrefixStore()
        self.activate: Callable[[], None] | None = None
        """Called before every forward pass (weights shared by several adapter views: switch this one's on)."""
        self.windows = layer_windows(model.config)
        self.device = next(model.parameters()).device

    # ------------------------------------------------------------------ prefill
    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, cache):
        if self.activate is not None:
            self.activate()
        out = self.model(
            input_ids=ids.to(self.device),
            attention_mask=mask.to(self.device),
            position_ids=pos.to(self.device),
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        logits = out.logits[:, -1, :]
        return logits if logits.dtype == torch.float64 else logits.float()

    def _plain_prefill(self, rows: Sequence[Sequence[int]], extra: int):
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r) :] = 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = new_cache(self.windows)
        logits = self._forward(ids, mask, pos, cache)
        return cache, mask, logits

    def _prefix_kv(self, rows: Sequence[Sequence[int]], common: int):
        """Key/values of the first ``common`` tokens, from the store when it has them."""
        have = min(self.store.match(rows), common)
        if have >= self.min_prefix:
            self.store.hits += 1
            return have, self.store.get_for(rows, have)
        self.store.misses += 1
        if self.activate is not None:
            self.activate()
        ids = torch.tensor([list(rows[0][:common])], dtype=torch.long)
        cache = new_cache(self.windows)
        with torch.no_grad():  # the decoder trunk only: the prefix needs key/values, not logits
            self.decoder(input_ids=ids.to(self.device), attention_mask=torch.ones_like(ids).to(self.device),
                         position_ids=torch.arange(common).unsqueeze(0).to(self.device), past_key_values=cache,
                         use_cache=True)
        self.store.put(rows[0][:common], cache_layers(cache))
        return common, self.store.get(common)

    def _reuse_prefill(self, rows: Sequence[Sequence[int]], common: int, extra: int):
        """Suffixes of all rows in one batch on top of the shared prefix, right-padded (exact: under a causal
        mask real tokens never see the pads after them); the cache is then re-aligned to left padding, which
        keeps decoding exact for sliding-window layers too."""
        plen, kv = self._prefix_kv(rows, common)
        lens = [len(r) - plen for r in rows]
        smax, b = max(lens), len(rows)
        ids = torch.full((b, smax), self.pad_id, dtype=torch.long)
        mask = torch.zeros((b, plen + smax), dtype=torch.long)
        mask[:, :plen] = 1
        for i, r in enumerate(rows):
            ids[i, : lens[i]] = torch.tensor(list(r[plen:]), dtype=torch.long)
            mask[i, plen : plen + lens[i]] = 1
        pos = torch.arange(plen, plen + smax).unsqueeze(0).expand(b, -1)
        cache = cache_from_layers([(k.expand(b, -1, -1, -1), v.expand(b, -1, -1, -1)) for k, v in kv], smax, self.windows)
        if self.activate is not None:
            self.activate()
        hidden = self.decoder(
            input_ids=ids.to(self.device),
            attention_mask=mask.to(self.device),
            position_ids=pos.to(self.device),
            past_key_values=cache,
            use_cache=True,
        ).last_hidden_state
        last = torch.tensor([n - 1 for n in lens], device=hidden.device)
        logits = self.head(hidden[torch.arange(b, device=hidden.device), last])  # only the rows' last tokens
        layers = cache_layers(cache)
        row_kv = [[(k[i : i + 1, :, : plen + lens[i]], v[i : i + 1, :, : plen + lens[i]]) for k, v in layers]
                  for i in range(b)]
        cache, pads = merge_left_padded(row_kv, extra_capacity=extra, windows=self.windows)
        mask = torch.ones((b, plen + smax), dtype=torch.long)
        for i, p in enumerate(pads):
            mask[i, :p] = 0
        return cache, mask, logits

    def prefill(self, rows: Sequence[Sequence[int]], extra: int, reuse: bool = True):
        """Run the prompts; returns (cache, attention mask, last-position logits)."""
        common = len(rows[0]) if len(rows) == 1 else min(common_prefix_length(rows[0], r) for r in rows[1:])
        common = min(common, min(len(r) for r in rows) - 1)  # every row keeps >= 1 token of its own
        stored = min(self.store.match(rows), common)
        if reuse and (common >= self.min_prefix or stored >= self.min_prefix):
            return self._reuse_prefill(rows, common, extra)
        return self._plain_prefill(rows, extra)

    # ------------------------------------------------------------------ decoding
    def _check_fits(self, rows: Sequence[Sequence[int]]) -> None:
        if self.context_length is None:
            return
        for i, r in enumerate(rows):
            if len(r) >= self.context_length:
                from alignkit.errors import ContextLengthError

                raise ContextLengthError(
                    f"prompt {i} has {len(r)} tokens; the model's context holds {self.context_length}"
                )

    @torch.no_grad()
    def run(
        self,
        prompts: Sequence[list[int]],
        configs: Sequence[GenerationConfig],
        reuse: bool = True,
        should_stop: Callable[[int], bool] | None = None,
        admit: Admit | None = None,
    ) -> Iterator[StreamEvent]:
        """Generate for every prompt, yielding text pieces as they appear and a final event per prompt.
        ``should_stop(i)`` is asked before each step: a prompt it answers True for is dropped from the batch
        at once, without a final event (its client went away). ``admit``: see :meth:`TokenLoop.loop`."""
        stepper = Stepper(self, prompts, extra=max(c.max_new_tokens for c in configs), reuse=reuse)
        yield from self.loop(self.new_rows(prompts, configs), [stepper], lambda logits: logits[0], should_stop, admit)

class Stepper:
    """One model's side of a batched decode: its key/value cache, attention mask and next-token logits."""

    room: int | None = None  # rows it can still take (continuous batching): no limit

    def __init__(self, engine: DecodeEngine, prompts: Sequence[Sequence[int]], *, extra: int, reuse: bool = True):
        engine._check_fits(prompts)
        self.engine, self.reuse = engine, reuse
        self.cache, self.mask, self.logits = engine.prefill(prompts, extra=extra, reuse=reuse)
        self.positions = self.mask.sum(-1)  # the next position of every row

    def step(self, tokens: list[int], keep: list[int]) -> None:
        """Keep the rows ``keep`` (indices into the current batch) and feed each its next token. Columns that
        are padding for every kept row (a finished row's prompt and answer) are freed with it."""
        if not keep:  # every row finished: an empty batch, which rows can join
            self.mask, self.positions = self.mask[:0, :0], self.positions[:0]
            self.logits = self.logits[:0]
            for layer in self.cache.layers:
                layer.select(torch.zeros(0, dtype=torch.long, device=self.engine.device), layer.get_seq_length())
            return
        if len(keep) < self.mask.shape[0]:
            idx = torch.tensor(keep, dtype=torch.long)
            mask = self.mask[idx]
            used = mask.any(0).nonzero()
            start = int(used[0]) if len(used) else 0
            for layer in self.cache.layers:
                layer.select(idx.to(self.engine.device), start)
            self.mask, self.positions = mask[:, start:], self.positions[idx]
        self.mask = torch.cat([self.mask, torch.ones((len(keep), 1), dtype=torch.long)], dim=1)
        ids = torch.tensor(tokens, dtype=torch.long).unsqueeze(1)
        self.logits = self.engine._forward(ids, self.mask, self.positions.unsqueeze(1), self.cache)
        self.positions = self.positions + 1

    def join(self, prompts: Sequence[Sequence[int]], *, extra: int) -> None:
        """Add rows to the running batch (continuous batching): the new prompts are prefilled (sharing the
        stored prefix when they have it) and their key/values merged into the batch's cache; from the next
        ``step`` on they decode with the others. ``logits`` then holds the new rows' next-token logits after
        the running rows'."""
        engine = self.engine
        engine._check_fits(prompts)
        cache, mask, logits = engine.prefill(prompts, extra=extra, reuse=self.reuse)
        self.cache, pad_old, pad_new = join_left_padded(self.cache, cache, extra, engine.windows)
        self.mask = torch.cat([_pad_left(self.mask, pad_old), _pad_left(mask, pad_new)])
        self.positions = torch.cat([self.positions, mask.sum(-1)])
        self.logits = torch.cat([self.logits, logits.to(self.logits.dtype)])


def _pad_left(mask: torch.Tensor, n: int) -> torch.Tensor:
    return torch.cat([mask.new_zeros((mask.shape[0], n)), mask], dim=1) if n else mask
