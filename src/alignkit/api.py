"""The public Python API: what a researcher types in a notebook, and what the CLI and the server call.

::

    import alignkit as ak

    chat = ak.load("gemma-3-270m", method="urial", k=3)          # a base model aligned in context
    print(chat.chat([{"role": "user", "content": "How do I boil an egg?"}]))

    route = ak.load("route.yaml")                                  # any route tree (YAML/JSON file, dict or Node)
    rows = ak.generate(route, ["Name a colour."], max_new_tokens=64)

    result = ak.shift("gemma-3-270m", chat, prompts=["How do I boil an egg?"])
    result.summary, result.positions()                             # the CLI's figures; a DataFrame per position

    report = ak.evaluate({"urial": chat, "raw": ak.load("gemma-3-270m", method="none")}, limit=5)
    report.table()

Every function takes models as spec strings, route trees or already-loaded models; the models a call loads are
loaded once each (:func:`resources`). Importing :mod:`alignkit` does not import torch: this module imports the
heavy layers only when a function runs.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alignkit.errors import InputError
from alignkit.models.base import LanguageModel
from alignkit.scoring import Scorer
from alignkit.types import GenerationConfig, Message, Prompt, as_messages

if TYPE_CHECKING:  # pragma: no cover
    from alignkit.analysis.result import ShiftResult
    from alignkit.evaluation.result import EvalReport
    from alignkit.methods.tree import Node, Resources
    from alignkit.models.registry import ModelOptions
    from alignkit.sweep import SweepResult

ModelLike = "str | Node | Mapping[str, Any] | LanguageModel"


# ----------------------------------------------------------------------------- models and scorers
def resources(options: ModelOptions | None = None, *, pool: Any = None) -> Resources:
    """What a route may load: models by spec, each once (``pool``, a :class:`ModelPool`, or a new one with
    ``options``), and scorers by spec (:func:`open_scorer`, judges loaded from the same pool)."""
    from alignkit.methods.tree import Resources
    from alignkit.models.registry import ModelPool

    if isinstance(pool, Resources):
        return pool
    models = pool if pool is not None else ModelPool(options)
    return Resources(models, lambda spec, res: open_scorer(spec, res))


_new_resources = resources  # for the functions whose ``resources`` parameter shadows it


def open_scorer(spec: str, loader: Any = None, *, cache: str | Path | None = None, batch_size: int = 8) -> Scorer:
    """The scorer a spec names: ``reward:PATH_OR_HUB`` (a reward model), ``judge[+RUBRIC]:MODEL`` (an LLM judge
    with a score rubric, the mean of its aspects), ``debate[+RUBRIC]:MODEL`` (judge personas discuss, then the mean
    of their verdicts) or ``geval[+RUBRIC]:MODEL`` (the judge's expected 1-5 digit).
    ``loader(spec)`` loads judge models (a :class:`ModelPool` shares them with the rest of a command); ``cache``
    is a JSONL file that keeps judge answers across runs."""
    from alignkit.scoring import parse_spec

    kind, rubric_name, target = parse_spec(spec)
    if kind == "reward":
        from alignkit.training.reward_model import RewardModelScorer

        return RewardModelScorer.load(target, batch_size=batch_size)
    from alignkit.evaluation.judge import Judge, JudgeCache, load_rubric
    from alignkit.evaluation.scorers import ExpectedScoreJudge, JudgeScorer
    from alignkit.methods.tree import build, node

    model = build(node("auto", model=target), loader if loader is not None else _new_resources())
    if kind in ("judge", "debate"):
        rubric = load_rubric(rubric_name or "multi-aspect")
        if rubric.kind != "score":
            raise InputError(f"scorer {spec!r}: rubric {rubric.id!r} is a {rubric.kind} rubric; a scorer needs a "
                             "score rubric")
        if kind == "debate":
            from alignkit.evaluation.debate import DebateJudge

            return JudgeScorer(DebateJudge(model, rubric, cache=JudgeCache(cache), batch_size=batch_size), spec=spec)
        return JudgeScorer(Judge(model, rubric, cache=JudgeCache(cache), batch_size=batch_size), spec=spec)
    rubric = load_rubric(rubric_name or "overall")
    if rubric.kind != "score":
        raise InputError(f"scorer {spec!r}: rubric {rubric.id!r} is not a score rubric")
    return ExpectedScoreJudge(model, rubric, spec=spec)


def scorer(spec: str, *, resources: Resources | None = None, cache: str | Path | None = None,
           batch_size: int = 8) -> Scorer:
    """A scorer by spec (see :func:`open_scorer`): ``score(prompts, answers) -> [Score]``."""
    return open_scorer(spec, resources, cache=cache, batch_size=batch_size)


def node(kind: str, /, **fields_: Any) -> Node:
    """A route-tree node: ``node("dera", lam=0.5, ref="./sft", aligned=node("auto", model="./dpo"))``. Its options
    are the kind's (see :data:`alignkit.methods.tree.NODES`), its slots take specs, models or nodes."""
    from alignkit.methods.tree import node as make

    return make(kind, **fields_)


def load(model: Any, *, method: str | None = None, options: ModelOptions | None = None,
         resources: Resources | None = None, **fields_: Any) -> LanguageModel:
    """A model: a spec (``"gemma-3-270m"``, ``"hf:ORG/NAME"``, ``"./folder"``), a route tree (a :class:`Node`, its
    dict form, or a ``.yaml``/``.json`` file), or an already-loaded model -- optionally under a ``method`` node
    whose options are the keyword arguments (``load("gemma-3-270m", method="urial", k=3)``). ``method`` takes a
    kind with one model slot; build DeRa and the stages with :func:`node`."""
    from alignkit.methods.tree import Node, build, is_route_file, load_tree, parse

    tree: Any = model
    if is_route_file(model):
        tree = load_tree(model)
    elif isinstance(model, Mapping):
        tree = parse(model)
    if method is not None:
        from alignkit.methods.tree import NODES

        kind = NODES.get(method)
        if kind is None or kind.slots != ("model",):
            raise InputError(f"method={method!r}: load(model, method=...) takes a kind with one model slot "
                             f"({', '.join(n for n, k in NODES.items() if k.slots == ('model',))}); build other "
                             "trees with alignkit.node(...)")
        tree = node(method, model=tree, **fields_)
    elif fields_:
        raise InputError(f"options {sorted(fields_)} need method=... (the node they belong to)")
    if not isinstance(tree, (str, Node)) and not hasattr(tree, "generate"):
        raise InputError(f"cannot load {model!r:.80}: give a spec string, a route tree or a model")
    res = resources if resources is not None else _new_resources(options)
    return build(tree, res)


def chat(model: LanguageModel, messages: Sequence[Message | Mapping[str, str]] | str,
         config: GenerationConfig | None = None, **decoding: Any) -> str:
    """One reply of ``model`` to a conversation (or to one user message given as a string)."""
    msgs = [Message("user", messages)] if isinstance(messages, str) else as_messages(list(messages))
    return model.generate([msgs], decoding_config(model, config, **decoding))[0].text


# ----------------------------------------------------------------------------- generation
def decoding_config(model: Any, config: GenerationConfig | None = None, **decoding: Any) -> GenerationConfig:
    """A generation config: ``config`` (or the defaults) with ``decoding``'s fields, and the repetition penalty
    the model's method recommends unless one is given."""
    from alignkit.methods import recommended_repetition_penalty

    names = {f.name for f in fields(GenerationConfig)}
    unknown = sorted(set(decoding) - names)
    if unknown:
        raise InputError(f"unknown decoding option(s) {unknown}; GenerationConfig has {sorted(names)}")
    if "stop" in decoding and isinstance(decoding["stop"], str):
        decoding["stop"] = (decoding["stop"],)
    base = config or GenerationConfig(repetition_penalty=recommended_repetition_penalty(model))
    return replace(base, **decoding)


def generate(model: Any, prompts: Iterable[Prompt | Mapping[str, Any]] | str, *,
             output: str | Path | None = None, resume: bool = False, batch_size: int = 8,
             config: GenerationConfig | None = None, on_error: str = "stop", progress: Any = None,
             **decoding: Any) -> list[dict[str, Any]]:
    """Generate with any model or route: ``prompts`` are texts, conversations, records (``{id, prompt | messages,
    ...}``) or the path of a JSONL file of records. Returns one record per prompt (``output``, ``finish_reason``,
    ``usage``, ``route``, ``provenance`` ...); with ``output`` they are appended to that JSONL file as each batch
    finishes, and ``resume`` skips ids already there (what ``alignkit generate`` does)."""
    from alignkit.generation import generate_records

    records = _records(prompts, on_error)
    m = model if hasattr(model, "generate") else load(model)
    cfg = decoding_config(m, config, **decoding)
    return generate_records(m, records, cfg, output=output, resume=resume, batch_size=batch_size,
                            progress=progress)


def _as_record(i: int, p: Any) -> dict[str, Any]:
    from alignkit.records import check_record

    if isinstance(p, Mapping):
        rec = dict(p)
        rec.setdefault("id", i)
    elif isinstance(p, str):
        rec = {"id": i, "prompt": p}
    else:
        rec = {"id": i, "messages": [m if isinstance(m, Mapping) else {"role": m.role, "content": m.content} for m in p]}
    problem = check_record(rec)
    if problem:
        raise InputError(f"prompt {i}: {problem}")
    return rec


def dera_sweep(ref: Any, aligned: Any, prompts: Iterable[Prompt | Mapping[str, Any]] | str, *,
               output: str | Path, lams: str | Sequence[float] = "0,0.25,0.5,0.75,1,1.25", ref_method: str = "none",
               aligned_method: str = "auto", resources: Resources | None = None, progress: Any = None,
               **options: Any) -> SweepResult:
    """DeRa at several lambdas between ``ref`` and ``aligned``: each lambda's answers go to ``output/lam-X.jsonl``
    (resumable), with their length, refusal, runaway and repetition rates, the exact KL to the reference and -- with
    ``scorer=SPEC`` -- scores and a recommended lambda (``judge=SPEC`` adds judge scores). Sides given as specs are
    prompted by ``ref_method`` / ``aligned_method`` (as ``alignkit dera sweep``); route trees or models are used as
    they are. ``options``: the other :class:`~alignkit.sweep.SweepJob` fields (``max_new_tokens``, ``temperature``,
    ``seed``, ``scorer``, ``validation_share``, ``kl``, ``judge`` ...)."""
    from alignkit.sweep import SweepJob, SweepResult, run_sweep, sweep_sides
    from alignkit.validate import check_mapping

    lam_text = lams if isinstance(lams, str) else ",".join(f"{float(x):g}" for x in lams)
    fields_ = {"ref": _label(ref), "aligned": _label(aligned), "lams": lam_text, "output": str(output),
               "ref_method": ref_method, "aligned_method": aligned_method, **options}
    job = SweepJob(**check_mapping(SweepJob, fields_, what="dera_sweep options"))
    records = _records(prompts)
    res = resources if resources is not None else _new_resources()
    ref_m, aligned_m, method = sweep_sides(ref, aligned, res, ref_method=ref_method, aligned_method=aligned_method,
                                           template=job.template)
    summary = run_sweep(job, ref_m, aligned_m, records, res, labels={"aligned_method": method},
                        progress=progress or _silent())
    return SweepResult(summary, Path(output))


def weight_sweep(route: Any, prompts: Iterable[Prompt | Mapping[str, Any]] | str, *, output: str | Path,
                 values: str | Sequence[float], knob: str | None = None, reference: float = 0.0,
                 resources: Resources | None = None, progress: Any = None, **options: Any) -> SweepResult:
    """One weight of a route at several values: ``route`` (a tree, its dict form, a route file or a built model)
    has a weighted root -- dera (``lam``), proxy/dexperts (``alpha``), eft (``alpha``, ``beta``), mix (``model 0``
    ...), args (``weight``); ``knob`` names the weight (default: the only one). Each value's answers go to
    ``output/KNOB-VALUE.jsonl`` (resumable) with their length, refusal, runaway and repetition rates, the exact KL to
    the route at ``reference`` (not for args, whose tokens are chosen by a score that is no distribution) and --
    with ``scorer=SPEC`` -- scores and a recommended value. ``options``: the other
    :class:`~alignkit.sweep.KnobSweepJob` fields (``max_new_tokens``, ``temperature``, ``seed``, ``scorer``,
    ``validation_share``, ``kl``, ``judge`` ...). As ``alignkit sweep``."""
    from alignkit.sweep import KnobSweepJob, SweepResult, run_knob_sweep
    from alignkit.validate import check_mapping

    value_text = values if isinstance(values, str) else ",".join(f"{float(x):g}" for x in values)
    fields_ = {"route": _label(route), "values": value_text, "knob": knob, "reference": reference,
               "output": str(output), **options}
    job = KnobSweepJob(**check_mapping(KnobSweepJob, fields_, what="sweep options"))
    records = _records(prompts)
    res = resources if resources is not None else _new_resources()
    model = route if hasattr(route, "generate") else load(route, resources=res)
    summary = run_knob_sweep(job, model, records, res, progress=progress or _silent())
    return SweepResult(summary, Path(output))


def _label(model: Any) -> str:
    if isinstance(model, str):
        return model
    if isinstance(model, Mapping):
        import json

        return json.dumps(dict(model))
    return str(getattr(model, "tree", None) or getattr(model, "spec", model))


def _silent() -> Any:
    from alignkit.progress import SILENT

    return SILENT


def _records(prompts: Any, on_error: str = "stop") -> list[dict[str, Any]]:
    """Records from a JSONL file (bad lines reported; ``on_error="skip"`` skips them) or from prompts/records."""
    from alignkit.records import parse_records

    if isinstance(prompts, (str, Path)):
        return [r for _, r in parse_records(str(prompts), on_error)]
    return [_as_record(i, p) for i, p in enumerate(prompts)]


# ----------------------------------------------------------------------------- data tools
def data_load(path_or_name: str, kind: str = "sft") -> list[dict[str, Any]]:
    """The records of an SFT (``kind="sft"``: ``{id, messages}``) or preference (``"prefs"``: ``{id, prompt,
    chosen, rejected}``) data set -- a JSONL/JSON/YAML file or a shipped name (``alignkit-sft``) -- every bad record
    reported at once (what ``alignkit data validate`` checks)."""
    from alignkit.training.data import load as load_data

    loaded = load_data(path_or_name, kind)
    loaded.raise_if_problems("nothing was loaded")
    return [dict(r.data) for r in loaded.records]


def data_answers(teacher: Any, prompts: Any, output: str | Path, *, batch_size: int = 8, keep_truncated: bool = False,
                 config: GenerationConfig | None = None, progress: Any = None, **decoding: Any) -> dict[str, int]:
    """SFT records from a teacher (any model or route): one ``{id, messages}`` per usable answer, appended to
    ``output`` (ids already there skipped; empty and runaway answers dropped with the reason) -- ``alignkit data
    answers``. Returns the counts (written, skipped, dropped)."""
    from alignkit.training.synth import synthesize_answers

    model = teacher if hasattr(teacher, "generate") else load(teacher)
    return synthesize_answers(_records(prompts), model, decoding_config(model, config, **decoding), str(output),
                              batch_size=batch_size, keep_truncated=keep_truncated, report=lambda m: None,
                              progress=progress or _silent())


def data_pairs(chosen: Any, rejected: Any, prompts: Any, output: str | Path, *, batch_size: int = 8,
               keep_truncated: bool = False, progress: Any = None, **decoding: Any) -> dict[str, int]:
    """Preference pairs from two routes: per prompt, the ``chosen`` route's answer over the ``rejected`` one's
    (``alignkit data pairs``), appended to ``output``; returns the counts."""
    from alignkit.training.synth import synthesize_pairs

    good = chosen if hasattr(chosen, "generate") else load(chosen)
    bad = rejected if hasattr(rejected, "generate") else load(rejected)
    return synthesize_pairs(_records(prompts), good, bad, decoding_config(good, None, **decoding),
                            decoding_config(bad, None, **decoding), str(output), batch_size=batch_size,
                            keep_truncated=keep_truncated, report=lambda m: None, progress=progress or _silent())


def data_ranked_pairs(model: Any, prompts: Any, output: str | Path, *, scorer: str | Scorer, k: int = 4,
                      pick: str = "worst", min_margin: float = 0.0, batch_size: int = 8, seed: int = 0,
                      progress: Any = None, **decoding: Any) -> dict[str, int]:
    """AI-feedback pairs (``alignkit data pairs --rank-by``): ``k`` sampled answers per prompt from one route, rated
    by ``scorer`` (a spec or a scorer); the best is chosen, the worst (or a random lower one) rejected."""
    from alignkit.training.synth import synthesize_ranked_pairs

    m = model if hasattr(model, "generate") else load(model)
    rater = open_scorer(scorer) if isinstance(scorer, str) else scorer
    return synthesize_ranked_pairs(_records(prompts), m, decoding_config(m, None, **decoding), rater, str(output),
                                   k=k, pick=pick, min_margin=min_margin, batch_size=batch_size, seed=seed,
                                   report=lambda msg: None, progress=progress or _silent())


# ----------------------------------------------------------------------------- analysis and evaluation
def shift(base: Any, aligned: Any, *, prompts: Sequence[str] | None = None, answers: Sequence[str] | None = None,
          input: str | None = None, ids: Sequence[str] | None = None, output: str | Path | None = None,
          resume: bool = False, label: str | None = None, max_new_tokens: int = 256,
          resources: Resources | None = None, **options: Any) -> ShiftResult:
    """The token-distribution shift of ``aligned`` against ``base``: the base model runs over the aligned model's
    answers -- given (``answers``, one per prompt), or generated greedily from ``prompts`` -- and every answer
    position gets the base rank of the answer token, both probabilities, both KL directions and its shift class.
    ``input``: a JSONL file as ``alignkit shift`` reads. ``options``: :class:`~alignkit.analysis.shift.ShiftOptions`
    fields (``context``, ``top_k``, ``mode``, ``batch_size``, ``released_kl_k``, and ``layers`` -- ``True`` (every 4th
    layer and the last), ``"all"``, ``"every:N"`` or ``"6,12,18"`` -- for the logit lens of both models by layer:
    :meth:`ShiftResult.layers`)."""
    from alignkit.analysis.layers import DEFAULT_LAYERS
    from alignkit.analysis.result import ShiftResult
    from alignkit.analysis.run import done_keys, read_items, run_items, shift_label
    from alignkit.analysis.shift import ShiftAnalyzer, ShiftOptions
    from alignkit.io import JsonlAppender, complete_records, nonempty
    from alignkit.validate import check_mapping

    if isinstance(options.get("layers"), bool):  # layers=True: the default reading; False: none
        options["layers"] = DEFAULT_LAYERS if options["layers"] else ""
    sopts = ShiftOptions(**check_mapping(ShiftOptions, options, what="shift options"))
    items = _shift_items(prompts, answers, input, ids, read_items)
    res = resources if resources is not None else _new_resources()
    base_m = base if hasattr(base, "generate") else load(base, resources=res)
    aligned_m = aligned if hasattr(aligned, "generate") else load(aligned, resources=res)
    name = label or shift_label(aligned_m, aligned if isinstance(aligned, str) else aligned_m.spec)
    analyzer = ShiftAnalyzer(base_m, aligned_m, label=name, options=sopts,
                             template=getattr(aligned_m, "template", None))
    if output is None:
        records: list[dict[str, Any]] = []
        run_items(analyzer, aligned_m, items, max_new_tokens, records.append)
        return ShiftResult(records)
    if not resume and nonempty(output):
        raise InputError(f"output file {str(output)!r} already has records; pass resume=True, or choose another file")
    done = done_keys(str(output)) if resume else set()
    todo = [it for it in items if (name, it[0]) not in done]
    with JsonlAppender(output) as out:
        run_items(analyzer, aligned_m, todo, max_new_tokens, out.write)
    return ShiftResult(complete_records(output))


def _shift_items(prompts, answers, input, ids, read_items) -> list[Any]:
    if input is not None:
        if prompts is not None or answers is not None:
            raise InputError("give input=FILE or prompts=[...] (with answers=[...]), not both")
        return read_items(input)
    if prompts is None:
        raise InputError("shift needs prompts=[...] (and optionally answers=[...]) or input=FILE")
    prompts = list(prompts)
    if answers is not None and len(answers) != len(prompts):
        raise InputError(f"{len(prompts)} prompts but {len(answers)} answers")
    ids = [str(i) for i in (ids if ids is not None else range(len(prompts)))]
    if len(ids) != len(prompts) or len(set(ids)) != len(ids):
        raise InputError("ids must be unique, one per prompt")
    return [(i, p, None if answers is None else answers[k], {}) for k, (i, p) in enumerate(zip(ids, prompts))]


def evaluate(contestants: Mapping[str, Any], *, instructions: str = "alignkit-eval", judge: Any = None,
             output: str | Path | None = None, resources: Resources | None = None, progress: Any = None,
             **config: Any) -> EvalReport:
    """Compare contestants (name -> spec, route tree or loaded model) on one instruction set: each answers
    (resumably, into ``output``, a temporary folder if none), ``judge`` (a spec, or None for the judge-free
    metrics only) scores them, and the report compares them. ``config``: the eval config's other keys
    (``limit``, ``types``, ``max_new_tokens``, ``rubric``, ``pairwise_baseline`` ...)."""
    from alignkit.evaluation.harness import Contestant, EvalConfig, Harness
    from alignkit.evaluation.result import EvalReport
    from alignkit.progress import SILENT

    if not contestants:
        raise InputError("evaluate needs at least one contestant (name -> model)")
    folder = str(output) if output is not None else tempfile.mkdtemp(prefix="alignkit-eval-")
    if judge is not None and not isinstance(judge, str):
        raise InputError("judge: give the judge's model spec (a string), or None for the judge-free metrics")
    cs = []
    for name, m in contestants.items():
        if isinstance(m, str):
            cs.append(Contestant(name=str(name), model=m))
        elif isinstance(m, Mapping):
            cs.append(Contestant.from_dict({"name": name, "route": dict(m)}))
        else:
            cs.append(Contestant(name=str(name), model=getattr(m, "spec", str(m)), route=m))
    cfg = EvalConfig.from_dict({"contestants": [], "judge": judge or "none", "instructions": instructions,
                                "output": folder, **config}, contestants=tuple(cs))
    res = resources if resources is not None else _new_resources()
    summary = Harness(cfg, res, progress=lambda m: None, tracker=progress or SILENT).run()
    return EvalReport(summary, Path(folder))
