"""Every figure in the measured tables of the README and the docs pages comes from a committed result file.

A measured table is one whose preceding lines (up to 15, within its section) say "Measured" or cite a result
file (``docs/.../*.json``), or whose "source" column cites one. It must cite at least one file, and every number in its
cells (but the first column, which names the row, the header, and text in backticks) must appear in one of the
cited files -- as the same value at the precision shown, or as a share shown in per cent. A table whose numbers
were typed in by hand fails here. The generated result pages (docs/results/NAME.md) are checked like the rest.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
CITE = re.compile(r"(docs/[\w./-]+\.json)")
NUMBER = re.compile(r"(?<![\w.])(-?\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?)(%?)")  # a sign belongs to its number


def _tables(lines: list[str]) -> list[tuple[int, list[str]]]:
    out, i = [], 0
    while i < len(lines):
        if lines[i].startswith("|"):
            j = i
            while j < len(lines) and lines[j].startswith("|"):
                j += 1
            out.append((i, lines[i:j]))
            i = j
        else:
            i += 1
    return out


def _context(lines: list[str], start: int) -> str:
    before = []
    for k in range(start - 1, max(-1, start - 16), -1):
        if lines[k].startswith("#"):
            break
        before.append(lines[k])
    return "\n".join(reversed(before))


def _values(obj) -> list[float]:
    if isinstance(obj, bool):
        return []
    if isinstance(obj, (int, float)):
        return [float(obj)]
    if isinstance(obj, dict):
        return [v for x in obj.values() for v in _values(x)]
    if isinstance(obj, list):
        return [v for x in obj for v in _values(x)]
    if isinstance(obj, str):  # numbers kept as text, e.g. "16/16"
        return [float(m.replace(",", "")) for m, _ in NUMBER.findall(obj)]
    return []


def _found(text: str, percent: bool, values: list[float]) -> bool:
    x = float(text.replace(",", ""))
    if "e" in text:  # scientific notation: the value itself
        return any(abs(v - x) <= 1e-9 * max(1.0, abs(x)) for v in values)
    decimals = len(text.split(".")[1]) if "." in text else 0
    for v in values:
        for scaled in ((v, v * 100) if percent else (v,)):
            if round(scaled, decimals) == x or (decimals == 0 and round(scaled) == x):
                return True
    return False


def _cells(row: str) -> list[str]:
    return [c.strip() for c in row.strip().strip("|").split("|")]


def _measured(page: Path) -> list[tuple[str, list[str], int, list[str]]]:
    lines = page.read_text(encoding="utf-8").splitlines()
    name = str(page.relative_to(ROOT))
    return [(name, lines, start, rows) for start, rows in _tables(lines)
            if "Measured" in _context(lines, start) or CITE.search(_context(lines, start))
            or ("source" in _cells(rows[0]) and CITE.search("\n".join(rows)))]


MEASURED = [m for page in PAGES for m in _measured(page)]  # read once: tests and their ids see the same text


def test_the_readme_and_the_guides_have_measured_tables():
    pages = {name for name, *_ in MEASURED}
    assert "README.md" in pages and sum(n.startswith("docs/guides/") for n in pages) >= 5
    assert len([m for m in MEASURED if not m[0].startswith("docs/results/")]) >= 20


@pytest.mark.parametrize("page, lines, start, rows", MEASURED, ids=[f"{n}:{s + 1}" for n, _, s, _ in MEASURED])
def test_every_number_of_a_measured_table_is_in_its_cited_file(page, lines, start, rows):
    cited = CITE.findall(_context(lines, start)) + CITE.findall("\n".join(rows))
    assert cited, f"the table at {page} line {start + 1} cites no result file (docs/.../*.json)"
    values: list[float] = []
    for path in cited:
        f = ROOT / path
        assert f.is_file(), f"{page} line {start + 1} cites {path}, which is not committed"
        values += _values(json.loads(f.read_text(encoding="utf-8")))
    missing = []
    for row in rows[2:]:  # header and separator
        for cell in _cells(row)[1:]:
            cell = re.sub(r"`[^`]*`", "", cell).replace("*", "")
            for text, pct in NUMBER.findall(cell):
                if not _found(text, bool(pct), values):
                    missing.append(f"{text}{pct} (in {cell!r})")
    assert not missing, f"{page} table at line {start + 1}: not in {', '.join(cited)}: {'; '.join(missing)}"
