"""Progress of long work on stderr -- counts, rate and ETA -- so stdout carries results only.

On a terminal it is a rich progress bar; when stderr is not a terminal (a log file, CI) it is a plain line at
most every few seconds and one at the end, so a long run is never silent; ``quiet`` turns both off.
Library functions take a :class:`Progress` (default: :data:`SILENT`); the CLI makes one per command from
``--quiet``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

Advance = Callable[[int], None]


class Progress:
    """Makes progress tasks: ``with progress.task("generate", total=20) as advance: ... advance(n)``."""

    def __init__(self, *, quiet: bool = False, stream: Any = None, every: float = 5.0) -> None:
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self.every = every

    @contextmanager
    def task(self, label: str, total: int) -> Iterator[Advance]:
        if self.quiet or total <= 0:
            yield lambda n=1: None
            return
        if getattr(self.stream, "isatty", lambda: False)():
            with self._rich(label, total) as advance:
                yield advance
            return
        with self._plain(label, total) as advance:
            yield advance

    @contextmanager
    def _rich(self, label: str, total: int) -> Iterator[Advance]:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as RichProgress

        bar = RichProgress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                           TaskProgressColumn(), TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
                           TextColumn("eta"), TimeRemainingColumn(), console=Console(file=self.stream),
                           transient=False)
        t0 = time.perf_counter()
        with bar:
            tid = bar.add_task(label, total=total, rate="")

            def advance(n: int = 1) -> None:
                bar.advance(tid, n)
                done = bar.tasks[0].completed
                bar.update(tid, rate=f"{done / max(time.perf_counter() - t0, 1e-9):.2f}/s")

            yield advance

    @contextmanager
    def _plain(self, label: str, total: int) -> Iterator[Advance]:
        t0 = last = time.perf_counter()
        done = 0

        def line() -> str:
            elapsed = time.perf_counter() - t0
            rate = done / elapsed if elapsed > 0 else 0.0
            eta = (total - done) / rate if rate > 0 else float("nan")
            eta_s = f"{eta:.0f}s" if eta == eta else "?"
            return f"{label}: {done}/{total} ({rate:.2f}/s, elapsed {elapsed:.0f}s, eta {eta_s})"

        def advance(n: int = 1) -> None:
            nonlocal done, last
            done += n
            now = time.perf_counter()
            if now - last >= self.every and done < total:
                last = now
                print(line(), file=self.stream, flush=True)

        try:
            yield advance
        finally:
            print(line(), file=self.stream, flush=True)


#: no output at all (the default for library calls)
SILENT = Progress(quiet=True)
