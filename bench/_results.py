"""Where benchmarks write what they measured: ``docs/results/NAME.json``, committed, and cited by the README and the docs pages
next to each table (tests/test_docs_numbers.py checks every figure against its file)."""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"


def timed(fn: Any) -> tuple[float, Any]:
    """``(seconds, result)`` of calling ``fn()`` once (wall clock)."""
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def write_result(name: str, result: dict[str, Any], *, path: str | None = None) -> Path:
    """Write ``result`` with how it was made (command, date, machine); returns the file."""
    out = Path(path) if path else RESULTS / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {**result, "_measured": {"command": " ".join(["python", *sys.argv]),
                                      "date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or
                                      platform.machine(), "cpus": _cpus()}}
    out.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {out}", file=sys.stderr)
    return out


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 0)
