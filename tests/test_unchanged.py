"""Behaviour unchanged by the route-tree core: the fixed set of commands of :mod:`tests.support.golden` (generate
under each method and route, shift, a judge-free eval, a DeRa sweep, a served request) gives the records the code
before it gave (``tests/data/golden.json``, written by commit 14d9ed6's code on these same tiny models), apart from
the provenance, whose layout changed (it now records the route tree)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from tests.support.golden import normalise, run_all

GOLDEN = Path(__file__).parent / "data" / "golden.json"


def _differences(old, new, path="", out=None) -> list[str]:
    out = [] if out is None else out
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new)):
            if k not in old or k not in new:
                out.append(f"{path}/{k}: only in {'the golden records' if k in old else 'this run'}")
            else:
                _differences(old[k], new[k], f"{path}/{k}", out)
    elif isinstance(old, list) and isinstance(new, list):
        if len(old) != len(new):
            out.append(f"{path}: {len(old)} items then, {len(new)} now")
        for i, (a, b) in enumerate(zip(old, new)):
            _differences(a, b, f"{path}[{i}]", out)
    elif isinstance(old, float) or isinstance(new, float):
        if not (isinstance(old, (int, float)) and isinstance(new, (int, float))
                and math.isclose(old, new, rel_tol=1e-5, abs_tol=1e-6)):
            out.append(f"{path}: {old!r} then, {new!r} now")
    elif old != new:
        out.append(f"{path}: {str(old)[:120]!r} then, {str(new)[:120]!r} now")
    return out


def test_the_fixed_commands_give_the_records_they_gave_before(tiny_dir, tmp_path):
    tiny = {k: tiny_dir[k] for k in ("base", "aligned", "judge")}
    now = normalise(run_all(tiny, tmp_path / "work"), tiny, tmp_path / "work")
    golden = json.loads(GOLDEN.read_text(encoding="utf-8"))
    assert set(now) == set(golden)
    diffs = _differences(golden, now)
    assert diffs == [], "\n".join(diffs[:30])


def test_the_comparison_sees_a_change():
    assert _differences({"a": [1.0, "x"]}, {"a": [1.1, "x"]}) == ["/a[0]: 1.0 then, 1.1 now"]
    assert _differences({"a": 1}, {"b": 1}) == ["/a: only in the golden records", "/b: only in this run"]
