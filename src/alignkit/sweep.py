"""Sweeps of a weighted route: generate at several values of its weight (DeRa's lambda, proxy-tuning's alpha, EFT's
alpha or beta, a mix's weights, ARGS's reward weight), rate each value's answers (judge-free metrics, the exact KL
to the route at a reference value, a scorer, a judge) and recommend one -- to choose alignment strength without
retraining. ``alignkit dera sweep`` / :func:`alignkit.dera_sweep` (DeRa between two models) and ``alignkit sweep`` /
:func:`alignkit.weight_sweep` (any weighted route tree) run here."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignkit.errors import InputError
from alignkit.evaluation.cheap import answer_metrics
from alignkit.evaluation.judge import Judge, JudgeCache, load_rubric
from alignkit.io import JsonlAppender, written_ids
from alignkit.methods import SIDE_METHODS, MethodOptions, dera_side, recommended_repetition_penalty
from alignkit.methods.tree import build, is_route_file, load_tree, node, parse
from alignkit.methods.wrappers import auto_method
from alignkit.progress import SILENT, Progress
from alignkit.records import record_prompt
from alignkit.resumable import generate_into, provenance_of
from alignkit.scoring import parse_spec, score_records
from alignkit.training.reward import held_out
from alignkit.types import GenerationConfig


@dataclass(frozen=True)
class SweepOptions:
    """What every sweep takes: the prompts, the folder, decoding, and how the answers are rated."""

    input: str = field(default="", metadata={"help": "JSONL of records with an id and a prompt or messages", "required": True})
    output: str = field(default="", metadata={"help": "folder for one JSONL per value, summary.json and sweep.png",
                                              "required": True})
    max_new_tokens: int = field(default=256, metadata={"min": 1, "help": "most tokens per answer"})
    temperature: float = field(default=0.0, metadata={"min": 0, "help": "sampling temperature (0: greedy)"})
    seed: int | None = field(default=None, metadata={"help": "random seed when sampling"})
    batch_size: int = field(default=8, metadata={"min": 1, "help": "prompts generated together"})
    judge: str | None = field(default=None, metadata={
        "help": "judge model spec: adds per-value judge scores (multi-aspect rubric; unreadable scores are counted "
                "as missing, never guessed)"})
    judge_method: str = field(default="auto", metadata={"help": "how the judge is prompted",
                                                        "choices": ["template", "none", "auto"]})
    scorer: str | None = field(default=None, metadata={
        "help": "rate every answer with this scorer (reward:PATH_OR_HUB, judge:MODEL, geval:MODEL) and recommend a "
                "value: the best mean score on the validation split (among values within one standard error of "
                "it, the one closest to the reference by KL)"})
    validation_share: float = field(default=0.5, metadata={"gt": 0, "max": 1,
        "help": "--scorer: share of the prompts (by a hash of the id) that chooses the value; the rest reports its "
                "score (1: choose and report on all prompts)"})
    kl: bool = field(default=True, metadata={
        "help": "measure the KL to the reference (DeRa: lambda 0; a route: --reference) per token on each value's "
                "own answers (exact, full vocabulary; --no-kl skips it)"})


@dataclass(frozen=True)
class SweepJob(SweepOptions):
    """``alignkit dera sweep``: DeRa between two models at several lambdas."""

    ref: str = field(default="", metadata={
        "help": "the reference model spec: DeRa's theory (lambda emulates KL strength beta/lambda) covers an SFT model "
                "as reference and its DPO/RLHF version as --aligned; other pairings (a base model, the same model in "
                "context) are a heuristic interpolation; or a route-tree file (.yaml/.json), used as it is written",
        "required": True})
    aligned: str = field(default="", metadata={"help": "the aligned model spec, or a route-tree file (.yaml/.json) "
                                                       "used as it is written (e.g. a model aligned in context)",
                                               "required": True})
    lams: str = field(default="0,0.25,0.5,0.75,1,1.25", metadata={"help": "comma-separated lambdas to try"})
    ref_method: str = field(default="none", metadata={"help": "how the reference model is prompted",
                                                      "choices": list(SIDE_METHODS)})
    aligned_method: str = field(default="auto", metadata={"help": "how the aligned model is prompted",
                                                          "choices": list(SIDE_METHODS)})
    template: str | None = field(default=None, metadata={"help": "template when a side uses urial"})


@dataclass(frozen=True)
class KnobSweepJob(SweepOptions):
    """``alignkit sweep``: one weight of a route tree (its root node: dera, proxy, eft, dexperts, mix, args) at
    several values."""

    route: str = field(default="", metadata={
        "help": "the route tree (a YAML or JSON file) whose root is a weighted node: dera (lam), proxy / dexperts "
                "(alpha), eft (alpha, beta), mix (one weight per model: 'model 0', 'model 1' ...), args (weight)",
        "required": True})
    values: str = field(default="", metadata={"help": "comma-separated values of the weight to try",
                                              "required": True})
    knob: str | None = field(default=None, metadata={
        "help": "which weight to sweep (default: the route's only weight; EFT and a mix have several: name one)"})
    reference: float = field(default=0.0, metadata={
        "help": "the KL is measured to the route at this value of the weight (default 0: proxy/EFT/DExperts' base "
                "model, DeRa's reference)"})


def parse_lams(text: str) -> list[float]:
    """The lambdas of ``--lams`` (comma-separated numbers >= 0)."""
    try:
        lams = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"--lams must be comma-separated numbers, got {text!r}") from None
    bad = [x for x in lams if not math.isfinite(x) or x < 0]
    if not lams or bad:
        raise InputError(f"--lams needs numbers >= 0; got {text!r}")
    return lams


def sweep_sides(ref: Any, aligned: Any, resources: Any, *, ref_method: str = "none", aligned_method: str = "auto",
                template: str | None = None) -> tuple[Any, Any, str]:
    """DeRa's two sides for a sweep: a model spec is prompted by its side's method, exactly as ``--method dera`` does
    (:func:`alignkit.methods.dera_side`); a route-tree file, a tree or a loaded model is used as it is. Returns
    ``(ref, aligned, the aligned side's method)``."""
    options = MethodOptions(template=template, ref_method=ref_method, aligned_method=aligned_method)

    def side(x: Any, method: str) -> Any:
        if is_route_file(x):
            return build(load_tree(x), resources)
        if isinstance(x, str):
            return build(dera_side(x, method, options), resources)
        return build(parse(x) if isinstance(x, Mapping) else x, resources)

    method = aligned_method if isinstance(aligned, str) and not is_route_file(aligned) else "as given"
    if method == "auto":
        method = auto_method(resources(aligned), "none")
    return side(ref, ref_method), side(aligned, aligned_method), method


def run_sweep(job: SweepJob, ref: Any, aligned: Any, records: Sequence[dict[str, Any]], resources: Any, *,
              labels: dict[str, str] | None = None, progress: Progress = SILENT,
              say: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """Generate with DeRa between ``ref`` and ``aligned`` (each a model or route) at every lambda of
    ``job.lams`` into ``job.output`` (one resumable JSONL per lambda), rate the answers (``job.scorer``, the KL to
    the reference, ``job.judge``), write ``summary.json`` and ``sweep.png``, and return the summary. ``resources``
    (:func:`alignkit.resources`) loads the judge and opens the scorer. ``labels``: the summary's ``ref``, ``aligned``
    and ``aligned_method`` (default: the job's)."""
    from alignkit.methods.dera import DeRa  # torch

    variants = [(lam, DeRa(ref, aligned, lam)) for lam in parse_lams(job.lams)]
    summary: dict[str, Any] = {"ref": job.ref, "aligned": job.aligned, "ref_method": job.ref_method,
                               "aligned_method": job.aligned_method, **(labels or {})}
    return _sweep(job, variants, records, resources, summary, name="lam", word="lambda", what="dera",
                  kl_of=lambda model, prompts, conts: model.kl_to_reference(prompts, conts), progress=progress, say=say)


def parse_values(text: str, flag: str = "--values") -> list[float]:
    """The numbers of a comma-separated list (finite; at least one)."""
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"{flag} must be comma-separated numbers, got {text!r}") from None
    if not values or not all(math.isfinite(x) for x in values):
        raise InputError(f"{flag} needs finite numbers; got {text!r}")
    return values


def weighted_root(model: Any, knob: str | None) -> str:
    """The weight of a route's root node that a sweep varies: ``knob`` checked against the node's weights, or its
    only weight; a clear error for a route whose root has none or several."""
    knobs = model.knobs() if callable(getattr(model, "knobs", None)) else None
    if not knobs:
        raise InputError(f"a sweep varies a weight of the route's root node (dera, proxy, eft, dexperts, mix, args); "
                         f"this route's root is {getattr(model, 'method', None) or model.spec!r}, which has none")
    if knob is None:
        if len(knobs) > 1:
            raise InputError(f"the route's root ({model.method}) has several weights ({', '.join(knobs)}): name one "
                             "with --knob")
        return next(iter(knobs))
    if knob not in knobs:
        raise InputError(f"the route's root ({model.method}) has no weight {knob!r}; its weights are "
                         f"{', '.join(knobs)}")
    return knob


def run_knob_sweep(job: KnobSweepJob, model: Any, records: Sequence[dict[str, Any]], resources: Any, *,
                   progress: Progress = SILENT, say: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """Generate with the weighted route ``model`` (a built tree whose root is a logit mix or ARGS) at every value of
    ``job.values`` of its weight ``job.knob`` into ``job.output`` (one resumable JSONL per value, named
    ``KNOB-VALUE.jsonl``), rate the answers (the exact KL to the route at ``job.reference``, ``job.scorer``,
    ``job.judge``), write ``summary.json`` and ``sweep.png``, and return the summary."""
    knob = weighted_root(model, job.knob)
    values = parse_values(job.values)
    variants = [(v, model.with_knobs({knob: v})) for v in values]
    reference = model.with_knobs({knob: job.reference})
    kl_of = None
    if getattr(model, "scores_its_decoding", True):
        def kl_of(m: Any, prompts: Any, conts: Any) -> list[tuple[float, int]]:
            return m.kl_to(reference, prompts, conts)
    summary: dict[str, Any] = {"route": job.route, "method": model.method, "knob": knob, "weights": model.knobs(),
                               "reference": {knob: job.reference}}
    if kl_of is None:
        summary["kl_note"] = (f"not measured: {model.method} chooses tokens by a score that is not a distribution "
                              "the model can be scored under")
    return _sweep(job, variants, records, resources, summary, name=knob, word=knob, what=model.method,
                  kl_of=kl_of, progress=progress, say=say)


def _sweep(job: SweepOptions, variants: Sequence[tuple[float, Any]], records: Sequence[dict[str, Any]],
           resources: Any, summary: dict[str, Any], *, name: str, word: str, what: str,
           kl_of: Callable[[Any, Any, Any], list[tuple[float, int]]] | None, progress: Progress,
           say: Callable[[str], None]) -> dict[str, Any]:
    """The loop every sweep shares: each ``(value, model)`` generates into ``NAME-VALUE.jsonl`` (resumable), its
    statistics, scores, KL (``kl_of(model, prompts, token ids)``) and judge scores go under the summary's ``lams``
    (DeRa) or ``values``."""
    out_dir = Path(job.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    if job.scorer:
        parse_spec(job.scorer)
    scorer = None
    key = "lams" if name == "lam" else "values"
    summary[key] = {}
    for value, model in variants:
        path = out_dir / f"{name}-{value:g}.jsonl"
        done = written_ids(path)
        cfg = GenerationConfig(max_new_tokens=job.max_new_tokens, temperature=job.temperature, seed=job.seed,
                               repetition_penalty=recommended_repetition_penalty(model))
        prov = provenance_of(model, cfg)

        def row(rec: dict[str, Any], comp: Any, value: float = value, prov: dict[str, Any] = prov) -> dict[str, Any]:
            return {**rec, name: value, "output": comp.text, "finish_reason": comp.finish_reason,
                    "token_ids": list(comp.token_ids or ()),
                    "metrics": answer_metrics(comp.text, comp.finish_reason, comp.completion_tokens), "provenance": prov}

        made = generate_into(model, records, cfg, to_record=row, output=path, batch_size=job.batch_size,
                             progress=progress, label=f"{what} {word} {value:g}")
        say(f"{word} {value:g}: {len(made)} new, {len(done)} already in {path}")
        summary[key][f"{value:g}"] = _stats(path)
        if job.scorer or (job.kl and kl_of is not None):
            if job.scorer and scorer is None:
                scorer = resources.scorer(job.scorer)
            summary[key][f"{value:g}"].update(_rate(job, model, scorer, path, progress,
                                                    kl_of if job.kl else None))
        if job.judge:
            summary[key][f"{value:g}"]["judge"] = _judge(job, resources, path, out_dir, records)
    if job.judge:
        summary["judge"] = job.judge
    if scorer is not None:
        summary["scorer"] = scorer.info()
        summary["validation_share"] = job.validation_share
        summary["recommendation"] = recommend(summary[key], name)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    _plot(summary, out_dir / "sweep.png")
    return summary


def _rate(job: SweepOptions, model: Any, scorer: Any, path: Path, progress: Progress,
          kl_of: Callable[[Any, Any, Any], list[tuple[float, int]]] | None) -> dict[str, Any]:
    """Score and KL (``kl_of``; None: not measured) of one value's answers, kept per id in ``NAME-X.scores.jsonl``
    (resumable), and their means on the validation and test splits."""
    recs = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    spath = path.with_suffix(".scores.jsonl")
    have = {}
    if spath.exists():
        for line in spath.read_text().splitlines():
            try:
                row = json.loads(line)
                have[str(row["id"])] = row
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a torn last line: that id is rated again
    todo = [r for r in recs if str(r["id"]) not in have]
    with JsonlAppender(spath) as out, progress.task("rate answers", len(todo)) as advance:
        for start in range(0, len(todo), job.batch_size):
            batch = todo[start : start + job.batch_size]
            prompts = [record_prompt(r) for r in batch]
            scores = score_records(scorer, list(zip(prompts, [r["output"] for r in batch]))) if scorer else [None] * len(batch)
            kls: list[tuple[float, int] | None] = [None] * len(batch)
            if kl_of is not None:
                conts = [r.get("token_ids") or model.encode(r["output"]) for r in batch]
                kls = kl_of(model, prompts, conts)
            for r, sc, kl in zip(batch, scores, kls):
                row = {"id": r["id"], **(sc.to_dict() if sc else {})}
                if kl is not None:
                    row["kl_sum"], row["kl_tokens"] = round(kl[0], 6), kl[1]
                out.write(row)
                have[str(r["id"])] = row
            advance(len(batch))
    rows = [have[str(r["id"])] for r in recs]
    share = job.validation_share

    def means(part: list[dict[str, Any]]) -> dict[str, Any]:
        vals = [x["score"] for x in part if x.get("score") is not None]
        n = len(vals)
        mean = sum(vals) / n if n else None
        sd = (sum((v - mean) ** 2 for v in vals) / (n - 1)) ** 0.5 if n > 1 else None
        toks = sum(x.get("kl_tokens", 0) for x in part)
        return {"answers": len(part), "rated": n, "mean_score": mean,
                "stderr": sd / n ** 0.5 if sd is not None else None,
                "kl_per_token": (sum(x.get("kl_sum", 0.0) for x in part) / toks) if toks else (0.0 if kl_of else None)}

    val = [x for x in rows if share >= 1 or held_out(x["id"], share)]
    test = [x for x in rows if not (share >= 1 or held_out(x["id"], share))]
    return {"all": means(rows), "validation": means(val), "test": means(test) if test else None}


def recommend(lams: dict[str, Any], name: str = "lam") -> dict[str, Any] | None:
    """The value (``name``: DeRa's lambda, a route's weight) with the best mean validation score; among those
    within one standard error of the best, the one with the smallest KL to the reference (the least realignment
    that does as well)."""
    rated = [(lam, s["validation"]) for lam, s in lams.items()
             if s.get("validation") and s["validation"]["mean_score"] is not None]
    if not rated:
        return None
    best_lam, best = max(rated, key=lambda x: x[1]["mean_score"])
    bar = best["mean_score"] - (best["stderr"] or 0.0)
    near = [(lam, v) for lam, v in rated if v["mean_score"] >= bar]
    lam, v = min(near, key=lambda x: (x[1]["kl_per_token"] if x[1]["kl_per_token"] is not None else 0.0, float(x[0])))
    test = lams[lam].get("test")
    return {name: float(lam), "validation_score": v["mean_score"], "kl_per_token": v["kl_per_token"],
            f"best_validation_{name}": float(best_lam), "best_validation_score": best["mean_score"],
            "test_score": test["mean_score"] if test else None,
            "rule": "best mean validation score; within one standard error of it, the smallest KL to the reference"}


def _judge(job: SweepOptions, load, path: Path, out_dir: Path, records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean judge score per aspect for one lambda's answers (judgments cached in the output folder)."""
    judge = Judge(build(node(job.judge_method, model=job.judge), load), load_rubric("multi-aspect"),
                  cache=JudgeCache(out_dir / "judge-cache.jsonl"))
    recs = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    text = {str(r["id"]): (r["prompt"] if "prompt" in r else r["messages"][-1]["content"]) for r in records}
    results = judge.judge([{"instruction": text[str(r["id"])], "answer": r["output"]} for r in recs])
    scores: dict[str, list[int]] = {a: [] for a in judge.rubric.aspects}
    missing = 0
    for res in results:
        for a, v in res["result"].items():
            if v["score"] is None:
                missing += 1
            else:
                scores[a].append(v["score"])
    total = missing + sum(len(v) for v in scores.values())
    return {"mean": {a: (sum(v) / len(v) if v else None) for a, v in scores.items()},
            "missing_share": missing / total if total else 0.0, "rubric_hash": judge.rubric.hash}


def _stats(path: Path) -> dict[str, Any]:
    recs = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    m = [r["metrics"] for r in recs]
    n = len(m) or 1
    return {"answers": len(m), "mean_tokens": sum(x["tokens"] for x in m) / n,
            "refusal_rate": sum(x["refusal"] for x in m) / n, "runaway_rate": sum(x["runaway"] for x in m) / n,
            "mean_repetition": sum(x["repetition"] for x in m) / n, "empty_rate": sum(x["empty"] for x in m) / n}


def _plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dera = "lams" in summary
    by_value = summary["lams"] if dera else summary["values"]
    sym = "λ" if dera else summary["knob"]
    lams = [float(x) for x in by_value]
    stats = list(by_value.values())
    rated = [(lam, s["all"]) for lam, s in zip(lams, stats) if s.get("all") and s["all"].get("mean_score") is not None
             and s["all"].get("kl_per_token") is not None]
    if rated:
        fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(14, 3.6))
        xs, ys = [a["kl_per_token"] for _, a in rated], [a["mean_score"] for _, a in rated]
        a3.errorbar(xs, ys, yerr=[a["stderr"] or 0.0 for _, a in rated], marker="o", capsize=3)
        for (lam, _), x, y in zip(rated, xs, ys):
            a3.annotate(f"{sym}={lam:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        rec = summary.get("recommendation")
        if rec:
            a3.set_title(f"recommended {sym} = {rec['lam' if dera else summary['knob']]:g}", fontsize=9)
        a3.set_xlabel(f"KL(π_{sym} ‖ π_ref) per token")
        a3.set_ylabel(f"mean score ({summary.get('scorer', {}).get('spec', 'scorer')})", fontsize=8)
        a3.grid(alpha=0.3)
    else:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.4))
    a1.plot(lams, [s["mean_tokens"] for s in stats], marker="o")
    a1.set_xlabel("lambda" if dera else summary["knob"])
    a1.set_ylabel("mean answer length (tokens)")
    for key, label in (("refusal_rate", "refusal"), ("runaway_rate", "runaway"), ("mean_repetition", "repetition")):
        a2.plot(lams, [s[key] for s in stats], marker="o", label=label)
    a2.set_xlabel("lambda" if dera else summary["knob"])
    a2.set_ylabel("rate")
    a2.set_ylim(-0.02, 1.02)
    a2.legend()
    for ax in (a1, a2):
        ax.axvline(1.0, color="#999", linewidth=0.8, linestyle="--")
        ax.grid(alpha=0.3)
    if dera:
        fig.suptitle(f"DeRa sweep: {summary['aligned']} ({summary['aligned_method']}) vs {summary['ref']}", fontsize=10)
    else:
        fig.suptitle(f"{summary['method']} sweep of {summary['knob']}: {summary['route']} (KL to {sym} = "
                     f"{summary['reference'][summary['knob']]:g})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


class SweepResult:
    """What :func:`alignkit.dera_sweep` and :func:`alignkit.weight_sweep` return: ``summary`` (summary.json's), ``folder``
    and a table with a row per value (DeRa: per lambda)."""

    def __init__(self, summary: dict[str, Any], folder: Path) -> None:
        self.summary, self.folder = summary, folder

    @property
    def recommendation(self) -> dict[str, Any] | None:
        """The recommended value and why (when a scorer rated the answers)."""
        return self.summary.get("recommendation")

    def table(self) -> Any:
        """A pandas DataFrame, one row per value (indexed by ``lambda`` for DeRa, else by the weight's name):
        answers, length, refusal/runaway/repetition rates, and the KL to the reference and the scores where they
        were measured."""
        import pandas as pd

        dera = "lams" in self.summary
        index = "lambda" if dera else self.summary["knob"]
        rows = []
        for lam, s in (self.summary["lams"] if dera else self.summary["values"]).items():
            row = {index: float(lam), **{k: v for k, v in s.items() if isinstance(v, (int, float))}}
            for part in ("all", "validation", "test"):
                for k, v in (s.get(part) or {}).items():
                    row[f"{part}_{k}"] = v
            rows.append(row)
        return pd.DataFrame(rows).set_index(index)

    def _repr_html_(self) -> str:
        return self.table()._repr_html_()
