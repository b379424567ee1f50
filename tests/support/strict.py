"""Strict CI: under ``ALIGNKIT_STRICT=1`` a skipped test is a failed test.

A green CI must mean every test ran. A test skipped because a package, a model or a tool is missing hides a
gap, so in strict mode every skip -- at collection (a module-level ``importorskip``) or at run time, whatever
its reason -- is reported as a failure naming that reason. A case a backend does not support is tested for what
it does instead (e.g. a clear refusal), not skipped.

``make test`` (and therefore ``.ci/run``) sets ``ALIGNKIT_STRICT=1``; a developer running ``pytest`` by hand
without it keeps the usual skips.
"""

from __future__ import annotations

import os

import pytest


def strict() -> bool:
    return os.environ.get("ALIGNKIT_STRICT", "") not in ("", "0")


def _reason(report) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


def _fail_if_undesigned(report) -> None:
    if not strict() or not report.skipped or hasattr(report, "wasxfail"):
        return
    report.outcome = "failed"
    report.longrepr = f"strict CI (ALIGNKIT_STRICT=1): a skip is a failure; this one was: {_reason(report)}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _fail_if_undesigned(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _fail_if_undesigned(outcome.get_result())


def pytest_report_header(config):
    return "alignkit strict mode: " + ("on (every skip fails)" if strict() else "off")
