"""Alignment methods. Each wraps a model and is one (see :mod:`alignkit.methods.base`); each is a node of the route
tree (:mod:`alignkit.methods.tree`, kinds in :mod:`alignkit.methods.nodes`).

:class:`MethodOptions` is the command line's flat shorthand: :func:`tree_from_options` turns it into the same tree a
YAML route file or Python code would write, and :func:`apply_method` builds it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from alignkit.errors import InputError
from alignkit.methods import nodes as _nodes  # noqa: F401 -- registers the node kinds
from alignkit.methods.tree import Node, Resources, build, node  # noqa: F401 -- Resources: the loader type callers pass

METHODS = ("urial", "template", "none", "auto", "dera", "best-of-n")
SIDE_METHODS = ("urial", "template", "none", "auto")
METHOD_NODES = ("urial", "template", "none", "auto")


@dataclass(frozen=True)
class MethodOptions:
    method: str = field(default="none", metadata={
        "help": "how to talk to the model: urial (in-context alignment of a base model), template (the model's "
                "own chat template), none (raw completion), auto (a model trained by `alignkit train`: the layout it was trained on; else its chat "
                "template if it has one, else urial)",
        "choices": list(METHODS)})
    template: str | None = field(default=None, metadata={
        "help": "in-context alignment template: a shipped name (urial-k0, urial-k1, urial-k3, urial-k8, "
                "urial-k3-helpful) or a YAML file"})
    k: int | None = field(default=None, metadata={"min": 0,
        "help": "number of in-context examples (fixed selection: picks the shipped urial-kK template)"})
    select: str = field(default="fixed", metadata={
        "help": "in-context examples: fixed (the template's); similar (per query from the template's example pool, "
                "by sentence embedding: one decline example kept in its role, the rest the most similar helpful "
                "ones); similar-any (the K most similar, decline examples included)",
        "choices": ["fixed", "similar", "similar-any"]})
    ref: str | None = field(default=None, metadata={
        "help": "--method dera: the reference model spec (--model is the aligned model). DeRa's equivalence (lam "
                "emulates KL strength beta/lam) holds when the aligned model is the KL-regularised optimum relative "
                "to this reference -- an SFT model and its DPO/RLHF version; other pairings (a base model and its "
                "in-context-aligned self, a base and an SFT model) are a heuristic interpolation"})
    lam: float | None = field(default=None, metadata={"min": 0,
        "help": "--method dera: lambda; logits = lam * aligned + (1 - lam) * ref (0: ref, 1: aligned, >1: beyond)"})
    ref_method: str = field(default="none", metadata={
        "help": "--method dera: how the reference model is prompted", "choices": list(SIDE_METHODS)})
    rewriter: str | None = field(default=None, metadata={
        "help": "route stage BPO: a rewriter model spec that rewrites each request before the model (under its "
                "method) answers it; composes with every method and with --corrector"})
    rewriter_method: str | None = field(default=None, metadata={
        "help": "how the rewriter is prompted (default: its layout's: a published checkpoint's raw layout, or auto "
                "for alignkit's layout -- the layout an adapter was trained on, else its chat template)",
        "choices": list(SIDE_METHODS)})
    rewriter_layout: str | None = field(default=None, metadata={
        "help": "the rewriter's layout: alignkit-bpo, bpo-thudm (THUDM/BPO's) or a YAML file (default: chosen "
                "from the rewriter model)"})
    corrector: str | None = field(default=None, metadata={
        "help": "route stage Aligner: a corrector model spec that rewrites each answer of the route before it "
                "into a corrected one"})
    corrector_method: str | None = field(default=None, metadata={
        "help": "how the corrector is prompted (default: its layout's)", "choices": list(SIDE_METHODS)})
    corrector_layout: str | None = field(default=None, metadata={
        "help": "the corrector's layout: alignkit-aligner, aligner-pku (aligner/aligner-7b-v1.0's) or a YAML file"})
    scorer: str | None = field(default=None, metadata={
        "help": "route stage best-of-n: sample --n answers from the model (under its method) and return the one this "
                "scorer rates highest: reward:PATH_OR_HUB, judge:MODEL, geval:MODEL (all candidates are kept in the "
                "record)"})
    n: int = field(default=4, metadata={"min": 1, "help": "best-of-n: how many answers are sampled per request"})
    sample_temperature: float = field(default=0.8, metadata={"gt": 0,
        "help": "best-of-n: the sampling temperature of the candidates when the request asks for greedy decoding"})
    aligned_method: str = field(default="auto", metadata={
        "help": "--method dera: how the aligned model is prompted (auto: the layout it was trained on if alignkit "
                "trained it, else its chat template if it has one, else raw; urial aligns it in context)", "choices": list(SIDE_METHODS)})


def recommended_repetition_penalty(model: Any) -> float:
    """The repetition penalty a model's method recommends (``recommended`` on the method: 1.15 for in-context
    alignment), else 1.0 (off). The one place this default is looked up."""
    return float(getattr(model, "recommended", {}).get("repetition_penalty", 1.0))


def apply_method(model: Any, options: MethodOptions, loader: Any = None) -> Any:
    """Wrap ``model`` (a loaded model or a spec) according to ``options`` -- its method, then the route stages
    around it; ``loader`` (a :class:`Resources`, or a plain ``loader(spec)``) loads the other models and opens the
    scorers they need. The same as ``build(tree_from_options(model, options), loader)``."""
    return build(tree_from_options(model, options), loader)


def tree_from_options(model: Any, options: MethodOptions) -> Node:
    """The route tree the flags describe: the model under its method (or DeRa's pair), best-of-N around it, a
    rewriter in front, a corrector behind -- ``correct(rewrite(best-of-n(method(model))))``."""
    if not options.scorer and (options.n != 4 or options.sample_temperature != 0.8):
        raise InputError("--n and --sample-temperature apply to best-of-n: give --scorer SPEC too")
    method = options.method
    if method == "best-of-n":
        if not options.scorer:
            raise InputError("--method best-of-n needs --scorer SPEC (reward:PATH, judge:MODEL or geval:MODEL) and "
                             "--n N; it samples from the model under --method auto (give another --method with "
                             "--scorer to sample from that one)")
        method = "auto"
    if method == "dera":
        tree = _dera_tree(model, options)
    else:
        if options.ref is not None or options.lam is not None:
            raise InputError("--ref and --lam apply to --method dera only")
        if method not in METHOD_NODES:
            raise InputError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
        if method in ("template", "none") and (options.template or options.k is not None or options.select != "fixed"):
            raise InputError("--template, --k and --select apply to --method urial only (with dera: --aligned-method "
                             "urial)")
        tree = node(method, model=model, **_icl(options, method))
    if options.scorer:
        tree = node("best-of-n", model=tree, scorer=options.scorer, n=options.n,
                    sample_temperature=options.sample_temperature)
    if options.rewriter:
        tree = node("rewrite", model=tree, layout=options.rewriter_layout,
                    rewriter=_stage(options.rewriter, options.rewriter_method))
    if options.corrector:
        tree = node("correct", model=tree, layout=options.corrector_layout,
                    corrector=_stage(options.corrector, options.corrector_method))
    return tree


def _icl(options: MethodOptions, method: str) -> dict[str, Any]:
    """The in-context options a urial (or auto) node takes from the flags."""
    if method not in ("urial", "auto"):
        return {}
    return {"template": options.template, "k": options.k, "select": options.select}


def _stage(spec: str, method: str | None) -> Any:
    """A stage's model: bare (asked in its layout's method) or under the method the flags name."""
    return spec if method is None else node(method, model=spec)


def _dera_tree(model: Any, options: MethodOptions) -> Node:
    if options.ref is None or options.lam is None:
        raise InputError("--method dera needs --ref REF_MODEL and --lam LAMBDA (--model is the aligned model)")
    return node("dera", lam=options.lam, ref=dera_side(options.ref, options.ref_method, options),
                aligned=dera_side(model, options.aligned_method, options))


def dera_side(model: Any, method: str, options: MethodOptions) -> Node:
    """One side of DeRa: a plain model under its method -- the one code path of ``--method dera`` and ``alignkit
    dera sweep``. ``auto`` on a side: the layout alignkit trained the model on, else its chat template, else raw
    (``none``). The in-context options (template, k, select) apply to a side aligned in context (urial)."""
    if method == "auto":
        return node("auto", model=model, fallback="none")
    return node(method, model=model, **(_icl(options, method) if method == "urial" else {}))
