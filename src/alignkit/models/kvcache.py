"""Key/value cache helpers for the transformers backend (imports torch; only loaded by ``hf``).

* :class:`GrowableLayer` is a full-attention cache layer with preallocated, doubling capacity, so a decode
  step appends in place instead of re-concatenating the whole cache (which ``DynamicLayer`` does, copying
  every cached key and value once per generated token).
* :class:`SlotBatch` keeps a continuous batch's rows in slots of preallocated buffers, so rows that finish or
  join copy their own key/values only.
* :class:`PrefixStore` keeps the key/values of one prompt prefix (batch 1) so that requests sharing it --
  in one batch or across calls -- compute it once.

Layers are all full-length, also for sliding-window models: the model's own mask functions apply the
window by position, which keeps left-padded batches exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers.cache_utils import Cache, DynamicLayer

from alignkit.models.base import common_prefix_length


class GrowableLayer(DynamicLayer):
    """A full-attention cache layer ``[batch, heads, seq, dim]`` that grows by doubling its capacity."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._kbuf: torch.Tensor | None = None
        self._vbuf: torch.Tensor | None = None
        self._len = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self.is_initialized = True

    def _reserve(self, key_states: torch.Tensor, value_states: torch.Tensor, need: int) -> None:
        cap = 0 if self._kbuf is None else self._kbuf.shape[-2]
        if need <= cap:
            return
        new_cap = max(need, 2 * cap, 64)
        b, h, _, dk = key_states.shape
        dv = value_states.shape[-1]
        kbuf = key_states.new_empty((b, h, new_cap, dk))
        vbuf = value_states.new_empty((b, h, new_cap, dv))
        if self._len:
            k, v = self._buffers()
            kbuf[:, :, : self._len] = k[:, :, : self._len]
            vbuf[:, :, : self._len] = v[:, :, : self._len]
        self._kbuf, self._vbuf = kbuf, vbuf

    def _buffers(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The key and value buffers (a layer that holds something has both)."""
        if self._kbuf is None or self._vbuf is None:
            raise RuntimeError("cache layer read before anything was stored in it")
        return self._kbuf, self._vbuf

    def _refresh_views(self) -> None:
        k, v = self._buffers()
        self.keys = k[:, :, : self._len]
        self.values = v[:, :, : self._len]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n = key_states.shape[-2]
        self._reserve(key_states, value_states, self._len + n)
        k, v = self._buffers()
        k[:, :, self._len : self._len + n] = key_states
        v[:, :, self._len : self._len + n] = value_states
        self._len += n
        self._refresh_views()
        return self.keys, self.values

    def load(self, keys: torch.Tensor, values: torch.Tensor, extra_capacity: int = 0) -> None:
        """Fill the layer with given key/values (copied), reserving room for ``extra_capacity`` more."""
        self.lazy_initialization(keys, values)
        self._kbuf = self._vbuf = None
        self._len = 0
        self._reserve(keys, values, keys.shape[-2] + extra_capacity)
        k, v = self._buffers()
        k[:, :, : keys.shape[-2]] = keys
        v[:, :, : values.shape[-2]] = values
        self._len = keys.shape[-2]
        self._refresh_views()

    def get_seq_length(self) -> int:
        return self._len

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self._len + query_length, 0

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError("crop takes a negative number of tokens to remove")
        if tokens_to_remove and self._len:
            self._len = max(0, self._len + tokens_to_remove)
            self._refresh_views()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self._kbuf is not None:
            k, v = self._buffers()
            self._kbuf, self._vbuf = k[indices], v[indices]
            self._refresh_views()

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self._kbuf is not None:
            k, v = self._buffers()
            self._kbuf, self._vbuf = k.repeat_interleave(repeats, dim=0), v.repeat_interleave(repeats, dim=0)
            self._refresh_views()

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.batch_select_indices(beam_idx)

    def reset(self) -> None:
        self._kbuf = self._vbuf = None
        self._len = 0
        self.keys = self.values = None
        self.is_initialized = False


class GrowableSlidingLayer(GrowableLayer):
    """A sliding-window layer: keeps every position (so prefixes can be cropped and reused) but hands
    attention only the keys inside the window, with the same mask sizes as transformers'
    ``DynamicSlidingWindowLayer``."""

    is_sliding = True

    def __init__(self, sliding_window: int, **kwargs):
        super().__init__(**kwargs)
        self.sliding_window = sliding_window

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        q = key_states.shape[-2]
        super().update(key_states, value_states)
        visible = min(self._len - q, self.sliding_window - 1) + q
        start = self._len - visible
        k, v = self._buffers()
        return k[:, :, start : self._len], v[:, :, start : self._len]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        kv_offset = max(self._len - self.sliding_window + 1, 0)
        return min(self._len, self.sliding_window - 1) + query_length, kv_offset


#: per model layer, its sliding window (None: full attention); None for the whole list: build lazily
LayerWindows = Sequence[int | None] | None


def layer_windows(config) -> LayerWindows:
    """Sliding windows of a model's layers, from its config (``layer_types`` + ``sliding_window``)."""
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    types, window = getattr(cfg, "layer_types", None), getattr(cfg, "sliding_window", None)
    if not types or not window:
        return None  # full layers everywhere: always exact (the model's masks apply any window)
    return [window if t == "sliding_attention" else None for t in types]


def _layer(window: int | None) -> GrowableLayer:
    return GrowableSlidingLayer(window) if window else GrowableLayer()


def new_cache(windows: LayerWindows = None) -> Cache:
    """An empty cache (layers created on first use when ``windows`` is None)."""
    if windows is None:
        return Cache(layer_class_to_replicate=GrowableLayer)
    return Cache(layers=[_layer(w) for w in windows])


def cache_from_layers(
    kv: Sequence[tuple[torch.Tensor, torch.Tensor]], extra_capacity: int = 0, windows: LayerWindows = None
) -> Cache:
    """A cache holding copies of the given per-layer ``(keys, values)``."""
    layers: list[Any] = []  # Cache(layers=) takes a list of a union of layer types (list is invariant)
    for i, (k, v) in enumerate(kv):
        layer = _layer(windows[i] if windows else None)
        layer.load(k, v, extra_capacity)
        layers.append(layer)
    return Cache(layers=layers)


def cache_layers(cache: Cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The per-layer ``(keys, values)`` views of a cache."""
    return [(layer.keys, layer.values) for layer in cache.layers]  # type: ignore[union-attr,misc]


def merge_left_padded(
    parts: Sequence[Sequence[tuple[torch.Tensor, torch.Tensor]]], extra_capacity: int, windows: LayerWindows = None
) -> tuple[Cache, list[int]]:
    """Stack caches (per-layer ``(keys, values)`` of any batch size each; lengths may differ) into one batch, in
    order, each part right-aligned (left padding). Returns the cache and the pad length of each part. Exact:
    every row stays contiguous and right-aligned, and padding is masked (positions are per row)."""
    lengths = [part[0][0].shape[-2] for part in parts]
    width = max(lengths)
    pads = [width - n for n in lengths]
    sizes = [part[0][0].shape[0] for part in parts]
    layers: list[Any] = []  # Cache(layers=) takes a list of a union of layer types (list is invariant)
    for li in range(len(parts[0])):
        k0, v0 = parts[0][li]
        # uninitialised, then written: the rows, and zeros in the padding only (masked, but must be finite);
        # the spare capacity after ``width`` is written before it is ever read
        kb = k0.new_empty((sum(sizes), k0.shape[1], width + extra_capacity, k0.shape[-1]))
        vb = v0.new_empty((sum(sizes), v0.shape[1], width + extra_capacity, v0.shape[-1]))
        row = 0
        for part, pad, n in zip(parts, pads, sizes):
            k, v = part[li]
            kb[row : row + n, :, :pad], vb[row : row + n, :, :pad] = 0, 0
            kb[row : row + n, :, pad:width], vb[row : row + n, :, pad:width] = k, v
            row += n
        layer = _layer(windows[li] if windows else None)
        layer.lazy_initialization(kb, vb)
        layer._kbuf, layer._vbuf, layer._len = kb, vb, width
        layer._refresh_views()
        layers.append(layer)
    return Cache(layers=layers), pads


class SlotBatch:
    """The running batch's cache kept in place (continuous batching): each row lives in a slot of per-layer buffers
    ``[slots, heads, positions, dim]``, and every layer of ``cache`` sees the first ``rows`` slots and the columns
    from ``off`` on (its buffers are views into these). What a running batch does then copies only what changes:

    * rows finish (:meth:`keep`): the rows after the kept count move into the freed slots -- one row's key/values
      each, not the whole batch -- and leading columns that no kept row uses are dropped by moving ``off``;
    * rows join (:meth:`join`): their key/values are written into free slots, right-aligned with the batch; a
      prompt longer than the batch takes columns before ``off`` where there are some.

    Only when the slots or columns run out is everything copied, into buffers with room to spare (doubling
    slots; columns for the longest answer still to come). Rows change slots, so callers keep each row's slot
    (:meth:`keep` and :meth:`join` say where they went). Exact: every row stays contiguous and right-aligned,
    and the columns a row does not use are masked (and finite: zeros, or the prefill's own padding)."""

    def __init__(self, cache: Cache) -> None:
        self.cache = cache
        self._adopt()

    @property
    def length(self) -> int:
        """The batch's width: the columns from ``off`` on that hold something."""
        return self._layers()[0].get_seq_length()

    def _layers(self) -> list[GrowableLayer]:
        return self.cache.layers  # type: ignore[return-value]

    def _adopt(self) -> None:
        """Take the layers' own buffers as the slots (after a prefill, or after a layer grew its buffers)."""
        layers = self._layers()
        self.phys = [layer._buffers() for layer in layers]
        self.rows, self.off = self.phys[0][0].shape[0], 0

    def _check(self) -> None:
        """A layer that outgrew its view allocated buffers of its own: they become the slots."""
        k = self._layers()[0]._kbuf
        if k is None or k.untyped_storage().data_ptr() != self.phys[0][0].untyped_storage().data_ptr():
            self._adopt()

    def _view(self) -> None:
        for layer, (k, v) in zip(self._layers(), self.phys):
            layer._kbuf, layer._vbuf = k[: self.rows, :, self.off :], v[: self.rows, :, self.off :]
            layer._refresh_views()

    def _move(self, lead: int, slots: int, columns: int) -> None:
        """Copy the rows into new buffers of ``slots`` slots and ``columns`` columns, their columns from ``lead`` on."""
        width = self.length
        phys = []
        for k, v in self.phys:
            nk = k.new_empty((slots, k.shape[1], columns, k.shape[-1]))
            nv = v.new_empty((slots, v.shape[1], columns, v.shape[-1]))
            nk[: self.rows, :, lead : lead + width] = k[: self.rows, :, self.off : self.off + width]
            nv[: self.rows, :, lead : lead + width] = v[: self.rows, :, self.off : self.off + width]
            phys.append((nk, nv))
        self.phys, self.off = phys, lead
        self._view()

    def reserve(self, more: int) -> None:
        """Room for ``more`` columns after the batch's width (copying into new buffers only when it is short)."""
        self._check()
        if self.off + self.length + more > self.phys[0][0].shape[-2]:
            self._move(0, self.phys[0][0].shape[0], self.length + max(more, self.length // 2, 64))

    def keep(self, slots: Sequence[int], start: int) -> list[int]:
        """Keep the rows in ``slots`` (in the caller's new order) and drop the first ``start`` columns; returns the
        slot each kept row is in now (the kept rows fill the first ``len(slots)`` slots)."""
        self._check()
        count = len(slots)
        free = iter(sorted(set(range(count)) - set(slots)))
        where = [s if s < count else next(free) for s in slots]
        moved = [(s, w) for s, w in zip(slots, where) if s != w]
        if moved:
            src = torch.tensor([s for s, _ in moved], device=self.phys[0][0].device)
            dst = torch.tensor([w for _, w in moved], device=src.device)
            a, b = self.off + start, self.off + self.length
            for k, v in self.phys:
                k[dst, :, a:b] = k[src, :, a:b]
                v[dst, :, a:b] = v[src, :, a:b]
        width = self.length - start
        self.rows, self.off = count, self.off + start
        for layer in self._layers():
            layer._len = width
        self._view()
        return where

    def join(self, new: Cache, extra: int) -> tuple[int, int]:
        """Write the rows of ``new`` (a left-padded batch's cache) into the slots after the batch's rows, with room
        for ``extra`` more columns; returns the left padding added to the running rows and to the new rows."""
        self._check()
        parts = cache_layers(new)
        count, new_width = parts[0][0].shape[0], parts[0][0].shape[-2]
        if self.rows == 0:  # nothing running: the new batch is the batch
            self.cache = new
            self._adopt()
            self.reserve(extra)
            return 0, 0
        width = max(self.length, new_width)
        grow = width - self.length
        slots, columns = self.phys[0][0].shape[0], self.phys[0][0].shape[-2]
        if self.rows + count > slots or self.off < grow or self.off - grow + width + extra > columns:
            self._move(grow, max(self.rows + count, 2 * slots), grow + self.length + max(extra, self.length // 2))
        a = self.off - grow  # the batch's first column from now on
        pad = width - new_width
        rows = slice(self.rows, self.rows + count)
        for (k, v), (nk, nv) in zip(self.phys, parts):
            if grow:  # columns the running rows did not have: padding
                k[: self.rows, :, a : self.off], v[: self.rows, :, a : self.off] = 0, 0
            k[rows, :, a : a + pad], v[rows, :, a : a + pad] = 0, 0
            k[rows, :, a + pad : a + width], v[rows, :, a + pad : a + width] = nk, nv
        self.rows, self.off = self.rows + count, a
        for layer in self._layers():
            layer._len = width
        self._view()
        return grow, pad


class PrefixStore:
    """Holds the key/values of a few token prefixes (batch 1 each, least recently used dropped first) for
    reuse by later requests -- e.g. an in-context preamble, and a second one when two methods share a model."""

    def __init__(self, capacity: int = 3) -> None:
        self.capacity = capacity
        self.entries: list[tuple[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]]] = []
        self.hits = 0
        self.misses = 0

    @property
    def ids(self) -> tuple[int, ...]:
        """The most recently used prefix."""
        return self.entries[0][0] if self.entries else ()

    def _best(self, rows: Sequence[Sequence[int]]) -> tuple[int, int]:
        best, at = 0, -1
        for i, (ids, _) in enumerate(self.entries):
            n = min(common_prefix_length(ids, r) for r in rows)
            if n > best:
                best, at = n, i
        return best, at

    def match(self, rows: Sequence[Sequence[int]]) -> int:
        """Length of the longest stored prefix that every row starts with."""
        return self._best(rows)[0]

    def put(self, ids: Sequence[int], kv: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.entries.insert(0, (tuple(ids), [(k.clone(), v.clone()) for k, v in kv]))
        del self.entries[self.capacity :]

    def get_for(self, rows: Sequence[Sequence[int]], length: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Views of the first ``length`` positions of the entry the rows match best (marked most recent)."""
        _, at = self._best(rows)
        entry = self.entries.pop(at)
        self.entries.insert(0, entry)
        return [(k[:, :, :length], v[:, :, :length]) for k, v in entry[1]]

    def get(self, length: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Views of the first ``length`` positions of the most recent entry."""
        return [(k[:, :, :length], v[:, :, :length]) for k, v in self.entries[0][1]]

    def clear(self) -> None:
        self.entries = []

