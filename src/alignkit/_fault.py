"""Fault injection for the crash-safety tests: ``kill -9`` of the running process at a chosen point.

Set in the environment of a child process only (never in normal use):

* ``ALIGNKIT_FAULT_KILL_AFTER_RECORDS=N``: after N records have been appended by this process (any JSONL
  writer), the next record is written half-way -- a torn line, as a crash mid-write leaves it -- and the
  process kills itself with SIGKILL: no clean-up, no ``finally``, no flush beyond what was already on disk.
* ``ALIGNKIT_FAULT_KILL_AT_CHECKPOINT=STEP``: training kills itself with SIGKILL right after the checkpoint of
  optimiser step STEP is saved.

The point is determinism: a kill from outside lands wherever the scheduler happens to be, so a test could pass
without ever interrupting anything; these kill exactly where the test says.
"""

from __future__ import annotations

import os
import signal
from typing import IO

RECORDS = "ALIGNKIT_FAULT_KILL_AFTER_RECORDS"
CHECKPOINT = "ALIGNKIT_FAULT_KILL_AT_CHECKPOINT"
_written = 0


def _limit(name: str) -> int | None:
    value = os.environ.get(name, "")
    return int(value) if value.strip() else None


def kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def write_record(f: IO[str], line: str) -> None:
    """Write one JSONL line, unless the record limit is reached: then tear it and die."""
    global _written
    limit = _limit(RECORDS)
    if limit is not None and _written >= limit:
        f.write(line[: max(1, len(line) // 2)])
        f.flush()
        kill()
    f.write(line)
    _written += 1


def checkpoint_saved(step: int) -> None:
    at = _limit(CHECKPOINT)
    if at is not None and step == at:
        kill()
