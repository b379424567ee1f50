"""Alignment methods are models: a wrapper that changes what the wrapped model sees and cleans what it
says, behind the same :class:`~alignkit.models.base.LanguageModel` interface (so every command, the
server, evaluation and analysis take it like any other model)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from alignkit.errors import CapabilityError
from alignkit.models.base import Capabilities, LanguageModel, PositionReducer, configs_for
from alignkit.types import Completion, GenerationConfig, Prompt, StreamEvent, TokenScores


@dataclass(frozen=True)
class Prepared:
    """What a method sends to the wrapped model for one request."""

    prompt: Prompt
    stop: tuple[str, ...] = ()
    meta: dict[str, Any] | None = None


class MethodModel(ABC):
    """Base for wrappers: subclasses implement :meth:`prepare` (and :meth:`clean` if needed)."""

    backend = "method"
    method = "method"
    #: hands the conversation to the wrapped model's chat template as it is, tools and all (only ``template``):
    #: every other node keeps ``capabilities.tool_format`` empty, whatever its model's template renders
    passes_tools = False

    def __init__(self, base: LanguageModel) -> None:
        self.base = base
        self.spec = base.spec
        self.capabilities = base.capabilities

    @property
    def capabilities(self) -> Capabilities:
        return self._capabilities

    @capabilities.setter
    def capabilities(self, caps: Capabilities) -> None:
        self._capabilities = caps if self.passes_tools else replace(caps, tool_format="")

    # -- to implement
    @abstractmethod
    def prepare(self, prompt: Prompt, config: GenerationConfig) -> Prepared:
        """What the wrapped model is sent for one request (its prompt, extra stop strings, meta)."""

    def prepare_batch(self, prompts: Sequence[Prompt], configs: Sequence[GenerationConfig]) -> list[Prepared]:
        """What the wrapped model is sent for a batch; route stages that run another model override this to
        run it once for the whole batch."""
        return [self.prepare(p, c) for p, c in zip(prompts, configs)]

    def finish(self, completion: Completion, prepared: Prepared, text: str) -> Completion:
        """The completion returned to the caller, given the wrapped model's completion and the cleaned text."""
        return replace(completion, text=text, meta=_merge(completion.meta, prepared.meta))

    def clean(self, text: str) -> str:
        return text

    def stream_cleaner(self) -> StreamCleaner:
        return StreamCleaner(self.clean, hold=len, lstrip=False)  # no cleaning: show everything as it comes

    def method_info(self) -> dict[str, Any]:
        return {}

    @property
    def recommended(self) -> dict[str, Any]:
        """Decoding this model recommends (e.g. in-context alignment's repetition penalty): a method that has its
        own says so; a route recommends what the model whose answer it delivers recommends."""
        return dict(getattr(self.base, "recommended", None) or {})

    def children(self) -> list[tuple[str, Any]]:
        """The wrapped model (a node with more children lists them too, the one that writes the answer first)."""
        return [("model", self.base)]

    # -- the LanguageModel interface
    @property
    def context_length(self) -> int | None:
        return self.base.context_length

    def info(self) -> dict[str, Any]:
        return {**self.base.info(), "method": self.method, **self.method_info()}

    def close(self) -> None:
        self.base.close()

    def render(self, prompt: Prompt) -> str:
        prepared = self.prepare_batch([prompt], [GenerationConfig()])[0]
        return self.base.render(prepared.prompt)

    def _prepare_all(self, prompts: Sequence[Prompt], config) -> tuple[list[Prepared], list[GenerationConfig]]:
        configs = configs_for(len(prompts), config)
        prepared = self.prepare_batch(prompts, configs) if prompts else []
        merged = [replace(c, stop=tuple(dict.fromkeys(c.stop + p.stop))) for p, c in zip(prepared, configs)]
        return prepared, merged

    def generate(self, prompts: Sequence[Prompt], config=None, **kwargs: Any) -> list[Completion]:
        prepared, configs = self._prepare_all(prompts, config)
        comps = self.base.generate([p.prompt for p in prepared], configs, **kwargs) if prepared else []
        return [self.finish(c, p, self.clean(c.text)) for c, p in zip(comps, prepared)]

    def stream(self, prompts: Sequence[Prompt], config=None, **kwargs: Any) -> Iterator[StreamEvent]:
        prepared, configs = self._prepare_all(prompts, config)
        cleaners = [self.stream_cleaner() for _ in prepared]
        admit = kwargs.get("admit")
        if admit is not None:  # continuous batching: requests that join are prepared as they join
            def prepare_joining(running: int, room: int | None) -> list[tuple[Prompt, GenerationConfig]]:
                joining = list(admit(running, room))
                if not joining:
                    return []
                more, cfgs = self._prepare_all([p for p, _ in joining], [c for _, c in joining])
                prepared.extend(more)
                cleaners.extend(self.stream_cleaner() for _ in more)
                return [(p.prompt, c) for p, c in zip(more, cfgs)]

            kwargs["admit"] = prepare_joining
        events = self.base.stream([p.prompt for p in prepared], configs, **kwargs)
        yield from cleaned_events(events, cleaners, lambda i, comp, final: self.finish(comp, prepared[i], final))

    def score(
        self,
        prompts: Sequence[Prompt],
        continuations: Sequence[str | Sequence[int]],
        *,
        top_k: int = 0,
        reduce: PositionReducer | None = None,
    ) -> list[TokenScores]:
        prepared = self.prepare_batch(prompts, [GenerationConfig()] * len(prompts)) if prompts else []
        return self.base.score([p.prompt for p in prepared], continuations, top_k=top_k, reduce=reduce)

    def iter_logprobs(self, prompts: Sequence[Prompt], continuations, **kwargs):
        """The wrapped model's full-vocabulary log-probabilities, given what this method shows it."""
        if not hasattr(self.base, "iter_logprobs"):
            raise CapabilityError(f"model {self.spec!r} gives no full-vocabulary log-probabilities")
        prepared = self.prepare_batch(prompts, [GenerationConfig()] * len(prompts)) if prompts else []
        return self.base.iter_logprobs([p.prompt for p in prepared], continuations, **kwargs)

    def iter_lens(self, prompts: Sequence[Prompt], continuations, positions, **kwargs):
        """The wrapped model's logit lens (:class:`~alignkit.models.base.LensChunk`), given what this method
        shows it."""
        if not hasattr(self.base, "iter_lens"):
            raise CapabilityError(f"model {self.spec!r} cannot read its layers (the logit lens needs the "
                                  "transformers backend)")
        prepared = self.prepare_batch(prompts, [GenerationConfig()] * len(prompts)) if prompts else []
        return self.base.iter_lens([p.prompt for p in prepared], continuations, positions, **kwargs)

    def __getattr__(self, name: str):
        # tokenizer-level helpers (encode, token_text, vocab_fingerprint, count_tokens, ...) and the lens' read-out
        # come from the wrapped model
        if name in ("encode", "token_text", "vocab_fingerprint", "count_tokens", "tokenizer", "num_layers",
                    "read_out"):
            return getattr(self.base, name)
        raise AttributeError(name)


def prepared_for_backend(model: Any, prompt: Prompt, config: GenerationConfig | None = None
                         ) -> tuple[Any, Prompt, tuple[str, ...], dict[str, Any] | None]:
    """What the model under a chain of methods sees for one prompt: ``(that model, its prompt, the stop strings the
    methods add, their meta)``. A route's earlier stages run here (a rewriter rewrites first). The chain ends at the
    first node that is not a method (a backend, or DeRa, which prepares each of its sides itself)."""
    config = config or GenerationConfig()
    stops: tuple[str, ...] = ()
    meta: dict[str, Any] | None = None
    while isinstance(model, MethodModel):
        prepared = model.prepare_batch([prompt], [config])[0]
        prompt, stops = prepared.prompt, stops + prepared.stop
        meta = {**(prepared.meta or {}), **(meta or {})} or None
        model = model.base
    return model, prompt, stops, meta


def cleaned_events(events: Iterator[StreamEvent], cleaners: Sequence[StreamCleaner | None],
                   finish: Callable[[int, Completion, str], Completion]) -> Iterator[StreamEvent]:
    """A model's stream with each request's text cleaned as it streams: ``cleaners[i]`` shows only what cleaning can
    no longer change (``None``: the text as it comes); the last event carries ``finish(i, completion, cleaned
    text)``. ``cleaners`` may grow while the stream runs (requests joining a continuous batch). The one streaming
    cleaner of every method, route and DeRa."""
    for ev in events:
        cl = cleaners[ev.index]
        if cl is None:
            comp = finish(ev.index, ev.completion, ev.completion.text) if ev.completion is not None else None
            yield StreamEvent(ev.index, ev.text, ev.finish_reason, comp)
        elif ev.completion is None:
            piece = cl.feed(ev.text)
            if piece:
                yield StreamEvent(ev.index, piece)
        else:
            head = cl.feed(ev.text)
            piece, final = cl.finish()
            yield StreamEvent(ev.index, head + piece, ev.finish_reason, finish(ev.index, ev.completion, final))


class StreamCleaner:
    """Streams cleaned text: shows only the part of the raw output that cleaning can no longer change,
    and at the end the rest of the cleaned text. ``hold(text)`` is how much of ``text`` is safe to show;
    ``lstrip`` must match whether ``clean`` strips leading whitespace."""

    def __init__(self, clean, hold, lstrip: bool = True) -> None:
        self._clean, self._hold, self._lstrip = clean, hold, lstrip
        self.raw, self.emitted = "", 0

    def feed(self, delta: str) -> str:
        self.raw += delta
        text = self.raw.lstrip() if self._lstrip else self.raw
        safe = self._hold(text)
        if safe <= self.emitted:
            return ""
        piece = text[self.emitted : safe]
        self.emitted = safe
        return piece

    def safe_length(self, text: str) -> int:
        """How much of ``text`` this cleaner would show now (the rest could still change)."""
        return int(self._hold(text))

    def finish(self) -> tuple[str, str]:
        final = self._clean(self.raw)
        piece = final[self.emitted :] if len(final) >= self.emitted else ""
        return piece, final


def _merge(backend_meta: dict[str, Any] | None, method_meta: dict[str, Any] | None) -> dict[str, Any] | None:
    """A completion's meta: what the backend reported (e.g. prefix-cache hits) plus what the method adds. The
    stage records of a route (``route``) are concatenated in order: the method's before the wrapped model's."""
    merged = {**(backend_meta or {}), **(method_meta or {})}
    route = list((method_meta or {}).get("route") or []) + list((backend_meta or {}).get("route") or [])
    if route:
        merged["route"] = route
    return merged or None
