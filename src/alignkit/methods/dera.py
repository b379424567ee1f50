"""DeRa, decoding-time realignment: mix a reference model and its aligned version token by token.

At every step the next-token logits are ``lam * h_aligned + (1 - lam) * h_ref`` -- a geometric mixture of
the two distributions -- and the usual sampling (temperature, top-p, top-k, repetition penalty, stop
strings) applies to the mix. ``lam = 0`` is the reference model, ``lam = 1`` the aligned one, values in
between interpolate and values above 1 extrapolate beyond the aligned model (DeRa: like training with KL
strength beta / lam, without retraining).

Both models step in lockstep, each with its own key/value cache, batched; their prompts may differ (a base
model as the reference and the same model aligned in context, whose prompt carries the preamble), and each
side's prompt prefix is prefilled once (and reused across calls). DeRa is itself a model: it generates,
streams, and scores (the mixed distribution), so every command takes it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
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


def _stepping(model: Any, role: str):
    """The model under a (possibly wrapped) model, checked for the public stepper protocol, or a clear error."""
    inner = answering_backend(model)  # under a method, or a route of several (e.g. a rewriter in front of urial)
    m = model
    while m is not inner:  # each side's prompt is prepared down the method chain, so every node on it must be one
        if not isinstance(m, MethodModel):
            raise CapabilityError(f"DeRa's {role} side {model.spec!r} holds a {getattr(m, 'method', m.backend)} node, "
                                  "which does not prepare a prompt for one model to step; put it around DeRa instead")
        m = m.base
    caps = inner.capabilities
    if not (caps.stepping and caps.full_vocab_logits and isinstance(inner, SteppingModel)):
        raise CapabilityError(
            f"DeRa steps both models token by token with their full logits; the {role} model {model.spec!r} "
            f"({inner.backend} backend) cannot do that -- use a local model (hf:, a folder, .gguf, llamacpp:)"
        )
    return inner


class DeRa:
    """``lam * aligned + (1 - lam) * ref`` in logit space, decoded in lockstep."""

    backend = "dera"
    method = "dera"

    def __init__(self, ref: Any, aligned: Any, lam: float) -> None:
        if not isinstance(lam, (int, float)) or not math.isfinite(lam) or lam < 0:
            raise InputError(f"lambda must be a number >= 0 (0: the reference model, 1: the aligned model, "
                             f">1: beyond it); got {lam!r}")
        self.ref, self.aligned, self.lam = ref, aligned, float(lam)
        self.ref_inner, self.aligned_inner = _stepping(ref, "reference"), _stepping(aligned, "aligned")
        if self.ref_inner.backend != self.aligned_inner.backend:
            raise InputError(f"DeRa needs both models on one backend (their logits must be comparable); the aligned "
                             f"model runs on {self.aligned_inner.backend}, the reference on {self.ref_inner.backend}")
        fa, fr = self.aligned_inner.vocab_fingerprint(), self.ref_inner.vocab_fingerprint()
        va, vr = self.aligned_inner.vocab_size, self.ref_inner.vocab_size
        if fa != fr or va != vr:
            raise InputError(
                f"DeRa mixes the two models' logits token by token, so they must share one tokenizer and "
                f"vocabulary; {aligned.spec!r} (vocabulary {fa}, {va} logits) and {ref.spec!r} ({fr}, {vr}) differ"
            )
        self.spec = aligned.spec
        self.capabilities = Capabilities(
            full_vocab_logits=True, topk_logprobs=va, chat_template=aligned.capabilities.chat_template,
            streaming=True, adapters=True, prefix_reuse=True, token_ids=True, stepping=False, constraints=True,
            # requests can join the running lockstep pair when both sides take rows into a running batch
            continuous_batching=all(m.capabilities.continuous_batching for m in (self.ref_inner, self.aligned_inner)))
        self.recommended = getattr(aligned, "recommended", {})
        # tokenizer-level helpers come from the aligned side (both sides share the vocabulary)
        self.tokenizer = self.aligned_inner.tokenizer
        self.encode, self.token_text = self.aligned_inner.encode, self.aligned_inner.token_text
        self.vocab_fingerprint = self.aligned_inner.vocab_fingerprint

    @property
    def context_length(self) -> int | None:
        limits = [m.context_length for m in (self.ref_inner, self.aligned_inner) if m.context_length]
        return min(limits) if limits else None

    def children(self) -> list[tuple[str, Any]]:
        return [("aligned", self.aligned), ("ref", self.ref)]

    def info(self) -> dict[str, Any]:
        return {**self.aligned.info(), "method": "dera", "lam": self.lam, "aligned": self.aligned.info(),
                "ref": self.ref.info()}

    def close(self) -> None:
        self.aligned.close()
        self.ref.close()

    # ------------------------------------------------------------------ what each side sees
    def _side(self, model: Any, prompt: Prompt, config: GenerationConfig):
        """Token ids one side's model sees for ``prompt``, its stop strings and meta, through every layer of
        method wrapping (a route's earlier stages run here: a rewriter rewrites the prompt first)."""
        backend, prompt, stops, meta = prepared_for_backend(model, prompt, config)
        return backend.encode_prompt(prompt), stops, meta

    def prepare(self, prompt: Prompt, config: GenerationConfig):

        ids_a, stop_a, meta = self._side(self.aligned, prompt, config)
        _, stop_r, _ = self._side(self.ref, prompt, config)
        return Prepared(prompt, tuple(dict.fromkeys(stop_a + stop_r)), meta)

    def render(self, prompt: Prompt) -> str:
        return self.aligned.render(prompt)

    def count_tokens(self, prompt: Prompt) -> int:
        cfg = GenerationConfig()
        return max(len(self._side(self.aligned, prompt, cfg)[0]), len(self._side(self.ref, prompt, cfg)[0]))

    def clean(self, text: str) -> str:
        """The aligned side's cleaning (what a route around DeRa applies to a text of its own)."""
        return self.aligned.clean(text) if isinstance(self.aligned, MethodModel) else text

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def stream(self, prompts: Sequence[Prompt], config=None, *, should_stop=None, reuse_prefix: bool = True,
               admit=None) -> Iterator[StreamEvent]:
        """Both models in lockstep; ``admit`` (continuous batching, when ``capabilities.continuous_batching``):
        joining requests are prepared for both sides and join both models' batches."""
        configs = configs_for(len(prompts), config)
        if not prompts:
            return
        if admit is not None and not self.capabilities.continuous_batching:
            raise CapabilityError("DeRa takes requests into a running batch only when both models can")
        a_ids, r_ids, merged, metas = [], [], [], []
        cleaner = (self.aligned.stream_cleaner if isinstance(self.aligned, MethodModel) else None)
        cleaners: list[Any] = []

        def add(p: Prompt, c: GenerationConfig) -> tuple[list[int], GenerationConfig, list[list[int]]]:
            ia, sa, meta = self._side(self.aligned, p, c)
            ir, sr, _ = self._side(self.ref, p, c)
            a_ids.append(ia)
            r_ids.append(ir)
            merged.append(replace(c, stop=tuple(dict.fromkeys(c.stop + sa + sr))))
            metas.append(meta)
            cleaners.append(cleaner() if cleaner else None)
            # the row's prompt is the longer side's, so the context limit holds for both models
            return (ia if len(ia) >= len(ir) else ir), merged[-1], [ia, ir]

        for p, c in zip(prompts, configs):
            add(p, c)
        lam = self.lam
        loop = self.aligned_inner.token_loop  # the aligned side's decoding rules (both share the vocabulary)
        extra = max(c.max_new_tokens for c in configs)
        # the row's prompt is the longer side's, so the context limit holds for both models
        row_ids = [a if len(a) >= len(r) else r for a, r in zip(a_ids, r_ids)]
        width = min(w for w in (self.aligned_inner.max_stepper_rows, self.ref_inner.max_stepper_rows, len(prompts))
                    if w is not None)
        # rows beyond what the steppers hold join as others finish, then the caller's requests
        loop_admit = queued_admit([(row_ids[k], merged[k], [a_ids[k], r_ids[k]]) for k in range(width, len(prompts))],
                                  admit, add)

        def combine(ls):
            return lam * ls[0] + (1 - lam) * ls[1]

        with self.aligned_inner.exclusive(), self.ref_inner.exclusive():
            steppers = []
            try:
                steppers.append(self.aligned_inner.stepper(a_ids[:width], extra=extra, reuse=reuse_prefix))
                steppers.append(self.ref_inner.stepper(r_ids[:width], extra=extra, reuse=reuse_prefix))
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
    @torch.no_grad()
    def iter_logprobs(self, prompts: Sequence[Prompt], continuations, *, batch_size: int | None = None
                      ) -> Iterator[LogprobChunk]:
        bs = batch_size or self.aligned_inner.score_batch_size
        ids = [self.encode(c) if isinstance(c, str) else list(c) for c in continuations]
        a = self.aligned.iter_logprobs(prompts, ids, batch_size=bs)
        r = self.ref.iter_logprobs(prompts, ids, batch_size=bs)
        for ca, cr in lockstep(a, r):
            mixed = torch.log_softmax(self.lam * ca.logprobs + (1 - self.lam) * cr.logprobs, dim=-1)
            yield LogprobChunk(ca.index, ca.start, mixed, ca.targets, ca.last)

    def kl_to_reference(self, prompts: Sequence[Prompt], continuations, *, batch_size: int | None = None
                        ) -> list[tuple[float, int]]:
        """Per continuation, ``(sum over its positions of KL(pi_lam || pi_ref), positions)``: how far the mixed
        distribution is from the reference's, exactly, over the full vocabulary, on the given tokens (the
        models' own distributions: sampling settings such as a repetition penalty are not part of them)."""
        bs = batch_size or self.aligned_inner.score_batch_size
        ids = [self.encode(c) if isinstance(c, str) else list(c) for c in continuations]
        out = [[0.0, 0] for _ in ids]
        a = self.aligned.iter_logprobs(prompts, ids, batch_size=bs)
        r = self.ref.iter_logprobs(prompts, ids, batch_size=bs)
        for ca, cr in lockstep(a, r):
            if not ca.logprobs.shape[0]:
                continue
            mixed = torch.log_softmax(self.lam * ca.logprobs + (1 - self.lam) * cr.logprobs, dim=-1)
            kl = (mixed.exp() * (mixed - cr.logprobs)).sum(-1).clamp(min=0.0)
            out[ca.index][0] += float(kl.double().sum())
            out[ca.index][1] += int(kl.shape[0])
        return [(k, int(n)) for k, n in out]

    def score(self, prompts: Sequence[Prompt], continuations, *, top_k: int = 0,
              reduce: PositionReducer | None = None) -> list[TokenScores]:
        from alignkit.models.hf import scores_from_chunks

        ids = [self.encode(c) if isinstance(c, str) else list(c) for c in continuations]
        return scores_from_chunks(self.iter_logprobs(prompts, ids), ids, self.tokenizer, top_k, reduce)


def build_node(options: Any, children: dict[str, Any], resources: Any, node: Any) -> DeRa:
    """The ``dera`` node: its ``aligned`` and ``ref`` children (any models or routes on one stepping backend)
    mixed with weight ``lam``."""
    return DeRa(children["ref"], children["aligned"], options.lam)
