"""The serving guide's table of other people's clients names, on every row, the test that runs that client against the
server; each named test file or function must exist (and `make test` runs them all, strictly)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_client_row_names_an_existing_test():
    text = (ROOT / "docs" / "guides" / "serve.md").read_text(encoding="utf-8")
    table = text.split("**Other people's clients, run in the tests**")[1].split("\n\n")[1]
    rows = [r for r in table.splitlines() if r.startswith("|")][2:]
    assert len(rows) >= 5
    sources = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "tests").rglob("test_*.py"))
    for row in rows:
        refs = re.findall(r"`([^`]+)`", row.split("|")[-2])
        assert refs, row
        for ref in refs:
            if ref.endswith(".py"):
                assert (ROOT / ref).is_file(), ref
            else:
                assert re.search(rf"def {re.escape(ref)}\(", sources), ref
