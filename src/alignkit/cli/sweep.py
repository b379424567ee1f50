"""``alignkit sweep``: generate with a weighted route (DeRa, proxy-tuning, EFT, DExperts, a mix, ARGS) at several
values of one weight and compare them -- judge-free metrics, the exact KL to the route at a reference value, a
scorer's mean and a recommended value, a plot."""

from __future__ import annotations

import argparse
import sys

from alignkit.api import resources
from alignkit.cli._common import add_quiet, log_warnings_to_stderr, progress_for
from alignkit.cli._config import add_dataclass_arguments, build, load_config_file
from alignkit.cli.dera import table
from alignkit.methods.tree import build as build_tree
from alignkit.methods.tree import load_tree
from alignkit.models.registry import ModelOptions
from alignkit.records import parse_records
from alignkit.sweep import KnobSweepJob, parse_values, run_knob_sweep


def add_parser(sub) -> None:
    p = sub.add_parser("sweep", help="sweep one weight of a route (dera lam, proxy/eft alpha, a mix's weights, "
                       "args weight)", description="Generate with the route at each value of one weight of its root "
                       "node (resumable: ids already written are skipped), then print per-value statistics -- answer "
                       "length, refusal, runaway and repetition rates, the exact KL per token to the route at "
                       "--reference, a scorer's mean and the recommended value -- and save summary.json and sweep.png. "
                       "E.g. proxy-tuning's alpha: --route proxy.yaml --values 0,0.5,1,1.5,2.")
    p.add_argument("--config", help="YAML file of options (flags override it)")
    add_dataclass_arguments(p, KnobSweepJob)
    add_dataclass_arguments(p, ModelOptions, group="model options")
    add_quiet(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    log_warnings_to_stderr()
    file_values = load_config_file(args.config, KnobSweepJob, ModelOptions)
    job: KnobSweepJob = build(KnobSweepJob, args, file_values)
    options: ModelOptions = build(ModelOptions, args, file_values)
    parse_values(job.values)
    records = [r for _, r in parse_records(job.input, "stop")]
    res = resources(options)
    model = build_tree(load_tree(job.route), res)
    summary = run_knob_sweep(job, model, records, res, progress=progress_for(args),
                             say=lambda m: print(f"alignkit sweep: {m}", file=sys.stderr))
    table(summary)
    return 0
