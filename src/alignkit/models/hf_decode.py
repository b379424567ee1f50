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

import torch

from alignkit.models.kvcache import (
    PrefixStore,
    SlotBatch,
    cache_from_layers,
    cache_layers,
    common_prefix_length,
    layer_windows,
    merge_left_padded,
    new_cache,
)
from alignkit.models.token_loop import Admit, Row, TokenLoop  # noqa: F401 - Row: re-exported
from alignkit.types import GenerationConfig, StreamEvent


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
    """One model's side of a batched decode: its key/value cache, attention mask and next-token logits.

    The cache is a :class:`SlotBatch`: rows that finish free their slots and rows that join take free ones, so
    a running batch copies only the rows that change (not the whole cache, on every join and finish). A row's
    slot is not its place in the caller's batch: ``slots[j]`` is where the caller's row ``j`` is; ``mask`` and
    ``positions`` are by slot, ``logits`` by the caller's order."""

    room: int | None = None  # rows it can still take (continuous batching): no limit

    def __init__(self, engine: DecodeEngine, prompts: Sequence[Sequence[int]], *, extra: int, reuse: bool = True):
        engine.check_fits(prompts)
        self.engine, self.reuse = engine, reuse
        cache, self.mask, self.logits = engine.prefill(prompts, extra=extra, reuse=reuse)
        self.kv = SlotBatch(cache)
        self.positions = self.mask.sum(-1)  # the next position of every row
        self.slots = list(range(len(prompts)))

    @property
    def cache(self):
        return self.kv.cache

    def step(self, tokens: list[int], keep: list[int]) -> None:
        """Keep the rows ``keep`` (indices into the current batch) and feed each its next token. Columns that
        are padding for every kept row (a finished row's prompt and answer) are freed with it."""
        if len(keep) < len(self.slots):
            slots = [self.slots[j] for j in keep]
            idx = torch.tensor(slots, dtype=torch.long)
            mask = self.mask[idx]
            used = mask.any(0).nonzero()
            start = int(used[0]) if len(used) else mask.shape[1]
            where = torch.tensor(self.kv.keep(slots, start), dtype=torch.long)
            self.mask = torch.empty((len(keep), mask.shape[1] - start), dtype=torch.long)
            self.positions = torch.empty(len(keep), dtype=self.positions.dtype).index_copy_(0, where,
                                                                                         self.positions[idx])
            self.mask.index_copy_(0, where, mask[:, start:])
            self.slots = where.tolist()
        if not keep:  # every row finished: an empty batch, which rows can join
            self.logits = self.logits[:0]
            return
        self.kv.reserve(1)
        self.mask = torch.cat([self.mask, torch.ones((len(keep), 1), dtype=torch.long)], dim=1)
        ids = torch.empty((len(keep), 1), dtype=torch.long)
        ids[self.slots, 0] = torch.tensor(tokens, dtype=torch.long)
        logits = self.engine._forward(ids, self.mask, self.positions.unsqueeze(1), self.kv.cache)
        in_order = self.slots == list(range(len(self.slots)))
        self.logits = logits if in_order else logits[torch.tensor(self.slots, device=logits.device)]
        self.positions = self.positions + 1

    def join(self, prompts: Sequence[Sequence[int]], *, extra: int) -> None:
        """Add rows to the running batch (continuous batching): the new prompts are prefilled (sharing the
        stored prefix when they have it) and their key/values written into free slots of the batch's cache;
        from the next ``step`` on they decode with the others. ``logits`` then holds the new rows' next-token
        logits after the running rows'."""
        engine = self.engine
        engine.check_fits(prompts)
        cache, mask, logits = engine.prefill(prompts, extra=extra, reuse=self.reuse)
        first = len(self.slots)
        pad_old, pad_new = self.kv.join(cache, extra)
        self.mask = torch.cat([_pad_left(self.mask, pad_old), _pad_left(mask, pad_new)]) if first else mask
        self.positions = torch.cat([self.positions, mask.sum(-1)])
        self.slots += range(first, first + len(prompts))
        self.logits = torch.cat([self.logits, logits.to(self.logits.dtype)])


def _pad_left(mask: torch.Tensor, n: int) -> torch.Tensor:
    return torch.cat([mask.new_zeros((mask.shape[0], n)), mask], dim=1) if n else mask
