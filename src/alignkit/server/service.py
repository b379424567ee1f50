"""Server logic, independent of HTTP: a bounded queue of jobs, and one worker thread that batches the jobs
waiting at the same time onto the model (static batching: a batch runs until its last row finishes; jobs
that arrive meanwhile form the next batch). A job whose client went away is cancelled: its rows are dropped
from the running batch at the next step."""

from __future__ import annotations

import asyncio
import inspect
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from alignkit.types import Completion, GenerationConfig, Prompt

log = logging.getLogger("alignkit.server")


class Overloaded(Exception):
    """The queue is full (or the server is shutting down): answer 503 with Retry-After."""


@dataclass
class Job:
    prompts: list[Prompt]
    configs: list[GenerationConfig]
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    created: float = field(default_factory=time.monotonic)

    def push(self, item: Any) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, item)

    def cancel(self) -> None:
        self.cancelled.set()


@dataclass
class Stats:
    jobs: int = 0
    batches: int = 0
    rows: int = 0
    cancelled: int = 0
    rejected: int = 0
    max_batch_rows: int = 0


class Service:
    """Runs jobs on one model with batching; thread-safe ``submit`` from the event loop."""

    def __init__(self, model: Any, name: str, *, max_batch: int = 8, max_queue: int = 64,
                 batch_wait: float = 0.01) -> None:
        self.model, self.name = model, name
        self.max_batch, self.batch_wait = max(1, max_batch), batch_wait
        self._queue: queue.Queue[Job] = queue.Queue(maxsize=max(1, max_queue))
        self._stopping = threading.Event()
        self._worker: threading.Thread | None = None
        self.stats = Stats()
        self._held: Job | None = None
        self._can_cancel = "should_stop" in inspect.signature(model.stream).parameters or _accepts_kwargs(model.stream)

    # -------------------------------------------------------------- lifecycle
    def start(self) -> None:
        if self._worker is None:
            self._worker = threading.Thread(target=self._run, name="alignkit-batcher", daemon=True)
            self._worker.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop taking jobs, let the running batch finish (up to ``timeout``), refuse what is still queued."""
        self._stopping.set()
        if self._worker is not None:
            self._worker.join(timeout)
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            job.push(("error", Overloaded("the server is shutting down")))

    @property
    def accepting(self) -> bool:
        return not self._stopping.is_set()

    # -------------------------------------------------------------- submit
    def submit(self, prompts: list[Prompt], configs: list[GenerationConfig]) -> Job:
        if self._stopping.is_set():
            raise Overloaded("the server is shutting down")
        job = Job(prompts, configs, asyncio.get_running_loop())
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            self.stats.rejected += 1
            raise Overloaded(f"the queue is full ({self._queue.maxsize} requests waiting)") from None
        self.stats.jobs += 1
        return job

    # -------------------------------------------------------------- worker
    def _take_batch(self) -> list[Job]:
        """The next batch: the first waiting job, plus whatever else arrives within ``batch_wait`` and fits."""
        if self._held is not None:
            first, self._held = self._held, None
        else:
            try:
                first = self._queue.get(timeout=0.1)
            except queue.Empty:
                return []
        batch, rows = [first], len(first.prompts)
        deadline = time.monotonic() + self.batch_wait
        while rows < self.max_batch:
            try:
                job = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if rows + len(job.prompts) > self.max_batch:
                self._held = job  # first of the next batch
                break
            batch.append(job)
            rows += len(job.prompts)
        return [j for j in batch if not j.cancelled.is_set()]

    def _run(self) -> None:
        while not self._stopping.is_set():
            batch = self._take_batch()
            if batch:
                self._run_batch(batch)
        if self._held is not None:
            self._held.push(("error", Overloaded("the server is shutting down")))
            self._held = None

    def _run_batch(self, batch: list[Job]) -> None:
        rows: list[tuple[Job, int]] = [(job, i) for job in batch for i in range(len(job.prompts))]
        prompts = [job.prompts[i] for job, i in rows]
        configs = [job.configs[i] for job, i in rows]
        self.stats.batches += 1
        self.stats.rows += len(rows)
        self.stats.max_batch_rows = max(self.stats.max_batch_rows, len(rows))
        kwargs = {"should_stop": lambda r: rows[r][0].cancelled.is_set()} if self._can_cancel else {}
        try:
            events = self.model.stream(prompts, configs, **kwargs)
            for ev in events:
                job, choice = rows[ev.index]
                if not job.cancelled.is_set():
                    job.push(("event", choice, ev))
                if all(j.cancelled.is_set() for j in batch):
                    close = getattr(events, "close", None)
                    if close:
                        close()
                    break
        except Exception as e:  # reported to every job of the batch; the server stays up
            log.exception("generation failed")
            for job in batch:
                job.push(("error", e))
            return
        for job in batch:
            if job.cancelled.is_set():
                self.stats.cancelled += 1
            job.push(("done",))


async def collect(job: Job) -> list[Completion]:
    """Wait for a job's completions (non-streaming requests)."""
    out: dict[int, Completion] = {}
    while True:
        item = await job.events.get()
        if item[0] == "event":
            _, choice, ev = item
            if ev.completion is not None:
                out[choice] = ev.completion
        elif item[0] == "error":
            raise item[1]
        else:
            return [out[i] for i in sorted(out)]


def _accepts_kwargs(fn: Any) -> bool:
    try:
        return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False
