"""``alignkit sweep``: generate with a weighted route (DeRa, proxy-tuning, EFT, DExperts, a mix, ARGS) at several
values of one weight and compare them -- judge-free metrics, the exact KL to the route at a reference value, a
scorer's mean and a recommended value, a plot."""

from __future__ import annotations

import argparse
from typing import Any

from alignkit.cli._common import add_quiet
from alignkit.cli._config import add_dataclass_arguments
from alignkit.cli.dera import sweep_command
from alignkit.methods.tree import build as build_tree
from alignkit.methods.tree import load_tree
from alignkit.models.registry import ModelOptions
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
    def sweep(job: KnobSweepJob, records: list[dict[str, Any]], res: Any, progress: Any, say: Any) -> dict[str, Any]:
        parse_values(job.values)
        return run_knob_sweep(job, build_tree(load_tree(job.route), res), records, res, progress=progress, say=say)

    return sweep_command(args, KnobSweepJob, sweep, "alignkit sweep")
