"""The model interface every backend and every alignment method implements.

One idea runs through alignkit: every alignment method is itself a language model. So everything that
takes a model (generation, the server, evaluation, token-shift analysis, the CLI) takes a
:class:`LanguageModel` and nothing else.

The interface is batch-first:

* ``generate(prompts, config)`` -> one :class:`~alignkit.types.Completion` per prompt;
* ``stream(prompts, config)`` -> :class:`~alignkit.types.StreamEvent` pieces as they are produced;
* ``score(prompts, continuations, top_k=..., reduce=...)`` -> teacher-forced per-token scores. With
  ``reduce`` a caller sees the model's *full-vocabulary* next-token log-distribution at every continuation
  position, a chunk of positions at a time, and keeps only what it needs per position (a rank, a KL, a
  top-k): the model never hands out a whole ``T x V`` tensor for many sequences.

A prompt is raw text (completion) or a list of :class:`~alignkit.types.Message` (chat); a backend renders
chat through the model's own chat template and refuses if it has none.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from alignkit.errors import CapabilityError
from alignkit.types import Completion, GenerationConfig, Prompt, StreamEvent, TokenScores

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: ``reduce(logprobs, targets) -> per-position results``. ``logprobs`` is a float32 tensor ``[n, V]`` of
#: log-softmaxed next-token scores for ``n`` consecutive continuation positions of one sequence; ``targets``
#: is the ``[n]`` tensor of the continuation tokens at those positions. It must return ``n`` results.
PositionReducer = Callable[["torch.Tensor", "torch.Tensor"], Sequence[Any]]


@dataclass(frozen=True)
class LogprobChunk:
    """Full-vocabulary next-token log-probabilities for consecutive continuation positions of one sequence.

    ``logprobs`` is ``[n, V]`` (float32, log-softmaxed), ``targets`` the ``[n]`` continuation tokens at
    positions ``start .. start + n - 1`` of continuation number ``index``; ``last`` marks its final chunk.
    """

    index: int
    start: int
    logprobs: torch.Tensor
    targets: torch.Tensor
    last: bool


@dataclass
class LensChunk:
    """The logit lens at chosen continuation positions of one sequence, at chosen layers.

    ``positions`` are continuation positions (0 = the first continuation token) of continuation number
    ``index``; ``targets`` the ``[n]`` tokens there; ``logprobs`` is ``[n, L, V]``: for each position and each of
    ``layers`` (1-based; the model's last layer is its own next-token distribution), the log-softmax of the
    output head over the final-normed residual stream; ``hidden`` is ``[n, L, d]``, the residual stream itself
    (the last layer's after the final norm, as the head reads it) -- for differences between two models, read
    back with ``read_out``. ``last`` marks the sequence's final chunk.
    """

    index: int
    positions: list[int]
    targets: torch.Tensor
    layers: tuple[int, ...]
    logprobs: torch.Tensor
    hidden: torch.Tensor
    last: bool


@dataclass(frozen=True)
class Capabilities:
    """What a model can do. Callers check what they need when they are built (see :func:`require`)."""

    full_vocab_logits: bool = False
    """Exact next-token distributions over the whole vocabulary (``score(..., reduce=...)``)."""
    topk_logprobs: int = 0
    """The largest top-k of log-probabilities the model can report per position (0: none)."""
    chat_template: bool = False
    """Can take a list of messages (renders them with its own chat template or a chat endpoint)."""
    streaming: bool = False
    """``stream()`` yields output as it is produced (not only at the end)."""
    adapters: bool = False
    """Can load LoRA adapters."""
    prefix_reuse: bool = False
    """Reuses the key/value cache of a prompt prefix shared by many requests."""
    token_ids: bool = False
    """Exposes its tokenizer: token ids in and out, and exact token counts."""
    stepping: bool = False
    """Decodes token by token under a caller's control through the public stepper protocol
    (:class:`SteppingModel`): what DeRa's lockstep mix and other decoding-time methods build on."""

    constraints: bool = False
    """Enforces ``GenerationConfig.constraint`` (structured output: a JSON schema, regex, choice or grammar) in
    its own token loop; a model without it refuses a constrained request (:func:`refuse_constraints`)."""

    continuous_batching: bool = False
    """``stream(..., admit=)`` takes requests into the running batch between decode steps (iteration-level
    scheduling): ``admit(running, room)`` -- the requests running, and how many more the model can hold now
    (``None``: no limit) -- returns at most ``room`` ``(prompt, config)`` pairs that join now, numbered after
    every request before them. The server schedules such a model continuously."""

    tool_format: str = ""
    """The family of tool calls its chat template defines (``hermes``, ``llama3``, ``mistral``:
    alignkit.models.tool_formats), when it renders tools: a :class:`~alignkit.types.ToolChat` prompt is rendered
    with them, and its calls are read in that format. "" for every other model, and for a route that does not hand
    the conversation to that template as it is (urial, rewrite, correct...)."""

    layer_lens: bool = False
    """Reads its residual stream layer by layer through its final norm and output head (the logit lens):
    ``iter_lens`` and ``read_out`` (see :class:`LensChunk`); what ``alignkit shift --layers`` needs."""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


_ALTERNATIVES = {
    "full_vocab_logits": "use a local backend (hf:, a folder or a .gguf file) instead of an API model",
    "chat_template": "use an in-context alignment method (--method urial) or a model with a chat template",
    "token_ids": "use a local backend that exposes its tokenizer",
    "streaming": "use generate() instead",
    "stepping": "use a local backend (hf:, a folder, a .gguf file, llamacpp:), which decodes token by token",
}


def require(model: LanguageModel, *needs: str, purpose: str) -> None:
    """Fail early, with what to do instead, if ``model`` lacks a capability ``purpose`` needs.

    ``needs`` are attribute names of :class:`Capabilities`; ``"topk_logprobs>=K"`` asks for a top-k of K.
    """
    caps = model.capabilities
    for need in needs:
        name, _, k = need.partition(">=")
        have = getattr(caps, name)
        ok = have >= int(k) if k else bool(have)
        if not ok:
            hint = _ALTERNATIVES.get(name, "")
            detail = f" (it offers {have})" if k else ""
            raise CapabilityError(
                f"{purpose} needs {need} but model {model.spec!r} ({model.backend} backend) lacks it{detail}"
                + (f"; {hint}" if hint else "")
            )


@runtime_checkable
class LanguageModel(Protocol):
    """A language model, local or remote, plain or wrapped by an alignment method."""

    spec: str
    """The spec string it was loaded from (recorded in provenance)."""
    backend: str
    """Backend name: ``hf``, ``openai``, ... or a method name for wrappers."""
    capabilities: Capabilities

    @property
    def context_length(self) -> int | None:
        """Maximum number of tokens (prompt + output) the model accepts, if known."""
        ...

    def generate(
        self, prompts: Sequence[Prompt], config: GenerationConfig | Sequence[GenerationConfig] | None = None
    ) -> list[Completion]:
        """Generate one completion per prompt. ``config`` is one config for all or one per prompt."""
        ...

    def stream(
        self, prompts: Sequence[Prompt], config: GenerationConfig | Sequence[GenerationConfig] | None = None
    ) -> Iterator[StreamEvent]:
        """Like :meth:`generate`, yielding text pieces as they are produced; each prompt ends with an event
        that has ``finish_reason`` and the full completion."""
        ...

    def score(
        self,
        prompts: Sequence[Prompt],
        continuations: Sequence[str | Sequence[int]],
        *,
        top_k: int = 0,
        reduce: PositionReducer | None = None,
    ) -> list[TokenScores]:
        """Teacher-forced scores of each continuation (text, or token ids) after its prompt."""
        ...

    def render(self, prompt: Prompt) -> str:
        """The text the model actually sees for ``prompt`` (chat rendered by its template)."""
        ...

    # Backends with ``capabilities.full_vocab_logits`` also offer:
    #   iter_logprobs(prompts, continuations, *, batch_size=None) -> Iterator[LogprobChunk]
    # yielding, in input order, every continuation's chunks; one teacher-forced pass per batch. Two models
    # given the same inputs and batch size yield chunks in the same order, so they can be zipped.

    def info(self) -> dict[str, Any]:
        """Provenance: spec, backend, source, options, package versions."""
        ...

    def close(self) -> None:
        """Release resources (threads, connections, memory)."""
        ...


class Stepper(Protocol):
    """One model's side of a token-by-token decode over a group of rows (prompts).

    ``logits`` is the ``[active rows, V]`` tensor of next-token logits of the rows still running;
    ``step(tokens, keep)`` keeps the rows ``keep`` (indices into the current active rows) and feeds each its
    next token, after which ``logits`` holds the next step's. Several steppers over the same rows, one per
    model, can be driven in lockstep by one token loop.

    For continuous batching a stepper also has ``room`` (rows it can still take; ``None``: no limit) and
    ``join(prompts, extra=)`` (prefill more rows; their logits follow the running rows'). A stepper with a
    ``close()`` method holds resources until it is called (llama.cpp: its rows' sequences)."""

    logits: torch.Tensor

    def step(self, tokens: list[int], keep: list[int]) -> None: ...


@runtime_checkable
class SteppingModel(Protocol):
    """A model that declares ``capabilities.stepping``: the public protocol decoding-time methods use.

    * ``token_loop``: the model's decoding rules (sampling, repetition penalty, stop strings, streaming
      deltas, completions), driven over any steppers: ``token_loop.new_rows(prompt_ids, configs)`` then
      ``token_loop.loop(rows, steppers, combine, should_stop)``;
    * ``stepper(prompt_ids, extra=, reuse=)``: a :class:`Stepper` over a group of token-id prompts (its
      prompts prefilled, ``extra`` tokens of room to grow; ``reuse`` allows the shared-prefix cache);
    * ``max_stepper_rows``: how many prompts one stepper can hold (``None``: any number; llama.cpp: ``n_seq``);
    * ``exclusive()``: a context manager holding the model for the whole lockstep run (no other request
      interleaves with its cache);
    * ``encode_prompt(prompt)``: the token ids the model sees for a prompt.
    """

    token_loop: Any
    max_stepper_rows: int | None

    def stepper(self, prompt_ids: Sequence[Sequence[int]], *, extra: int, reuse: bool = True) -> Stepper: ...

    def exclusive(self) -> Any: ...

    def encode_prompt(self, prompt: Prompt) -> list[int]: ...


# ----------------------------------------------------------------------------- helpers for backends


def refuse_constraints(configs: Sequence[GenerationConfig], backend: str) -> None:
    """Backends that do not run alignkit's token loop cannot enforce structured output: say so, never ignore it."""
    if any(c.constraint is not None for c in configs):
        raise CapabilityError(f"structured output (a constraint on the completion) is enforced in alignkit's token "
                              f"loop on the hf backend; the {backend} backend cannot enforce it")


def configs_for(
    n: int, config: GenerationConfig | Sequence[GenerationConfig] | None
) -> list[GenerationConfig]:
    """One config per prompt, from one shared config, a list, or None (defaults)."""
    if config is None:
        return [GenerationConfig()] * n
    if isinstance(config, GenerationConfig):
        return [config] * n
    configs = list(config)
    if len(configs) != n:
        raise ValueError(f"got {len(configs)} generation configs for {n} prompts")
    return configs


class TokenMemo:
    """The token ids of the last few prompts a backend encoded, by their text: a server counts a request's tokens
    (its context check) and the engine then encodes the very same prompt -- a URIAL prompt is a thousand tokens or
    more -- so each prompt is tokenised once. Thread-safe (requests are counted on the server's threads)."""

    def __init__(self, size: int = 64) -> None:
        self.size = size
        self._ids: OrderedDict[tuple[str, bool], tuple[int, ...]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, text: str, special: bool, encode: Callable[[], Sequence[int]]) -> list[int]:
        """The ids of ``text`` (``special``: whether the tokenizer adds its special tokens), from ``encode()`` the
        first time."""
        key = (text, special)
        with self._lock:
            hit = self._ids.get(key)
            if hit is not None:
                self._ids.move_to_end(key)
                return list(hit)
        ids = tuple(int(t) for t in encode())
        with self._lock:
            self._ids[key] = ids
            while len(self._ids) > self.size:
                self._ids.popitem(last=False)
        return list(ids)


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens two token lists share."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def find_stop(text: str, stops: Sequence[str], start: int = 0) -> tuple[int, str] | None:
    """Earliest occurrence at or after ``start`` of any stop string: ``(index, stop)`` or None."""
    best: tuple[int, str] | None = None
    for s in stops:
        i = text.find(s, start)
        if i != -1 and (best is None or i < best[0]):
            best = (i, s)
    return best


def children(model: Any) -> list[tuple[str, Any]]:
    """A node's named children -- models, routes, scorers -- in order, the child that writes its answer first
    (a method's wrapped model, a corrector, DeRa's aligned side). A backend model has none. Every node (methods,
    routes, DeRa, best-of-N, scorers) answers ``children()``: the one way to look inside a tree."""
    get = getattr(model, "children", None)
    return list(get()) if callable(get) else []


def walk(model: Any, path: str = "", depth: int = 0) -> Iterator[tuple[str, Any]]:
    """Every node of a tree, ``(path, node)`` in pre-order; a path names the slots from the root (``""`` is the
    root, ``"model.corrector"`` a corrector under the root's model)."""
    if depth > 64:
        raise RuntimeError(f"model tree deeper than 64 levels at {path!r} (a cycle?)")
    yield path, model
    for slot, child in children(model):
        yield from walk(child, f"{path}.{slot}" if path else slot, depth + 1)


def backend_models(model: Any) -> list[Any]:
    """The leaves under a model (each once): the backend models and self-contained scorers every method, route,
    DeRa pair and best-of-N scorer rests on."""
    seen: dict[int, Any] = {}
    for _, m in walk(model):
        if not children(m) and hasattr(m, "spec"):
            seen.setdefault(id(m), m)
    return list(seen.values())


def answering_backend(model: Any) -> Any:
    """The backend model that writes a model's answer tokens: down the first child of every node."""
    for _ in range(65):
        kids = children(model)
        if not kids:
            return model
        model = kids[0][1]
    raise RuntimeError("model tree deeper than 64 levels (a cycle?)")


def served_over_api(model: Any) -> bool:
    """Whether any backend under ``model`` is an API client (the openai backend): it scores text prompts only and
    takes ``response_format`` rather than alignkit's constraints."""
    return any(getattr(m, "backend", "") == "openai" for m in backend_models(model))


def stream_safe_length(text: str, stops: Sequence[str]) -> int:
    """How much of ``text`` can be shown while streaming without leaking the start of a stop string or a
    half-decoded character: the text minus its longest suffix that is a proper prefix of a stop string."""
    n = len(text)
    while n > 0 and text[n - 1] == "\ufffd":  # an incomplete multi-byte character
        n -= 1
    hold = 0
    for s in stops:
        for k in range(min(len(s) - 1, n), 0, -1):
            if text[n - k : n] == s[:k]:
                hold = max(hold, k)
                break
    return n - hold


#: rows per yielded chunk of log-probabilities: a few rows of a 262k vocabulary (4 MB) stay in the CPU's L2 cache
#: while the caller's reductions pass over them, where a 64-row block (67 MB) is read from memory on every pass
YIELD_ROWS = 4


def logprob_blocks(logits: torch.Tensor, index: int, start: int, targets: torch.Tensor,
                   total: int) -> Iterator[LogprobChunk]:
    """Log-softmax ``logits`` (``[n, V]``: positions ``start ..`` of continuation ``index``, which has ``total``
    positions) and yield it :data:`YIELD_ROWS` rows at a time. The output head runs over many rows at once (its
    weights are streamed once per call); the per-position work runs on blocks that stay in cache."""
    import torch

    # on a GPU the whole chunk at once: small blocks there cost a launch and a read-back each, not cache misses
    rows = YIELD_ROWS if logits.device.type == "cpu" else logits.shape[0]
    for s in range(0, logits.shape[0], rows):
        e = min(s + rows, logits.shape[0])
        yield LogprobChunk(index, start + s, torch.log_softmax(logits[s:e], dim=-1), targets[s:e],
                           start + e >= total)


def lockstep(*streams: Iterator[Any]) -> Iterator[tuple[Any, ...]]:
    """Zip chunk streams (:class:`LogprobChunk` or :class:`LensChunk`) of several models over the same inputs,
    checking they stay in step, and run every
    stream to its end (a stream left suspended would keep its model's lock until garbage collection)."""
    sentinel: Any = object()
    iters = [iter(s) for s in streams]
    while True:
        items = [next(it, sentinel) for it in iters]
        ended = [x is sentinel for x in items]
        if all(ended):
            return
        if any(ended) or len({(x.index, getattr(x, "start", None), tuple(getattr(x, "positions", ())),
                               len(x.targets)) for x in items}) != 1:
            raise RuntimeError("log-probability streams of the models are out of step")
        yield tuple(items)


def run_stream_to_completions(events: Iterator[StreamEvent], n: int) -> list[Completion]:
    """Collect the final completions of a stream."""
    out: list[Completion | None] = [None] * n
    for ev in events:
        if ev.completion is not None:
            out[ev.index] = ev.completion
    missing = [i for i, c in enumerate(out) if c is None]
    if missing:
        raise RuntimeError(f"stream ended without completions for prompts {missing}")
    return out  # type: ignore[return-value]
