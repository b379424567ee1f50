"""``alignkit dera sweep``: generate with DeRa at several lambdas and compare, to choose alignment strength
without retraining."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from alignkit.api import resources
from alignkit.cli._common import add_quiet, log_warnings_to_stderr, progress_for
from alignkit.cli._config import add_dataclass_arguments, build, load_config_file
from alignkit.models.registry import ModelOptions
from alignkit.records import parse_records
from alignkit.sweep import SweepJob, parse_lams, run_sweep, sweep_sides


def add_parser(sub) -> None:
    p = sub.add_parser("dera", help="decoding-time realignment: sweep lambda to choose alignment strength",
                       description="DeRa mixes a reference model and its aligned version token by token: "
                       "logits = lam * aligned + (1 - lam) * ref. Use --method dera --ref R --lam L on generate, "
                       "chat and serve; `alignkit dera sweep` compares several lambdas.")
    s = p.add_subparsers(dest="dera_command", metavar="COMMAND", required=True)
    sw = s.add_parser("sweep", help="generate with each lambda (resumable) and report per-lambda statistics",
                      description="Generate with each lambda (resumable: ids already written are skipped), then "
                      "print per-lambda statistics -- answer length, refusal rate, runaway rate (hit the token limit), "
                      "repetition -- as a table, and save summary.json and a plot.")
    sw.add_argument("--config", help="YAML file of options (flags override it)")
    add_dataclass_arguments(sw, SweepJob)
    add_dataclass_arguments(sw, ModelOptions, group="model options")
    add_quiet(sw)
    sw.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    def sweep(job: SweepJob, records: list[dict[str, Any]], res: Any, progress: Any, say: Any) -> dict[str, Any]:
        parse_lams(job.lams)
        # a spec's side exactly as --method dera makes it (one code path); a route file's side as it is written
        ref, aligned, aligned_method = sweep_sides(job.ref, job.aligned, res, ref_method=job.ref_method,
                                                   aligned_method=job.aligned_method, template=job.template)
        return run_sweep(job, ref, aligned, records, res, labels={"aligned_method": aligned_method},
                         progress=progress, say=say)

    return sweep_command(args, SweepJob, sweep, "alignkit dera sweep")


def sweep_command(args: argparse.Namespace, job_type: Any, sweep: Any, name: str) -> int:
    """What every sweep command does around its sweep: the options (flags over the config file), the records,
    the resources; then ``sweep(job, records, resources, progress, say)`` and its summary as a table."""
    log_warnings_to_stderr()
    file_values = load_config_file(args.config, job_type, ModelOptions)
    job = build(job_type, args, file_values)
    options: ModelOptions = build(ModelOptions, args, file_values)
    records = [r for _, r in parse_records(job.input, "stop")]
    summary = sweep(job, records, resources(options), progress_for(args),
                    lambda m: print(f"{name}: {m}", file=sys.stderr))
    table(summary)
    return 0


def table(summary: dict[str, Any]) -> None:
    """Print a sweep's summary as a table, a row per value (DeRa's lambdas or a route's weight)."""
    from rich.console import Console
    from rich.table import Table

    dera = "lams" in summary
    by_value = summary["lams"] if dera else summary["values"]
    name = "lambda" if dera else summary["knob"]
    t = Table(title="DeRa sweep (lambda 0: reference, 1: aligned)" if dera else
              f"{summary['method']} sweep of {name} (KL to {name} = {summary['reference'][summary['knob']]:g})")
    judged = "judge" in summary
    scored = "scorer" in summary
    kl = any((s.get("all") or {}).get("kl_per_token") is not None for s in by_value.values())
    for col in (name, "answers", "mean tokens", "refusal", "runaway", "repetition") + (
            ("judge: helpfulness", "judge: mean of aspects", "unreadable") if judged else ()) + (
            ("KL/token",) if kl else ()) + (("score (validation)", "score (test)", "unrated") if scored else ()):
        t.add_column(col)
    for lam, s in by_value.items():
        row = [lam, str(s["answers"]), f"{s['mean_tokens']:.1f}", f"{s['refusal_rate']:.0%}",
               f"{s['runaway_rate']:.0%}", f"{s['mean_repetition']:.2f}"]
        if judged:
            m = {k: v for k, v in s["judge"]["mean"].items() if v is not None}
            row += [f"{m['helpfulness']:.2f}" if "helpfulness" in m else "–",
                    f"{sum(m.values()) / len(m):.2f}" if m else "–", f"{s['judge']['missing_share']:.0%}"]
        if kl:
            k = (s.get("all") or {}).get("kl_per_token")
            row.append("–" if k is None else f"{k:.4f}")
        if scored:
            def fmt(part):
                return "–" if not part or part["mean_score"] is None else f"{part['mean_score']:.3f}"

            row += [fmt(s.get("validation")), fmt(s.get("test")),
                    str(s["all"]["answers"] - s["all"]["rated"]) if s.get("all") else "–"]
        t.add_row(*row)
    Console().print(t)
    rec = summary.get("recommendation")
    if rec:
        Console().print(f"recommended {name}: {rec['lam' if dera else summary['knob']]:g} (validation score {rec['validation_score']:.3f}, KL/token "
                        f"{rec['kl_per_token'] or 0:.4f}; {rec['rule']})")
