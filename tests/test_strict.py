"""The strict-CI switch itself: under ALIGNKIT_STRICT=1 every skip fails the run -- a missing dependency, a missing
tool, and a skip that calls itself part of the design; without the switch they are ordinary skips."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CASES = {
    "test_missing_module.py": "import pytest\npytest.importorskip('alignkit_no_such_package')\n"
                              "def test_never():\n    assert True\n",
    "test_missing_tool.py": "import pytest\ndef test_tool():\n    pytest.skip('chromium is not installed')\n",
    "test_designed.py": "import pytest\ndef test_designed():\n    pytest.skip('by design: no chat template')\n"
                        "def test_runs():\n    assert 1 + 1 == 2\n",
}


def _run(pytester: pytest.Pytester, strict: bool) -> tuple[int, str]:
    """Run pytest in a subprocess over the three cases, with the strict plugin loaded."""
    import subprocess

    pytester.makepyfile(**{name[:-3]: body for name, body in CASES.items()})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "ALIGNKIT_STRICT": "1" if strict else "0"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "tests.support.strict", "-q", "-rA",
                           "-p", "no:cacheprovider", "--continue-on-collection-errors", str(pytester.path)],
                          cwd=pytester.path, env=env, capture_output=True, text=True, timeout=120)
    return proc.returncode, proc.stdout + proc.stderr


def test_strict_mode_fails_on_a_missing_dependency(pytester):
    code, out = _run(pytester, strict=True)
    assert code != 0, out
    assert "alignkit_no_such_package" in out and "strict CI" in out
    assert "chromium is not installed" in out and "by design: no chat template" in out
    assert "2 failed" in out and "1 passed" in out and "skipped" not in out and "1 error" in out, out


def test_without_strict_mode_skips_stay_skips(pytester):
    code, out = _run(pytester, strict=False)
    assert code == 0, out
    assert "1 passed" in out and "3 skipped" in out, out
