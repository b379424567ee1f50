"""Alignment methods. Each wraps a model and is one (see :mod:`alignkit.methods.base`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from alignkit.errors import InputError

METHODS = ("urial", "template", "none", "auto", "dera", "best-of-n")
SIDE_METHODS = ("urial", "template", "none", "auto")


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
    """Wrap ``model`` according to ``options`` -- its method, then the route stages around it (a rewriter in
    front, a corrector behind); ``loader(spec)`` loads the other models a method or stage needs."""
    from alignkit.methods.routes import apply_stages

    core = _apply_core(model, options, loader)
    return apply_stages(core, options, loader)


def _apply_core(model: Any, options: MethodOptions, loader: Any = None) -> Any:
    method = options.method
    if not options.scorer and (options.n != 4 or options.sample_temperature != 0.8):
        raise InputError("--n and --sample-temperature apply to best-of-n: give --scorer SPEC too")
    if method == "best-of-n":
        if not options.scorer:
            raise InputError("--method best-of-n needs --scorer SPEC (reward:PATH, judge:MODEL or geval:MODEL) and "
                             "--n N; it samples from the model under --method auto (give another --method with "
                             "--scorer to sample from that one)")
        from dataclasses import replace

        options = replace(options, method="auto")
        method = "auto"
    if method == "dera":
        return _dera(model, options, loader)
    if options.ref is not None or options.lam is not None:
        raise InputError("--ref and --lam apply to --method dera only")
    if method == "auto":
        method, options = _auto(model, options)
    if method != "urial" and (options.template or options.k is not None or options.select != "fixed"):
        raise InputError("--template, --k and --select apply to --method urial only (with dera: --aligned-method urial)")
    if method == "none":
        from alignkit.methods.wrappers import RawCompletion

        return RawCompletion(model)
    if method == "template":
        from alignkit.methods.wrappers import ChatTemplate

        return ChatTemplate(model)
    if method == "urial":
        return _urial(model, options)
    raise InputError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")


def _auto(model: Any, options: MethodOptions) -> tuple[str, MethodOptions]:
    """A model trained by alignkit is prompted the way it was trained; otherwise its chat template if it has
    one, else in-context alignment."""
    from dataclasses import replace

    trained = getattr(model, "trained_format", None)
    if trained and trained.get("method") == "urial":
        if options.template is None and options.k is None and options.select == "fixed":
            options = replace(options, template=trained.get("template") or "urial-k0")
        return "urial", options
    if trained and trained.get("method") == "template":
        return "template", options
    return ("template" if model.capabilities.chat_template else "urial"), options


def _dera(model: Any, options: MethodOptions, loader: Any) -> Any:
    from alignkit.methods.dera import DeRa

    if options.ref is None or options.lam is None:
        raise InputError("--method dera needs --ref REF_MODEL and --lam LAMBDA (--model is the aligned model)")
    if loader is None:
        raise InputError("--method dera needs a way to load the reference model")
    ref, aligned, _ = dera_sides(model, loader(options.ref), options)
    return DeRa(ref, aligned, options.lam)


def dera_sides(aligned_model: Any, ref_model: Any, options: MethodOptions) -> tuple[Any, Any, str]:
    """The two sides of DeRa, each a plain model under its method -- the one code path of ``--method dera`` and
    ``alignkit dera sweep``. ``aligned_method auto``: the layout alignkit trained the model on, else its chat
    template, else raw. The in-context options (template, k, select) apply to whichever side is aligned in
    context (urial). Returns ``(ref, aligned, the aligned side's method)``."""
    from dataclasses import replace

    # route stages wrap the DeRa model as a whole, never a side
    side = replace(options, method="none", ref=None, lam=None, rewriter=None, corrector=None, scorer=None, n=4,
                   sample_temperature=0.8)
    aligned_method = options.aligned_method
    if aligned_method == "auto" and not getattr(aligned_model, "trained_format", None):
        aligned_method = "template" if aligned_model.capabilities.chat_template else "none"

    def under(method: str) -> MethodOptions:
        if method == "urial":
            return replace(side, method=method)
        return replace(side, method=method, template=None, k=None, select="fixed")

    return (apply_method(ref_model, under(options.ref_method)), apply_method(aligned_model, under(aligned_method)),
            aligned_method)


def _urial(model: Any, options: MethodOptions) -> Any:
    from alignkit.methods.templates import DEFAULT_TEMPLATE, load_template, shipped_templates
    from alignkit.methods.urial import InContextAligned

    name = options.template
    if options.select in ("similar", "similar-any"):
        from alignkit.methods.retrieval import SimilarExamples

        template = load_template(name or DEFAULT_TEMPLATE)
        k = 3 if options.k is None else options.k
        decline = "one" if options.select == "similar" else "similar"
        return InContextAligned(model, template, selector=SimilarExamples.from_template(template, k, decline=decline))
    if options.k is not None:
        wanted = f"urial-k{options.k}"
        if name is None:
            if wanted not in shipped_templates():
                raise InputError(f"no shipped template with K={options.k} (shipped: K=0, 1, 3, 8); pass --select "
                                 "similar to choose any K examples from the pool, or --template FILE")
            name = wanted
        else:
            t = load_template(name)
            if t.k != options.k:
                raise InputError(f"template {name!r} has {t.k} examples but --k {options.k} was given")
    return InContextAligned(model, load_template(name or DEFAULT_TEMPLATE))
