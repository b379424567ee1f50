"""Rewrite docs/reference/cli.md from the CLI's parsers (alignkit.cli.reference)."""

from pathlib import Path

from alignkit.cli.reference import render

out = Path(__file__).resolve().parents[1] / "docs" / "reference" / "cli.md"
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text(render() + "\n", encoding="utf-8")
print(f"wrote {out}")
