"""``alignkit data``: validate, clean, select and synthesise training data."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignkit.api import open_scorer
from alignkit.cli import data_routes
from alignkit.cli._common import Decoding, Sharding, add_quiet, open_model, progress_for, start_shard
from alignkit.cli._config import add_dataclass_arguments, build, load_config_file
from alignkit.errors import InputError
from alignkit.io import JsonlAppender
from alignkit.methods import MethodOptions, apply_method
from alignkit.methods.retrieval import EMBEDDER, default_embedder
from alignkit.models.catalog import DEFAULT_MODEL
from alignkit.models.registry import ModelOptions, ModelPool
from alignkit.records import parse_records
from alignkit.scoring import parse_spec
from alignkit.training import data
from alignkit.training.common import Recipe, Tuning
from alignkit.training.synth import synthesize_answers, synthesize_pairs, synthesize_ranked_pairs
from alignkit.types import as_messages


@dataclass(frozen=True)
class ValidateJob:
    input: str = field(default="", metadata={"help": "JSONL file (or shipped set name) to check", "required": True})
    kind: str = field(default="sft", metadata={"help": "record kind", "choices": ["sft", "prefs"]})


@dataclass(frozen=True)
class CleanJob:
    input: str = field(default="", metadata={"help": "JSONL file (or shipped set name)", "required": True})
    output: str = field(default="", metadata={"help": "JSONL file for the records kept", "required": True})
    kind: str = field(default="sft", metadata={"help": "record kind", "choices": ["sft", "prefs"]})
    removed: str | None = field(default=None, metadata={
        "help": "JSONL file for the records removed, each with its reason (nothing is lost)"})
    near_duplicate: float = field(default=0.8, metadata={"gt": 0, "max": 1,
        "help": "word 3-gram Jaccard similarity at or above which a record is a near duplicate of an earlier one "
                "(1 turns it off)"})
    min_words: int = field(default=1, metadata={"min": 0, "help": "fewest words in the answer"})
    max_words: int = field(default=2000, metadata={"min": 1, "help": "most words in the answer"})
    skip_bad: bool = field(default=False, metadata={
        "help": "drop malformed records (listed, and written to --removed) instead of stopping"})


@dataclass(frozen=True)
class SelectJob:
    input: str = field(default="", metadata={"help": "JSONL pool (or shipped set name)", "required": True})
    output: str = field(default="", metadata={"help": "JSONL file for the selected records", "required": True})
    n: int = field(default=0, metadata={"min": 1, "help": "how many records to select", "required": True})
    kind: str = field(default="sft", metadata={"help": "record kind", "choices": ["sft", "prefs"]})


@dataclass(frozen=True)
class AnswersJob:
    input: str = field(default="", metadata={
        "help": "JSONL of {id, prompt or messages ending with a user turn}", "required": True})
    output: str = field(default="", metadata={"help": "JSONL of SFT records (appended; rerun to resume)",
                                              "required": True})
    model: str = field(default=DEFAULT_MODEL, metadata={"help": "teacher model spec"})
    batch_size: int = field(default=8, metadata={"min": 1, "help": "prompts generated together"})
    keep_truncated: bool = field(default=False, metadata={
        "help": "keep answers that hit --max-new-tokens (dropped by default: they are runaway answers)"})


@dataclass(frozen=True)
class PairsJob:
    input: str = field(default="", metadata={
        "help": "JSONL of {id, prompt or messages ending with a user turn}", "required": True})
    output: str = field(default="", metadata={"help": "JSONL of preference records (appended; rerun to resume)",
                                              "required": True})
    chosen_model: str = field(default=DEFAULT_MODEL, metadata={"help": "model spec of the preferred route"})
    chosen_method: str = field(default="urial", metadata={
        "help": "how the preferred route is prompted", "choices": ["urial", "template", "none", "auto"]})
    chosen_template: str | None = field(default=None, metadata={"help": "template of a urial chosen route"})
    rejected_model: str | None = field(default=None, metadata={
        "help": "model spec of the dispreferred route (default: the chosen model)"})
    rejected_method: str = field(default="none", metadata={
        "help": "how the dispreferred route is prompted (none: the raw base continuation)",
        "choices": ["urial", "template", "none", "auto"]})
    rejected_template: str | None = field(default=None, metadata={"help": "template of a urial rejected route"})
    batch_size: int = field(default=8, metadata={"min": 1, "help": "prompts generated together"})
    keep_truncated: bool = field(default=False, metadata={
        "help": "keep chosen answers that hit --max-new-tokens (dropped by default)"})
    rank_by: str | None = field(default=None, metadata={
        "help": "AI-feedback pairs: sample --k answers per prompt from the chosen route and rank them with this "
                "scorer (reward:PATH_OR_HUB, judge:MODEL, geval:MODEL); chosen = the best, rejected = --pick. "
                "Needs --temperature > 0; the --rejected-* options do not apply"})
    k: int = field(default=4, metadata={"min": 2, "help": "--rank-by: answers sampled per prompt"})
    pick: str = field(default="worst", metadata={
        "help": "--rank-by: the rejected answer: the worst, or a random one of those at least --min-margin below "
                "the best", "choices": ["worst", "random-lower"]})
    min_margin: float = field(default=0.0, metadata={"min": 0,
        "help": "--rank-by: least score difference between chosen and rejected; prompts whose answers are closer "
                "(ties) are dropped with the reason"})
    removed: str | None = field(default=None, metadata={
        "help": "--rank-by: JSONL file for the prompts dropped (ties, unrated, too few answers) with their reason and "
                "all candidates"})


def add_parser(sub) -> None:
    p = sub.add_parser("data", help="training data tools: validate, clean, select, answers, pairs, convert, "
                       "bpo-pairs, aligner-triples, revise",
                       description="Tools for SFT records ({id, messages}) and preference records ({id, prompt, "
                       "chosen, rejected}); JSONL files, or the shipped set alignkit-sft.")
    s = p.add_subparsers(dest="data_command", metavar="COMMAND", required=True)
    specs = [
        ("validate", ValidateJob, run_validate, "check every record; problems are listed with line numbers",
         ()),
        ("clean", CleanJob, run_clean, "remove exact and near duplicates and answers outside length bounds", ()),
        ("select", SelectJob, run_select, "choose N diverse records by sentence embedding (farthest-point)", ()),
        ("answers", AnswersJob, run_answers, "synthesise SFT records: a teacher model/method answers prompts",
         (Decoding, MethodOptions, ModelOptions, Sharding)),
        ("pairs", PairsJob, run_pairs, "synthesise preference pairs: a preferred route vs a dispreferred route",
         (Decoding, ModelOptions, Sharding)),
    ]

    for name, job, func_name, helptext, extra in data_routes.SPECS:
        specs.append((name, job, _route_runner(getattr(data_routes, func_name)), helptext, extra))
    for name, job, func, helptext, extra in specs:
        sp = s.add_parser(name, help=helptext, description=helptext[0].upper() + helptext[1:] + ".")
        sp.add_argument("--config", help="YAML file of options (flags override it)")
        add_dataclass_arguments(sp, job)
        for cls in extra:
            group = {Decoding: "decoding", MethodOptions: "teacher's alignment method", ModelOptions: "model options",
                     Sharding: "sharding", Tuning: "what is trained", Recipe: "recipe (LIMA's optimiser)"}
            add_dataclass_arguments(sp, cls, group=group[cls])
        if extra:
            add_quiet(sp)
        sp.set_defaults(func=func, _job=job, _extra=extra)


def _route_runner(func):
    def run(args: argparse.Namespace) -> int:
        values, job = _job(args)
        return func(args, values, job)

    return run


def _job(args: argparse.Namespace):
    values = load_config_file(args.config, args._job, *args._extra)
    return values, build(args._job, args, values)


def run_validate(args: argparse.Namespace) -> int:
    _, job = _job(args)
    loaded = data.load(job.input, job.kind)
    if loaded.problems:
        print(f"{len(loaded.problems)} bad record(s), {len(loaded.records)} good, in {loaded.path}:\n"
              f"{data.format_problems(loaded.problems, limit=200)}", file=sys.stderr)
        return 1
    turns = [sum(1 for m in r.data.get("messages", []) if m["role"] == "assistant") for r in loaded.records]
    multi = sum(1 for t in turns if t > 1)
    print(f"{loaded.path}: {len(loaded.records)} {job.kind} records, all valid"
          + (f" ({multi} multi-turn)" if job.kind == "sft" else ""))
    return 0


def run_clean(args: argparse.Namespace) -> int:
    _, job = _job(args)
    if not (0 < job.near_duplicate <= 1):
        raise InputError(f"--near-duplicate must be in (0, 1], got {job.near_duplicate}")
    if job.min_words > job.max_words:
        raise InputError(f"--min-words {job.min_words} is more than --max-words {job.max_words}")
    _refuse_overwrite(job.output, job.removed)
    loaded = data.load(job.input, job.kind)
    if loaded.problems and not job.skip_bad:
        loaded.raise_if_problems("nothing written (pass --skip-bad to drop them)")
    kept, removed = data.clean(loaded.records, data.CleanOptions(job.near_duplicate, job.min_words, job.max_words))
    with JsonlAppender(job.output) as out:
        for r in kept:
            out.write(r.data)
    if job.removed:
        with JsonlAppender(job.removed) as out:
            for b in loaded.problems:
                out.write({"line": b.lineno, "reason": f"malformed: {b.reason}"})
            for r, why in removed:
                out.write({"line": r.lineno, "reason": why, "record": r.data})
    reasons: dict[str, int] = {}
    for _, why in removed:
        key = why.split(" (")[0].split(" of ")[0]
        reasons[key] = reasons.get(key, 0) + 1
    summary = ", ".join(f"{n} {k}" for k, n in sorted(reasons.items())) or "none"
    print(f"kept {len(kept)} of {len(loaded.records) + len(loaded.problems)} records; removed: {summary}"
          + (f"; {len(loaded.problems)} malformed" if loaded.problems else ""), file=sys.stderr)
    for r, why in removed[:20]:
        print(f"  {loaded.path}:{r.lineno}: {why}", file=sys.stderr)
    return 0


def run_select(args: argparse.Namespace) -> int:
    _, job = _job(args)
    _refuse_overwrite(job.output)
    loaded = data.load(job.input, job.kind)
    loaded.raise_if_problems("nothing selected")
    if job.n <= 0:
        raise InputError(f"--n must be positive, got {job.n}")
    chosen = data.select_diverse(loaded.records, job.n, default_embedder())
    with JsonlAppender(job.output) as out:
        for r in chosen:
            out.write({**r.data, "selection": {"from": job.input, "pool": len(loaded.records), "embedder": EMBEDDER}})
    print(f"selected {len(chosen)} of {len(loaded.records)} records into {job.output}", file=sys.stderr)
    return 0


def _prompts(path: str) -> list[dict]:
    records = [r for _, r in parse_records(path, "stop")]
    for r in records:
        if "messages" in r:
            msgs = as_messages(r["messages"])
            if msgs[-1].role != "user":
                raise InputError(f"record {r['id']!r}: a prompt conversation must end with a user turn")
    return records


def run_answers(args: argparse.Namespace) -> int:
    values, job = _job(args)
    decoding: Decoding = build(Decoding, args, values)
    method: MethodOptions = build(MethodOptions, args, values)
    options: ModelOptions = build(ModelOptions, args, values)
    shard, records, output, _ = _shard(args, values, "data answers", job, _prompts(job.input),
                                          options=(decoding, method, options))
    teacher = open_model(job.model, options, method)
    counts = synthesize_answers(records, teacher, decoding.config(teacher), output, batch_size=job.batch_size,
                                keep_truncated=job.keep_truncated, progress=progress_for(args))
    print(f"alignkit data answers: {json.dumps(counts)} -> {output}", file=sys.stderr)
    if shard is not None:
        print(f"alignkit data answers: shard finished: {shard.finish(counts)}", file=sys.stderr)
    return 0


def _shard(args: argparse.Namespace, values: dict, command: str, job: Any, records: list[dict],
           removed: str | None = None, options: tuple = ()):
    """(shard job or None, the records this run does, its output, its --removed file)."""
    files: dict[str, dict[str, Any]] = {"output": {"key": ["id"], "complete": False}}  # unusable answers drop
    if removed:
        files["removed"] = {"key": ["id"], "complete": False, "output": removed}
    shard, output = start_shard(build(Sharding, args, values), command, job.input, job.output,
                                [str(r["id"]) for r in records], files, (job, *options))
    if shard is None:
        return None, records, job.output, removed
    mine = set(shard.ids)
    return (shard, [r for r in records if str(r["id"]) in mine], output,
            shard.files["removed"]["target"] if removed else None)


def run_pairs(args: argparse.Namespace) -> int:
    values, job = _job(args)
    decoding: Decoding = build(Decoding, args, values)
    options: ModelOptions = build(ModelOptions, args, values)
    records = _prompts(job.input)
    if job.rank_by:
        return _ranked_pairs(args, values, job, decoding, options, records)
    shard, records, output, _ = _shard(args, values, "data pairs", job, records, options=(decoding, options))
    for name in ("k", "pick", "min_margin", "removed"):
        if getattr(job, name) != PairsJob.__dataclass_fields__[name].default:
            raise InputError(f"--{name.replace('_', '-')} applies to --rank-by only")
    chosen = open_model(job.chosen_model, options, MethodOptions(method=job.chosen_method,
                                                                 template=job.chosen_template))
    rejected_spec = job.rejected_model or job.chosen_model
    if rejected_spec == job.chosen_model:  # one copy of the weights, two ways of prompting it

        rejected = apply_method(chosen.base, MethodOptions(method=job.rejected_method, template=job.rejected_template))
    else:
        rejected = open_model(rejected_spec, options, MethodOptions(method=job.rejected_method,
                                                                    template=job.rejected_template))
    if (job.chosen_model, job.chosen_method, job.chosen_template) == (rejected_spec, job.rejected_method,
                                                                     job.rejected_template):
        raise InputError("the chosen and rejected routes are the same model and method; pairs need two routes")
    counts = synthesize_pairs(records, chosen, rejected, decoding.config(chosen), decoding.config(rejected),
                              output, batch_size=job.batch_size, keep_truncated=job.keep_truncated,
                              progress=progress_for(args))
    print(f"alignkit data pairs: {json.dumps(counts)} -> {output}", file=sys.stderr)
    if shard is not None:
        print(f"alignkit data pairs: shard finished: {shard.finish(counts)}", file=sys.stderr)
    return 0


def _ranked_pairs(args: argparse.Namespace, values: dict, job: PairsJob, decoding: Decoding, options: ModelOptions,
                  records: list[dict]) -> int:
    parse_spec(job.rank_by)  # a bad spec fails before any model loads
    defaults = PairsJob.__dataclass_fields__
    for name in ("rejected_model", "rejected_method", "rejected_template"):
        if getattr(job, name) != defaults[name].default:
            raise InputError(f"--{name.replace('_', '-')} does not apply to --rank-by (both answers come from the "
                             "chosen route, ranked by the scorer)")
    if decoding.temperature <= 0:
        raise InputError("--rank-by samples --k answers per prompt: give --temperature > 0 (e.g. 0.8); greedy "
                         "decoding would give the same answer k times")
    shard, records, output, removed = _shard(args, values, "data pairs", job, records, job.removed,
                                             (decoding, options))
    pool = ModelPool(options)

    route = apply_method(pool(job.chosen_model), MethodOptions(method=job.chosen_method,
                                                               template=job.chosen_template), pool)
    scorer = open_scorer(job.rank_by, pool, cache=Path(output).with_suffix(".judge-cache.jsonl")
                         if not job.rank_by.startswith("reward:") else None)
    counts = synthesize_ranked_pairs(records, route, decoding.config(route), scorer, output, k=job.k,
                                     pick=job.pick, min_margin=job.min_margin, batch_size=job.batch_size,
                                     keep_truncated=job.keep_truncated, removed=removed,
                                     seed=decoding.seed or 0, progress=progress_for(args))
    print(f"alignkit data pairs: {json.dumps(counts)} -> {output}", file=sys.stderr)
    if shard is not None:
        print(f"alignkit data pairs: shard finished: {shard.finish(counts)}", file=sys.stderr)
    return 0


def _refuse_overwrite(*paths: str | None) -> None:
    for p in paths:
        if p and Path(p).is_file() and Path(p).stat().st_size > 0:
            raise InputError(f"output file {p!r} already exists and is not empty; choose another file")


