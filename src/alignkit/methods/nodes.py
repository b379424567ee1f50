"""The registered node kinds: each method's own typed options and its slots (see :mod:`alignkit.methods.tree`).

Each options dataclass documents its fields once (``metadata["help"]``, which the CLI and the docs show) and
declares their ranges and choices; a tree's values are checked against them whether the tree comes from YAML,
from Python or from flags. The factories live with their methods and are imported only when a node is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from alignkit.methods.tree import NodeKind, register

SELECT = ("fixed", "similar", "similar-any")
SIDE_METHODS = ("urial", "template", "none", "auto")


@dataclass(frozen=True)
class UrialOptions:
    template: str | None = field(default=None, metadata={
        "help": "in-context alignment template: a shipped name (urial-k0, urial-k1, urial-k3, urial-k8, "
                "urial-k3-helpful, urial-paper-kK, basic-kK) or a YAML file (default: urial-k3)"})
    k: int | None = field(default=None, metadata={"min": 0, "help": "number of in-context examples (fixed "
                                                                 "selection: picks the shipped urial-kK template)"})
    select: str = field(default="fixed", metadata={"choices": list(SELECT), "help":
        "in-context examples: fixed (the template's); similar (per query from the template's pool by sentence "
        "embedding, one decline example kept in its role); similar-any (the K most similar)"})


@dataclass(frozen=True)
class NoOptions:
    """A node kind without options."""


@dataclass(frozen=True)
class AutoOptions(UrialOptions):
    fallback: str = field(default="urial", metadata={"choices": ["urial", "none"], "help":
        "what a model gets that alignkit did not train and that has no chat template: urial (in-context "
        "alignment) or none (raw completion)"})


@dataclass(frozen=True)
class DeraOptions:
    lam: float | None = field(default=None, metadata={"min": 0, "required": True, "help":
        "lambda: logits = lam * aligned + (1 - lam) * ref (0: ref, 1: aligned, >1: beyond)"})


@dataclass(frozen=True)
class ProxyOptions:
    alpha: float = field(default=1.0, metadata={"help":
        "alpha: logits = base + alpha * (expert - antiexpert) (0: the base model; 1: proxy-tuning; other values "
        "scale the fine-tuning term, as EFT's up-scaling)"})


@dataclass(frozen=True)
class EftOptions:
    alpha: float = field(default=1.0, metadata={"help":
        "the fine-tuning term's scale: logits = beta * base + alpha * (tuned - untuned) (1: the tuned behaviour "
        "carried over to the base; more or less scales it)"})
    beta: float = field(default=1.0, metadata={"help":
        "the pretraining term's scale (the base model's logits; 1: as it is)"})


@dataclass(frozen=True)
class DExpertsOptions:
    alpha: float = field(default=1.0, metadata={"help":
        "alpha: logits = base + alpha * (expert - antiexpert), the expert tuned towards what is wanted, the "
        "anti-expert towards what is not (e.g. toxic text); larger alpha steers harder"})


@dataclass(frozen=True)
class MixOptions:
    weights: tuple[float, ...] = field(default=(), metadata={"required": True, "help":
        "one weight per model, in order: logits = sum of weight_i * logits_i (the first model leads: its method "
        "cleans the answer)"})


@dataclass(frozen=True)
class BestOfNOptions:
    scorer: str | None = field(default=None, metadata={"required": True, "help":
        "the scorer that rates the candidates: reward:PATH_OR_HUB, judge:MODEL, geval:MODEL"})
    n: int = field(default=4, metadata={"min": 1, "help": "how many answers are sampled per request"})
    sample_temperature: float = field(default=0.8, metadata={"gt": 0, "help":
        "the sampling temperature of the candidates when the request asks for greedy decoding"})


@dataclass(frozen=True)
class ArgsOptions:
    scorer: str | None = field(default=None, metadata={"required": True, "help":
        "the scorer r that re-scores the candidates: reward:PATH_OR_HUB (a reward model), judge:MODEL, geval:MODEL"})
    top_k: int = field(default=10, metadata={"min": 1, "help":
        "how many of the model's most likely next tokens are re-scored at each step (each costs one scorer call)"})
    weight: float = field(default=1.0, metadata={"help":
        "w: each candidate scores log p(token) + w * r(prompt, answer so far + token) (0: the model's own choice)"})


@dataclass(frozen=True)
class ChunkSearchOptions:
    chunk: int = field(default=5, metadata={"min": 1, "help": "tokens per chunk: how far each candidate continues "
                                                              "a kept answer before the small pair values it"})
    beams: int = field(default=2, metadata={"min": 1, "help": "how many partial answers are kept after each round"})
    candidates: int = field(default=3, metadata={"min": 1, "help": "how many chunks are sampled from each kept "
                                                                   "answer per round"})
    sample_temperature: float = field(default=0.7, metadata={"gt": 0, "help":
        "the sampling temperature of the chunks when the request asks for greedy decoding"})


@dataclass(frozen=True)
class RewriteOptions:
    layout: str | None = field(default=None, metadata={"help":
        "the rewriter's layout: alignkit-bpo, bpo-thudm (THUDM/BPO's) or a YAML file (default: chosen from the "
        "rewriter model: the layout it was trained on, a published checkpoint's, else alignkit's)"})


@dataclass(frozen=True)
class CorrectOptions:
    layout: str | None = field(default=None, metadata={"help":
        "the corrector's layout: alignkit-aligner, aligner-pku (aligner/aligner-7b-v1.0's) or a YAML file"})


register(NodeKind("urial", UrialOptions, ("model",), "alignkit.methods.urial:build_node",
                  "in-context alignment of a base model: a preamble, K restyled examples, an open answer block"))
register(NodeKind("template", NoOptions, ("model",), "alignkit.methods.wrappers:build_template",
                  "an aligned model through its own chat template"))
register(NodeKind("none", NoOptions, ("model",), "alignkit.methods.wrappers:build_none",
                  "raw completion: the text goes to the model as it is"))
register(NodeKind("auto", AutoOptions, ("model",), "alignkit.methods.wrappers:build_auto",
                  "the layout alignkit trained the model on; else its chat template; else the fallback"))
register(NodeKind("dera", DeraOptions, ("ref", "aligned"), "alignkit.methods.dera:build_node",
                  "decoding-time realignment: lam * aligned + (1 - lam) * ref in logit space, token by token"))
register(NodeKind("proxy", ProxyOptions, ("base", "expert", "antiexpert"), "alignkit.methods.proxy:build_node",
                  "proxy-tuning / EFT / DExperts: base + alpha * (expert - antiexpert) in logit space, token by token"))
register(NodeKind("eft", EftOptions, ("base", "tuned", "untuned"), "alignkit.methods.proxy:build_eft",
                  "EFT up-scaling: beta * base + alpha * (tuned - untuned), a small pair's fine-tuning on a base"))
register(NodeKind("dexperts", DExpertsOptions, ("base", "expert", "antiexpert"), "alignkit.methods.proxy:build_dexperts",
                  "DExperts: base + alpha * (expert - antiexpert), steering towards an expert, away from an anti-expert"))
register(NodeKind("mix", MixOptions, ("models",), "alignkit.methods.mix:build_node",
                  "logit arithmetic: sum of weight_i * logits_i over any models sharing one vocabulary",
                  lists=("models",)))
register(NodeKind("best-of-n", BestOfNOptions, ("model",), "alignkit.methods.best_of_n:build_node",
                  "sample n answers of the model, return the one the scorer rates highest"))
register(NodeKind("args", ArgsOptions, ("model",), "alignkit.methods.args:build_node",
                  "reward-guided decoding (ARGS): the model's top-k next tokens re-scored by log p + w * reward"))
register(NodeKind("chunk-search", ChunkSearchOptions, ("model", "tuned", "untuned"),
                  "alignkit.methods.chunk_search:build_node",
                  "weak-to-strong search: the model's answer chunk by chunk, chunks kept by the small pair's "
                  "log p_tuned - log p_untuned"))
register(NodeKind("rewrite", RewriteOptions, ("model", "rewriter"), "alignkit.methods.routes:build_rewrite",
                  "BPO: a rewriter model rewrites each request before the model answers it",
                  {"rewriter": "route stage 'bpo' (rewriter {spec})"}))
register(NodeKind("correct", CorrectOptions, ("model", "corrector"), "alignkit.methods.routes:build_correct",
                  "Aligner: a corrector model rewrites each answer of the model into a corrected one",
                  {"corrector": "route stage 'aligner' (corrector {spec})"}))
