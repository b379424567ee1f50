"""``alignkit merge OUTPUT``: join the finished shards of a sharded job (see :mod:`alignkit.sharding`)."""

from __future__ import annotations

import argparse
import json
import sys

from alignkit.sharding import merge


def add_parser(sub) -> None:
    p = sub.add_parser(
        "merge",
        help="join the finished shards of a job run with --shard I/N",
        description="Check and merge the shards of OUTPUT (the --output the sharded command was given: a file, or "
        "eval's folder). Every shard must have finished (its manifest beside OUTPUT), all made by one command "
        "from one input; every record must sit in the shard its id belongs to, none twice, none missing where the "
        "command writes every id. The merged file(s) are written atomically in input order; nothing is written "
        "when a check fails. The shard files are kept.",
    )
    p.add_argument("output", help="the --output the sharded runs were given")
    p.add_argument("--force", action="store_true", help="replace merged output that exists already")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    summary = merge(args.output, force=args.force, say=lambda m: print(f"alignkit merge: {m}", file=sys.stderr))
    if summary["command"] == "eval":
        print("alignkit merge: now build the report: alignkit eval --config CONFIG (every answer and judgment is "
              "already there, so it only writes the report)", file=sys.stderr)
    if args.json:
        print(json.dumps(summary, indent=2))
    return 0
