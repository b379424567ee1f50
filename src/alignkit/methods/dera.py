"""DeRa, decoding-time realignment: mix a reference model and its aligned version token by token.

At every step the next-token logits are ``lam * h_aligned + (1 - lam) * h_ref`` -- a geometric mixture of
the two distributions -- and the usual sampling (temperature, top-p, top-k, repetition penalty, stop
strings) applies to the mix. ``lam = 0`` is the reference model, ``lam = 1`` the aligned one, values in
between interpolate and values above 1 extrapolate beyond the aligned model (DeRa: like training with KL
strength beta / lam, without retraining).

DeRa is the two-sided case of the logit-arithmetic kernel (:class:`~alignkit.methods.mix.LogitMix`): both models
step in lockstep, each with its own key/value cache, batched; their prompts may differ (a base model as the
reference and the same model aligned in context, whose prompt carries the preamble), and each side's prompt prefix
is prefilled once (and reused across calls). DeRa is itself a model: it generates, streams, and scores (the mixed
distribution), so every command takes it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from alignkit.errors import InputError
from alignkit.methods.mix import LogitMix
from alignkit.types import Prompt


class DeRa(LogitMix):
    """``lam * aligned + (1 - lam) * ref`` in logit space, decoded in lockstep."""

    backend = "dera"
    method = "dera"
    what = "DeRa"

    def __init__(self, ref: Any, aligned: Any, lam: float) -> None:
        if not isinstance(lam, (int, float)) or not math.isfinite(lam) or lam < 0:
            raise InputError(f"lambda must be a number >= 0 (0: the reference model, 1: the aligned model, "
                             f">1: beyond it); got {lam!r}")
        self.lam = float(lam)
        super().__init__([("aligned", aligned, self.lam), ("ref", ref, 1 - self.lam)])
        self.aligned, self.ref = aligned, ref
        self.aligned_inner, self.ref_inner = self.inners

    def knobs(self) -> dict[str, float]:
        return {"lam": self.lam}

    def _set_knobs(self, knobs: dict[str, float]) -> None:
        if knobs["lam"] < 0:
            raise InputError(f"lambda must be >= 0 (0: the reference model, 1: the aligned model); got {knobs['lam']}")
        self.lam = knobs["lam"]
        self.weights = [self.lam, 1 - self.lam]

    def info(self) -> dict[str, Any]:
        return {**self.aligned.info(), "method": "dera", "lam": self.lam, "aligned": self.aligned.info(),
                "ref": self.ref.info()}

    @torch.no_grad()
    def kl_to_reference(self, prompts: Sequence[Prompt], continuations, *, batch_size: int | None = None
                        ) -> list[tuple[float, int]]:
        """Per continuation, ``(sum over its positions of KL(pi_lam || pi_ref), positions)``: how far the mixed
        distribution is from the reference's, exactly, over the full vocabulary, on the given tokens (the
        models' own distributions: sampling settings such as a repetition penalty are not part of them)."""
        return self.kl_to(self.with_knobs({"lam": 0.0}), prompts, continuations, batch_size=batch_size)


def build_node(options: Any, children: dict[str, Any], resources: Any, node: Any) -> DeRa:
    """The ``dera`` node: its ``aligned`` and ``ref`` children (any models or routes on one stepping backend)
    mixed with weight ``lam``."""
    return DeRa(children["ref"], children["aligned"], options.lam)
