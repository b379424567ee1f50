"""Proxy-tuning: a small tuned/untuned pair steers a base model at decoding time, without touching its weights.

At every step the next-token logits are ``h_base + alpha * (h_expert - h_antiexpert)``: the base model's, shifted by
how much tuning changed a (usually smaller) expert relative to its untuned self. The same formula is EFT's
"up-scaling" (scale the fine-tuning term with ``alpha``) and DExperts (an expert and an anti-expert steering a
base). ``alpha = 0`` is the base model exactly; an expert equal to its anti-expert leaves the base unchanged.

Each side is prompted as it should be -- in proxy-tuning's released code only the expert sees its chat template;
the base and the anti-expert see the raw prompt -- which a route tree says directly::

    proxy:
      alpha: 1.0
      base: {none: {model: ./big-base}}
      expert: {template: {model: ./small-chat}}
      antiexpert: {none: {model: ./small-base}}

All three step in lockstep on one backend and must share one tokenizer and vocabulary (a pair whose vocabulary
differs from the base's is refused; padding rows of a wider output layer are cut, see :class:`LogitMix`). The expert leads: its method cleans the answer and its chat
capability is the mix's; the mix's spec is the base's.
"""

from __future__ import annotations

from typing import Any

from alignkit.methods.mix import LogitMix


class ProxyTuned(LogitMix):
    """``base + alpha * (expert - antiexpert)`` in logit space, decoded in lockstep."""

    backend = "proxy"
    method = "proxy"
    what = "proxy-tuning"

    def __init__(self, base: Any, expert: Any, antiexpert: Any, alpha: float = 1.0) -> None:
        self.alpha = float(alpha)
        super().__init__([("expert", expert, self.alpha), ("base", base, 1.0), ("antiexpert", antiexpert, -self.alpha)])
        self.spec = base.spec

    def knobs(self) -> dict[str, float]:
        return {"alpha": self.alpha}

    def _set_knobs(self, knobs: dict[str, float]) -> None:
        self.alpha = knobs["alpha"]
        self.weights = [self.alpha, 1.0, -self.alpha]

    def info(self) -> dict[str, Any]:
        base = self.models[self.roles.index("base")]
        return {**base.info(), "method": "proxy", "alpha": self.alpha, "sides": super().info()["sides"]}


class EFT(LogitMix):
    """EFT's up-scaling: ``beta * base + alpha * (tuned - untuned)`` -- a (small) model's fine-tuning, measured as
    its tuned/untuned difference, carried over to a (large) base; each term scaled on its own."""

    backend = "eft"
    method = "eft"
    what = "EFT"

    def __init__(self, base: Any, tuned: Any, untuned: Any, alpha: float = 1.0, beta: float = 1.0) -> None:
        self.alpha, self.beta = float(alpha), float(beta)
        super().__init__([("tuned", tuned, self.alpha), ("base", base, self.beta), ("untuned", untuned, -self.alpha)])
        self.spec = base.spec

    def knobs(self) -> dict[str, float]:
        return {"alpha": self.alpha, "beta": self.beta}

    def _set_knobs(self, knobs: dict[str, float]) -> None:
        self.alpha, self.beta = knobs["alpha"], knobs["beta"]
        self.weights = [self.alpha, self.beta, -self.alpha]

    def info(self) -> dict[str, Any]:
        base = self.models[self.roles.index("base")]
        return {**base.info(), "method": "eft", "alpha": self.alpha, "beta": self.beta, "sides": super().info()["sides"]}


class DExperts(ProxyTuned):
    """DExperts: ``base + alpha * (expert - antiexpert)``, the arithmetic of proxy-tuning with an expert tuned
    towards what is wanted and an anti-expert towards what is not (e.g. toxic text)."""

    backend = "dexperts"
    method = "dexperts"
    what = "DExperts"

    def info(self) -> dict[str, Any]:
        return {**super().info(), "method": "dexperts"}


def build_node(options: Any, children: dict[str, Any], resources: Any, node: Any) -> ProxyTuned:
    """The ``proxy`` node: ``base + alpha * (expert - antiexpert)``."""
    return ProxyTuned(children["base"], children["expert"], children["antiexpert"], options.alpha)


def build_eft(options: Any, children: dict[str, Any], resources: Any, node: Any) -> EFT:
    """The ``eft`` node: ``beta * base + alpha * (tuned - untuned)``."""
    return EFT(children["base"], children["tuned"], children["untuned"], options.alpha, options.beta)


def build_dexperts(options: Any, children: dict[str, Any], resources: Any, node: Any) -> DExperts:
    """The ``dexperts`` node: ``base + alpha * (expert - antiexpert)``."""
    return DExperts(children["base"], children["expert"], children["antiexpert"], options.alpha)
