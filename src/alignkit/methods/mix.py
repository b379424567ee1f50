"""Logit arithmetic at decoding time: several models step in lockstep and the next-token logits are a weighted sum
of theirs, ``sum_i w_i * h_i``, before the usual sampling (temperature, top-p, top-k, repetition penalty, stop
strings). DeRa (``lam * aligned + (1 - lam) * ref``) and proxy-tuning (``base + alpha * (expert - antiexpert)``) are
this one kernel with their own sides and weights.

Each side is any model or route on one stepping backend (the same tokenizer and vocabulary); each sees its own
prompt -- a base model raw, its aligned sibling through its chat template or in context -- prepared through its own
method chain, with its own key/value cache, batched, its prompt prefix prefilled once and reused across calls. The
first side *leads*: its method cleans the answer, its chat capability is the mix's, its tokenizer and decoding rules
serve the mix. A mix is itself a model: it generates, streams (continuous batching when every side can) and scores
the mixed distribution, so every command takes it.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import replace
from typing import Any

import torch

from alignkit.errors import CapabilityError, InputError
from alignkit.methods.base import MethodModel, Prepared, cleaned_events, prepared_for_backend
from alignkit.models.base import (
    Capabilities,
    LogprobChunk,
    PositionReducer,
    SteppingModel,
    answering_backend,
    configs_for,
    lockstep,
    run_stream_to_completions,
)
from alignkit.models.token_loop import queued_admit
from alignkit.types import Completion, GenerationConfig, Prompt, StreamEvent, TokenScores


def stepping_backend(model: Any, role: str, what: str) -> Any:
    """The model under a (possibly wrapped) side, checked for the public stepper protocol, or a clear error."""
    inner = answering_backend(model)  # under a method, or a route of several (e.g. a rewriter in front of urial)
    m = model
    while m is not inner:  # each side's prompt is prepared down the method chain, so every node on it must be one
        if not isinstance(m, MethodModel) or type(m).generate is not MethodModel.generate:
            # a node that is no method, or one that chooses among answers (best-of-n, a search): its answer is
            # not one model's tokens stepped from a prepared prompt
            raise CapabilityError(f"{what}'s {role} side {model.spec!r} holds a {getattr(m, 'method', m.backend)} "
                                  f"node, which does not prepare a prompt for one model to step; put it around "
                                  f"{what} instead")
        m = m.base
    caps = inner.capabilities
    if not (caps.stepping and caps.full_vocab_logits and isinstance(inner, SteppingModel)):
        raise CapabilityError(
            f"{what} steps its models token by token with their full logits; the {role} model {model.spec!r} "
            f"({inner.backend} backend) cannot do that -- use a local model (hf:, a folder, .gguf, llamacpp:)"
        )
    return inner


def _token_count(model: Any) -> int:
    """How many real tokens the model's tokenizer has (its output layer may be wider: padding rows)."""
    tok = getattr(model, "tokenizer", None)
    try:
        return len(tok) if tok is not None else model.vocab_size
    except TypeError:  # a tokenizer without a length (llama.cpp's): its vocabulary is the output layer
        return model.vocab_size


class LogitMix:
    """``sum_i w_i * logits_i`` over named sides, decoded in lockstep; the first side leads."""

    backend = "mix"
    method = "mix"
    #: how errors name this mix
    what = "the logit mix"
    #: how many models it steps at least (reward-guided decoding steps one)
    min_sides = 2
    #: how many row-following steppers :meth:`_guided` adds after the sides' (they get each row's user prompt)
    trackers = 0
    #: whether the scored distribution (``iter_logprobs``) is the one decoding samples from (ARGS's is not)
    scores_its_decoding = True

    def __init__(self, sides: Sequence[tuple[str, Any, float]]) -> None:
        if len(sides) < self.min_sides:
            raise InputError(f"{self.what} needs at least {'two models' if self.min_sides == 2 else 'one model'}")
        for role, _, w in sides:
            if not isinstance(w, (int, float)) or not math.isfinite(w):
                raise InputError(f"{self.what}: the weight of the {role} side must be a finite number, got {w!r}")
        self.roles = [r for r, _, _ in sides]
        self.models = [m for _, m, _ in sides]
        self.weights = [float(w) for _, _, w in sides]
        self.inners = [stepping_backend(m, r, self.what) for r, m, _ in sides]
        lead, lead_inner = self.models[0], self.inners[0]
        for role, m, inner in zip(self.roles[1:], self.models[1:], self.inners[1:]):
            if inner.backend != lead_inner.backend:
                raise InputError(f"{self.what} needs all its models on one backend (their logits must be comparable); "
                                 f"the {self.roles[0]} model runs on {lead_inner.backend}, the {role} on {inner.backend}")
            fa, fr = lead_inner.vocab_fingerprint(), inner.vocab_fingerprint()
            if fa != fr:
                raise InputError(
                    f"{self.what} mixes its models' logits token by token, so they must share one tokenizer and "
                    f"vocabulary; {lead.spec!r} (vocabulary {fa}, {lead_inner.vocab_size} logits) and {m.spec!r} "
                    f"({fr}, {inner.vocab_size}) differ")
        # One tokenizer, but output layers of different widths: the rows past the tokenizer's tokens are padding
        # (a tuned model's embedding matrix rounded up, or resized): they are cut to the narrowest side, as
        # proxy-tuning's reference code does, and the lead's cut rows can never be chosen.
        self.width = min(inner.vocab_size for inner in self.inners)
        tokens = _token_count(lead_inner)
        if self.width != max(inner.vocab_size for inner in self.inners) and self.width < tokens:
            narrow = min(zip(self.inners, self.models), key=lambda x: x[0].vocab_size)[1]
            raise InputError(f"{self.what}: {narrow.spec!r} has {self.width} logits for a tokenizer of {tokens} tokens, "
                             "so some tokens have no logit on that side; the models cannot be mixed")
        self.lead_width = lead_inner.vocab_size
        self.spec = lead.spec
        self.capabilities = Capabilities(
            full_vocab_logits=True, topk_logprobs=lead_inner.vocab_size, chat_template=lead.capabilities.chat_template,
            streaming=True, adapters=True, prefix_reuse=True, token_ids=True, stepping=False, constraints=True,
            # requests can join the running lockstep group when every side takes rows into a running batch
            continuous_batching=all(m.capabilities.continuous_batching for m in self.inners))
        self.recommended = getattr(lead, "recommended", {})
        # tokenizer-level helpers come from the lead side (all sides share the vocabulary)
        self.tokenizer = lead_inner.tokenizer
        self.encode, self.token_text = lead_inner.encode, lead_inner.token_text
        self.vocab_fingerprint = lead_inner.vocab_fingerprint

    # ------------------------------------------------------------------ the numbers that set the weights
    def knobs(self) -> dict[str, float]:
        """The numbers that set this mix's weights, by name (DeRa's ``lam``, proxy-tuning's ``alpha``; a general
        mix: each side's weight under its role)."""
        return dict(zip(self.roles, self.weights))

    def _set_knobs(self, knobs: dict[str, float]) -> None:
        self.weights = [knobs[r] for r in self.roles]

    def with_knobs(self, values: Mapping[str, float]) -> LogitMix:
        """The same mix over the same loaded side models with some knobs changed (a per-request weight, e.g. the
        comparison page's slider); an unknown name or a value that is not a finite number is refused."""
        known = self.knobs()
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise InputError(f"{self.what} has no weight {', '.join(map(repr, unknown))}; its weights are "
                             f"{', '.join(known)}")
        for k, v in values.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise InputError(f"{self.what}: {k} must be a finite number, got {v!r}")
        new = copy.copy(self)
        new._set_knobs({**known, **{k: float(v) for k, v in values.items()}})
        return new

    @property
    def context_length(self) -> int | None:
        limits = [m.context_length for m in self.inners if m.context_length]
        return min(limits) if limits else None

    def children(self) -> list[tuple[str, Any]]:
        return list(zip(self.roles, self.models))

    def info(self) -> dict[str, Any]:
        return {**self.models[0].info(), "method": self.method,
                "sides": {r: {"weight": w, "model": m.info()} for r, m, w in zip(self.roles, self.models, self.weights)}}

    def close(self) -> None:
        for m in self.models:
            m.close()

    # ------------------------------------------------------------------ what each side sees
    def _side(self, model: Any, prompt: Prompt, config: GenerationConfig):
        """Token ids one side's model sees for ``prompt``, its stop strings and meta, through every layer of
        method wrapping (a route's earlier stages run here: a rewriter rewrites the prompt first)."""
        backend, prompt, stops, meta = prepared_for_backend(model, prompt, config)
        return backend.encode_prompt(prompt), stops, meta

    def prepare(self, prompt: Prompt, config: GenerationConfig) -> Prepared:
        sides = [self._side(m, prompt, config) for m in self.models]
        stops = tuple(dict.fromkeys(s for _, st, _ in sides for s in st))
        return Prepared(prompt, stops, sides[0][2])

    def render(self, prompt: Prompt) -> str:
        return self.models[0].render(prompt)

    def count_tokens(self, prompt: Prompt) -> int:
        cfg = GenerationConfig()
        return max(len(self._side(m, prompt, cfg)[0]) for m in self.models)

    def clean(self, text: str) -> str:
        """The lead side's cleaning (what a route around the mix applies to a text of its own)."""
        return self.models[0].clean(text) if isinstance(self.models[0], MethodModel) else text

    def combine(self, ls: Sequence[torch.Tensor]) -> torch.Tensor:
        """The mixed logits (or log-probabilities) of the sides, in side order; where the sides' output layers
        differ in width, over the shared rows (the lead's padding rows past them get -inf)."""
        w0 = self.width
        out = self.weights[0] * ls[0][..., :w0]
        for w, x in zip(self.weights[1:], ls[1:]):
            out = out + w * x[..., :w0]
        if self.lead_width > w0:
            out = torch.nn.functional.pad(out, (0, self.lead_width - w0), value=float("-inf"))
        return out

    # ------------------------------------------------------------------ generation
    def _guided(self, prompts: list[Prompt]) -> tuple[Any, list[Any]]:
        """The combine function of one run and its row-following steppers (``trackers`` of them, after the
        sides'; each follows the rows' user prompts and chosen tokens and is passed to ``combine`` last). A plain
        mix: its weighted sum, none."""
        return self.combine, []

    @torch.no_grad()
    def stream(self, prompts: Sequence[Prompt], config=None, *, should_stop=None, reuse_prefix: bool = True,
               admit=None) -> Iterator[StreamEvent]:
        """All sides in lockstep; ``admit`` (continuous batching, when ``capabilities.continuous_batching``):
        joining requests are prepared for every side and join every model's batch."""
        configs = configs_for(len(prompts), config)
        if not prompts:
            return
        if admit is not None and not self.capabilities.continuous_batching:
            raise CapabilityError(f"{self.what} takes requests into a running batch only when all its models can")
        side_ids: list[list[list[int]]] = [[] for _ in self.models]
        row_ids: list[list[int]] = []  # a row's prompt: the longest side's, so the context limit holds for every model
        merged: list[GenerationConfig] = []
        metas: list[Any] = []
        lead = self.models[0]
        cleaner = lead.stream_cleaner if isinstance(lead, MethodModel) else None
        cleaners: list[Any] = []

        def add(p: Prompt, c: GenerationConfig) -> tuple[list[int], GenerationConfig, list[list[int]]]:
            sides = [self._side(m, p, c) for m in self.models]
            for k, (ids, _, _) in enumerate(sides):
                side_ids[k].append(ids)
            merged.append(replace(c, stop=tuple(dict.fromkeys(c.stop + tuple(s for _, st, _ in sides for s in st)))))
            metas.append(sides[0][2])
            cleaners.append(cleaner() if cleaner else None)
            row_ids.append(max((ids for ids, _, _ in sides), key=len))
            return row_ids[-1], merged[-1], [ids for ids, _, _ in sides] + [p] * self.trackers

        for p, c in zip(prompts, configs):
            add(p, c)
        loop = self.inners[0].token_loop  # the lead side's decoding rules (all share the vocabulary)
        extra = max(c.max_new_tokens for c in configs)
        width = min(w for w in [m.max_stepper_rows for m in self.inners] + [len(prompts)] if w is not None)
        # rows beyond what the steppers hold join as others finish, then the caller's requests
        loop_admit = queued_admit([(row_ids[i], merged[i], [side_ids[k][i] for k in range(len(self.models))]
                                    + [prompts[i]] * self.trackers) for i in range(width, len(prompts))], admit, add)
        with ExitStack() as held:
            for inner in self.inners:  # each model held for the whole run (no other request touches its cache)
                held.enter_context(inner.exclusive())
            steppers: list[Any] = []
            try:
                for k, inner in enumerate(self.inners):
                    steppers.append(inner.stepper(side_ids[k][:width], extra=extra, reuse=reuse_prefix))
                combine, followers = self._guided(list(prompts[:width]))
                steppers += followers
                rows = loop.new_rows(row_ids[:width], merged[:width])
                events = loop.loop(rows, steppers, combine, should_stop, loop_admit)
                yield from cleaned_events(events, cleaners,
                                          lambda i, comp, final: replace(comp, text=final, meta=metas[i]))
            finally:
                for st in steppers:
                    close = getattr(st, "close", None)
                    if close is not None:
                        close()

    def generate(self, prompts: Sequence[Prompt], config=None, *, reuse_prefix: bool = True) -> list[Completion]:
        if not prompts:
            return []
        return run_stream_to_completions(self.stream(prompts, config, reuse_prefix=reuse_prefix), len(prompts))

    # ------------------------------------------------------------------ scoring (the mixed distribution)
    def _side_logprobs(self, prompts: Sequence[Prompt], ids: list[list[int]], bs: int):
        return lockstep(*(m.iter_logprobs(prompts, ids, batch_size=bs) for m in self.models))

    @torch.no_grad()
    def iter_logprobs(self, prompts: Sequence[Prompt], continuations, *, batch_size: int | None = None
                      ) -> Iterator[LogprobChunk]:
        bs = batch_size or self.inners[0].score_batch_size
        ids = [self.encode(c) if isinstance(c, str) else list(c) for c in continuations]
        for chunks in self._side_logprobs(prompts, ids, bs):
            first = chunks[0]
            mixed = torch.log_softmax(self.combine([c.logprobs for c in chunks]), dim=-1)
            yield LogprobChunk(first.index, first.start, mixed, first.targets, first.last)

    @torch.no_grad()
    def kl_to(self, other: LogitMix, prompts: Sequence[Prompt], continuations, *, batch_size: int | None = None
              ) -> list[tuple[float, int]]:
        """Per continuation, ``(sum over its positions of KL(self || other), positions)``, where ``other`` is this mix
        at other weights over the same loaded side models (:meth:`with_knobs`): both distributions from one pass of
        every side, exactly, over the full vocabulary, on the given tokens."""
        if len(other.models) != len(self.models) or any(a is not b for a, b in zip(self.models, other.models)):
            raise InputError(f"{self.what}: the KL is measured between the same mix at two weights (with_knobs)")
        if not (self.scores_its_decoding and other.scores_its_decoding):
            raise CapabilityError(f"{self.what} chooses tokens by a score that is not the distribution it is scored "
                                  "under: there is no exact KL to measure")
        bs = batch_size or self.inners[0].score_batch_size
        ids = [self.encode(c) if isinstance(c, str) else list(c) for c in continuations]
        out = [[0.0, 0] for _ in ids]
        for chunks in self._side_logprobs(prompts, ids, bs):
            first = chunks[0]
            if not first.logprobs.shape[0]:
                continue
            ls = [c.logprobs for c in chunks]
            mine = torch.log_softmax(self.combine(ls), dim=-1)[..., : self.width]
            theirs = torch.log_softmax(other.combine(ls), dim=-1)[..., : self.width]
            p = mine.exp()
            kl = torch.where(p > 0, p * (mine - theirs), torch.zeros_like(p)).sum(-1).clamp(min=0.0)
            out[first.index][0] += float(kl.double().sum())
            out[first.index][1] += int(kl.shape[0])
        return [(k, int(n)) for k, n in out]

    def score(self, prompts: Sequence[Prompt], continuations, *, top_k: int = 0,
              reduce: PositionReducer | None = None) -> list[TokenScores]:
        from alignkit.models.hf import scores_from_chunks

        ids = [self.encode(c) if isinstance(c, str) else list(c) for c in continuations]
        return scores_from_chunks(self.iter_logprobs(prompts, ids), ids, self.tokenizer, top_k, reduce)


def build_node(options: Any, children: dict[str, Any], resources: Any, node: Any) -> LogitMix:
    """The ``mix`` node: ``sum_i weight_i * logits_i`` over its ``models`` list, the first leading."""
    models = [m for slot, m in children.items() if slot.startswith("models.")]  # in the tree's order
    if len(options.weights) != len(models):
        raise InputError(f"node 'mix' has {len(models)} models and {len(options.weights)} weights: give one weight per "
                         "model, in order")
    return LogitMix([(f"model {i}", m, w) for i, (m, w) in enumerate(zip(models, options.weights))])
