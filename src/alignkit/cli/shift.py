"""``alignkit shift``: run a base model over an aligned model's answers and measure, token by token, where
their distributions differ; JSONL per answer, a summary, and an HTML report."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from typing import Any

from alignkit.analysis.aggregate import summarize
from alignkit.analysis.report import write_report
from alignkit.analysis.run import done_keys, read_items, run_items, shift_label
from alignkit.analysis.shift import ShiftAnalyzer, ShiftOptions
from alignkit.api import resources
from alignkit.cli._common import Sharding, add_quiet, log_warnings_to_stderr, progress_for, start_shard
from alignkit.cli._config import add_dataclass_arguments, build, load_config_file
from alignkit.errors import InputError
from alignkit.io import JsonlAppender, complete_records, nonempty
from alignkit.methods import MethodOptions, tree_from_options
from alignkit.methods.tree import build as build_tree
from alignkit.methods.tree import load_tree
from alignkit.models.catalog import DEFAULT_MODEL
from alignkit.models.registry import ModelOptions, ModelPool


@dataclass(frozen=True)
class ShiftJob:
    input: str = field(default="", metadata={
        "help": "JSONL: records with an id and an 'instruction' (or 'prompt'); an 'answer' (or 'output') if the "
                "aligned model's answers exist already; optional 'category'", "required": True})
    output: str = field(default="", metadata={"help": "JSONL of per-position results, one record per answer",
                                              "required": True})
    base: str = field(default=DEFAULT_MODEL, metadata={"help": "the base model spec"})
    aligned: tuple[str, ...] = field(default=(), metadata={"help": "an aligned model spec (default: the base model "
                                                                   "itself, aligned in context)"})
    aligned_method: tuple[str, ...] = field(default=(), metadata={
        "help": "how to talk to each --aligned model, in order: urial, template, none, auto or dera (default: "
                "auto; with no --aligned, urial)"})
    ref: str | None = field(default=None, metadata={"help": "with --aligned-method dera: the reference model"})
    lam: float | None = field(default=None, metadata={"min": 0, "help": "with --aligned-method dera: lambda"})
    template: str | None = field(default=None, metadata={"help": "in-context alignment template for urial models"})
    rewriter: str | None = field(default=None, metadata={
        "help": "route stage BPO in front of every aligned model: a rewriter model spec (see `generate --help`)"})
    rewriter_layout: str | None = field(default=None, metadata={"help": "the rewriter's layout"})
    corrector: str | None = field(default=None, metadata={
        "help": "route stage Aligner behind every aligned model: a corrector model spec; the aligned model's "
                "distribution is then the corrector's, given the question and the upstream answer"})
    corrector_layout: str | None = field(default=None, metadata={"help": "the corrector's layout"})
    route: tuple[str, ...] = field(default=(), metadata={
        "help": "an aligned route tree from a YAML or JSON file (any composition of methods: see "
                "docs/concepts/route-trees.md), analysed like an --aligned model; with --route only, no --aligned runs"})
    report: str | None = field(default=None, metadata={"help": "write the HTML report here (figures beside it)"})
    max_new_tokens: int = field(default=256, metadata={"min": 1, "help": "answer length when the aligned model generates"})
    resume: bool = field(default=False, metadata={"help": "skip answers already in the output file"})
    json: bool = field(default=False, metadata={"help": "print the summary as JSON on stdout"})


def add_parser(sub) -> None:
    p = sub.add_parser(
        "shift",
        help="token-distribution-shift analysis: what alignment changes, token by token",
        description="Run the base model over the aligned model's answers (generated first, greedy, when the input "
        "has only instructions) and measure at every answer position the base rank of the answer token, both "
        "probabilities, KL(aligned || base), both entropies and top-k; positions are unshifted (base rank 0), "
        "marginal (1-2) or shifted (>= 3). Example: alignkit shift --base gemma-3-270m --aligned gemma-3-270m "
        "--aligned-method urial --input instructions.jsonl --output shift.jsonl --report shift.html",
    )
    p.add_argument("--config", help="YAML file of options (flags override it)")
    add_dataclass_arguments(p, ShiftJob)
    add_dataclass_arguments(p, ShiftOptions, group="analysis")
    add_dataclass_arguments(p, ModelOptions, group="model options")
    add_dataclass_arguments(p, Sharding, group="sharding")
    add_quiet(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    log_warnings_to_stderr()
    file_values = load_config_file(args.config, ShiftJob, ShiftOptions, ModelOptions, Sharding)
    job: ShiftJob = build(ShiftJob, args, file_values)
    sopts: ShiftOptions = build(ShiftOptions, args, file_values)
    mopts: ModelOptions = build(ModelOptions, args, file_values)
    items = read_items(job.input)
    specs = list(job.aligned) or ([] if job.route else [job.base])
    methods = list(job.aligned_method) or (["urial"] if not job.aligned else ["auto"])
    if len(methods) == 1:
        methods = methods * len(specs)
    if job.route and job.aligned_method and not job.aligned:
        raise InputError("--aligned-method applies to --aligned models; a --route file says how its models are prompted")
    methods = methods if specs else []
    if len(methods) != len(specs):
        raise InputError(f"{len(specs)} --aligned model(s) but {len(methods)} --aligned-method value(s)")
    if len(specs) + len(job.route) > 1 and any(a is not None for _, _, a, _ in items):
        raise InputError("the input carries answers, which belong to one aligned model; give one --aligned")

    shard, output = start_shard(build(Sharding, args, file_values), "shift", job.input, job.output,
                                [it[0] for it in items], {"output": {"key": ["aligned", "id"], "complete": True}},
                                options=(job, sopts, mopts))
    if shard is not None:
        mine = set(shard.ids)
        items = [it for it in items if it[0] in mine]
    model = ModelPool(mopts)  # one copy of each model in memory, however many roles it plays

    base = model(job.base)
    done = done_keys(output) if job.resume else set()
    if not job.resume and nonempty(output):
        raise InputError(f"output file {output!r} already has records; pass --resume, or choose another file")
    trees = [(spec, tree_from_options(spec, MethodOptions(
        method=method, template=job.template if method == "urial" else None, ref=job.ref if method == "dera" else None,
        lam=job.lam if method == "dera" else None, rewriter=job.rewriter, rewriter_layout=job.rewriter_layout,
        corrector=job.corrector, corrector_layout=job.corrector_layout))) for spec, method in zip(specs, methods)]
    trees += [(path, load_tree(path)) for path in job.route]  # every file checked before a model runs
    with JsonlAppender(output) as out:
        for spec, tree in trees:
            aligned = build_tree(tree, resources(pool=model))
            label = shift_label(aligned, spec)
            analyzer = ShiftAnalyzer(base, aligned, label=label, options=sopts,
                                     template=getattr(aligned, "template", None))
            todo = [it for it in items if (label, it[0]) not in done]
            with progress_for(args).task(f"shift {label}", len(todo)) as advance:
                run_items(analyzer, aligned, todo, job.max_new_tokens, out.write, advance)
    records = complete_records(output)
    summary = summarize(records)
    if shard is not None:
        print(f"alignkit shift: shard finished: {shard.finish({'answers': len(items)})}; the report is written "
              "from the merged output (alignkit merge, then this command without --shard, with --resume)",
              file=sys.stderr)
    elif job.report:
        prov = {"base": job.base, "aligned": [f"{m}:{s}" for s, m in zip(specs, methods)] + list(job.route),
                **sopts.__dict__}
        path = write_report(records, summary, job.report, prov)
        print(f"alignkit shift: report written to {path}", file=sys.stderr)
    if job.json:
        print(json.dumps({lab: {k: v for k, v in s.items() if k != "curves"} for lab, s in summary.items()}, indent=2))
    else:
        _print_table(summary)
    return 0


def _print_table(summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="token-distribution shift")
    for col in ("aligned model", "answers", "positions", "unshifted", "marginal", "shifted", "KL(A‖B)", "KL(B‖A)"):
        t.add_column(col)
    for lab, s in summary.items():
        t.add_row(lab, str(s["answers"]), str(s["positions"]), f"{s['unshifted']:.1%}", f"{s['marginal']:.1%}",
                  f"{s['shifted']:.1%}", f"{s['mean_kl']:.3f}",
                  "n/a" if s.get("mean_kl_base_aligned") is None else f"{s['mean_kl_base_aligned']:.3f}")
    Console().print(t)
    for lab, s in summary.items():
        toks = ", ".join(f"{t!r}×{n}" for t, n in s["top_shifted_tokens"][:12])
        print(f"{lab}: most frequent shifted tokens: {toks}")
        print(f"{lab}: {_classes_line(s)}")


def _classes_line(s: dict[str, Any]) -> str:
    """Style vs content among the shifted positions, next to all positions (analysis/tokens.py's rule)."""
    tc = s.get("token_classes")
    if not tc:
        return "token classes: n/a"
    sh, al = tc["shifted"], tc["all"]
    return (f"shifted positions by token class: markup {sh['markup']:.0%}, function/discourse words "
            f"{sh['function']:.0%}, content {sh['content']:.0%} (all positions: {al['markup']:.0%} / "
            f"{al['function']:.0%} / {al['content']:.0%}; rule: alignkit/analysis/tokens.py)")
