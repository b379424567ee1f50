"""docs/reference/cli.md is what the parsers say today (regenerate: python scripts/docs_pages.py)."""

from __future__ import annotations

from pathlib import Path

from alignkit.cli.reference import render

PAGE = Path(__file__).resolve().parents[2] / "docs" / "reference" / "cli.md"


def test_the_cli_reference_is_not_stale():
    page = PAGE.read_text(encoding="utf-8")
    assert page == render() + "\n", "docs/reference/cli.md is stale: run python scripts/docs_pages.py"
    for command in ("generate", "shift", "serve", "eval", "train sft", "data pairs", "dera sweep"):
        assert f"`alignkit {command}`" in page
    assert "--route" in page
