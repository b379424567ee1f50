"""The command-line reference (docs/reference/cli.md), generated from the parsers themselves -- every command and
subcommand's ``--help`` -- so it cannot drift: ``python scripts/docs_pages.py`` rewrites it, and a test fails
when the committed page is not what the code says."""

from __future__ import annotations

import argparse
import os

from alignkit.cli.main import build_parser

WIDTH = "100"  # help is wrapped to a fixed width, whatever the terminal


def _subparsers(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser]]:
    out = []
    for action in parser._actions:  # argparse keeps subcommands only here
        if isinstance(action, argparse._SubParsersAction):
            out += list(action.choices.items())
    return out


def render() -> str:
    """The reference page: the top-level help, then each command's (nested commands under theirs)."""
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = WIDTH
    try:
        root = build_parser()
        parts = ["# Command-line reference", "",
                 "Generated from the parsers by `python scripts/docs_pages.py` (a test fails when it is stale). "
                 "Every option of every command, as `--help` prints it.", "", "```text", root.format_help().rstrip(),
                 "```", ""]

        def walk(prefix: str, parser: argparse.ArgumentParser, depth: int) -> None:
            for name, sub in _subparsers(parser):
                title = f"{prefix} {name}".strip()
                parts.extend([f"{'#' * min(depth, 4)} `alignkit {title}`", "", "```text",
                              sub.format_help().rstrip(), "```", ""])
                walk(title, sub, depth + 1)

        walk("", root, 2)
        return "\n".join(parts)
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old
