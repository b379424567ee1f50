"""The ``alignkit`` command. Each subcommand lives in its own module with ``add_parser`` and ``run``."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from alignkit.errors import AlignkitError
from alignkit.version import __version__

#: subcommand -> module (imported lazily so `alignkit --help` stays fast and torch-free)
COMMANDS = {
    "models": "alignkit.cli.models",
    "generate": "alignkit.cli.generate",
    "chat": "alignkit.cli.chat",
    "shift": "alignkit.cli.shift",
    "serve": "alignkit.cli.serve",
    "dera": "alignkit.cli.dera",
    "sweep": "alignkit.cli.sweep",
    "eval": "alignkit.cli.eval",
    "train": "alignkit.cli.train",
    "data": "alignkit.cli.data",
    "shards": "alignkit.cli.shards",
    "merge": "alignkit.cli.merge",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alignkit",
        description="Align language models cheaply and see what alignment changes.",
        epilog="Run `alignkit COMMAND --help` for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"alignkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS.values():
        importlib.import_module(module).add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI in-process; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _quiet_libraries()
    try:
        return int(args.func(args) or 0)
    except AlignkitError as e:
        print(f"alignkit {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"alignkit {args.command}: interrupted", file=sys.stderr)
        return 130


def _quiet_libraries() -> None:
    """transformers' warnings and progress bars off, by the environment variables it reads when it is imported
    (importing it here would cost ~1 s for commands that never use it, e.g. on the llama.cpp backend)."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' and the hub's progress bars
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if "transformers" in sys.modules:  # already imported (the CLI run in-process): set it directly, it is cheap now
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()


def entrypoint() -> None:
    sys.exit(main())
