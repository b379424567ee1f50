"""Strict CI: under ``ALIGNKIT_STRICT=1`` a skipped test is a failed test.

A green CI must mean every test ran. A test skipped because a package, a model or a tool is missing hides a
gap, so in strict mode every skip -- at collection (a module-level ``importorskip``) or at run time -- is
reported as a failure naming its reason. Skips that are part of the design (a backend that has no chat
template has nothing to check there) say so: their reason starts with ``by design:``, and they stay skips.

``make test`` (and therefore ``.ci/run``) sets ``ALIGNKIT_STRICT=1``; a developer running ``pytest`` by hand
without it keeps the usual skips.
"""

from __future__ import annotations

import os

import pytest

DESIGNED = "by design:"


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
    reason = _reason(report)
    if reason.removeprefix("Skipped: ").startswith(DESIGNED):
        return
    report.outcome = "failed"
    report.longrepr = (f"strict CI (ALIGNKIT_STRICT=1): a skip is a failure unless it is part of the design; "
                       f"this one was: {reason}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _fail_if_undesigned(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _fail_if_undesigned(outcome.get_result())


def pytest_report_header(config):
    return "alignkit strict mode: " + ("on (skips fail unless 'by design:')" if strict() else "off")
