"""``alignkit eval``: contestants answer one instruction set, one judge scores them, a report compares them."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from alignkit.api import resources
from alignkit.cli._common import add_quiet, log_warnings_to_stderr, progress_for
from alignkit.cli._config import read_yaml_mapping
from alignkit.evaluation.harness import EvalConfig, Harness, run_shard
from alignkit.models.registry import ModelOptions, ModelPool


def add_parser(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="compare models and alignment methods on one instruction set with one LLM judge",
        description="Run an evaluation described by a YAML config: contestants (model + method + parameters) answer "
        "the instructions (resumable), a judge scores every answer on five aspects (safety prompts on safety) with "
        "retries and a cache, optionally compares each contestant with a baseline pairwise in both orders, and "
        "writes report.json, report.md, report.html and radar.png. Unreadable judge scores are counted as missing, "
        "never guessed.",
    )
    p.add_argument("--config", required=True, help="YAML: instructions, limit, contestants [{name, model, method, "
                   "k, template, ref, lam}], judge, judge_method, pairwise_baseline, output, ...")
    p.add_argument("--output", help="output folder (overrides the config's)")
    p.add_argument("--limit", type=int, help="use the first N instructions (overrides the config's)")
    p.add_argument("--shard", metavar="I/N", help="do only shard I of N of the instructions (from 0), answering and "
                   "judging into OUTPUT.shard-I-of-N/; `alignkit merge OUTPUT` joins the finished shards, then this "
                   "command without --shard writes the report (`alignkit shards` does all of it)")
    add_quiet(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    log_warnings_to_stderr()
    data = read_yaml_mapping(args.config)
    if args.output:
        data["output"] = args.output
    if args.limit is not None:
        data["limit"] = args.limit
    cfg = EvalConfig.from_dict(data)
    if getattr(args, "shard", None):
        return _run_shard(args, cfg)
    report = Harness(cfg, resources(pool=ModelPool(ModelOptions())), progress=lambda m: None, tracker=progress_for(args)).run()
    print((Path(cfg.output) / "report.md").read_text())
    missing = {n: sum(s.get("missing", {}).values()) for n, s in report["summary"].items()}
    print(f"alignkit eval: report in {cfg.output}/ (report.md, report.html, report.json, radar.png); "
          f"unreadable judge scores: {missing}", file=sys.stderr)
    return 0



def _run_shard(args: argparse.Namespace, cfg) -> int:
    manifest = run_shard(cfg, args.config, args.shard, resources(pool=ModelPool(ModelOptions())), tracker=progress_for(args),
                         say=lambda m: print(f"alignkit eval: {m}", file=sys.stderr))
    print(f"alignkit eval: shard finished: {manifest}", file=sys.stderr)
    return 0
