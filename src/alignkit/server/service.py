"""Server logic, independent of HTTP: a bounded queue of jobs, and one worker thread that runs them on the
model in batches.

Two schedulers:

* **continuous** (iteration-level, for models with ``capabilities.continuous_batching``: the transformers
  backend and the methods built on it): between two decode steps, waiting jobs join the running batch as long
  as it has room (``max_batch`` rows); a job is answered as soon as its own rows finish, and a finished row's
  key/values are freed at once, so a short request never waits for a long one;
* **static** (every other model): the jobs waiting at the same time form a batch that runs until its last
  row finishes; jobs that arrive meanwhile form the next one. A job is still answered when its own rows finish.

Either way a job whose client went away is cancelled: its rows are dropped from the running batch at the
next step."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from alignkit.errors import CapabilityError, InputError
from alignkit.methods.base import MethodModel
from alignkit.models.base import backend_models
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
    model: Any = None
    """A variant of the route's model for this request alone (a weighted route with other weights): it runs in a
    batch of its own, which no other request joins."""
    streaming: bool = True
    """The client reads the answer as it is made; False: only the whole answer is used, and an engine that can
    (vLLM's async one: ``stream(..., whole=)``) sends it whole, with no work per token."""

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
    joined: int = 0
    """jobs that joined a batch already running (continuous scheduling)"""


SCHEDULERS = ("auto", "continuous", "static")


class Gate:
    """Turns on loaded weights shared by several routes: one route's batch runs at a time, and while another
    route waits for its turn the running batch takes no more requests (it drains, then hands over), so a busy
    continuous route cannot starve the others."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting = 0
        self._count = threading.Lock()

    @contextlib.contextmanager
    def turn(self):
        with self._count:
            self._waiting += 1
        self._lock.acquire()
        with self._count:
            self._waiting -= 1
        try:
            yield
        finally:
            self._lock.release()

    @property
    def contended(self) -> bool:
        return self._waiting > 0


def weights_id(model: Any) -> int:
    """One id per set of loaded weights (a base model and its adapter views share one)."""
    torch_model = getattr(model, "model", None)
    return id(torch_model if torch_model is not None else model)


def share_gates(services: list[Service]) -> None:
    """Give services whose models share loaded weights one :class:`Gate` -- except an engine that batches
    concurrent calls itself (vLLM's async engine: ``concurrent_streams``), which routes share at once."""
    groups: list[tuple[set[int], Gate]] = []
    for svc in services:
        ids = {weights_id(m) for m in backend_models(svc.model) if not getattr(m, "concurrent_streams", False)}
        for held, gate in groups:
            if held & ids:
                held |= ids
                svc.gate = gate
                break
        else:
            groups.append((ids, svc.gate))


class Service:
    """Runs jobs on one model with batching; thread-safe ``submit`` from the event loop."""

    def __init__(self, model: Any, name: str, *, max_batch: int = 8, max_queue: int = 64,
                 batch_wait: float = 0.01, scheduler: str = "auto") -> None:
        if scheduler not in SCHEDULERS:
            raise InputError(f"unknown scheduler {scheduler!r}; choose one of {', '.join(SCHEDULERS)}")
        can = bool(getattr(getattr(model, "capabilities", None), "continuous_batching", False))
        if scheduler == "continuous" and not can:
            raise CapabilityError(
                f"model {getattr(model, 'spec', name)!r} cannot take requests into a running batch (continuous "
                "batching needs the transformers backend, under any method except a rewriter or corrector route); "
                "use --scheduler static or auto")
        self.continuous = can and scheduler != "static"
        self.model, self.name = model, name
        self.max_batch, self.batch_wait = max(1, max_batch), batch_wait
        self._queue: queue.Queue[Job] = queue.Queue(maxsize=max(1, max_queue))
        self._stopping = threading.Event()
        self._worker: threading.Thread | None = None
        self.stats = Stats()
        self._held: Job | None = None
        self.gate = Gate()  # shared with the routes on the same weights (server.app.build_app)
        self._can_cancel = "should_stop" in inspect.signature(model.stream).parameters or _accepts_kwargs(model.stream)
        self._can_whole = _takes_whole(model)

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
    def submit(self, prompts: list[Prompt], configs: list[GenerationConfig], model: Any = None,
               streaming: bool = True) -> Job:
        if self._stopping.is_set():
            raise Overloaded("the server is shutting down")
        job = Job(prompts, configs, asyncio.get_running_loop(), model=model, streaming=streaming)
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            self.stats.rejected += 1
            raise Overloaded(f"the queue is full ({self._queue.maxsize} requests waiting)") from None
        self.stats.jobs += 1
        return job

    # -------------------------------------------------------------- worker
    def _pop(self, timeout: float | None) -> Job | None:
        """The job held back for lack of room, else the next queued one (waiting up to ``timeout`` seconds;
        None: not waiting), else None."""
        if self._held is not None:
            job, self._held = self._held, None
            return job
        try:
            return self._queue.get_nowait() if timeout is None else self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def _take_batch(self) -> list[Job]:
        """The next batch: the first waiting job, plus whatever else arrives within ``batch_wait`` and fits."""
        first = self._pop(0.1)
        if first is None:
            return []
        if first.model is not None:  # a request's own variant of the model runs alone
            return [] if first.cancelled.is_set() else [first]
        batch, rows = [first], len(first.prompts)
        deadline = time.monotonic() + self.batch_wait
        while rows < self.max_batch:
            job = self._pop(max(0.0, deadline - time.monotonic()))
            if job is None:
                break
            if rows + len(job.prompts) > self.max_batch or job.model is not None:
                self._held = job  # first of the next batch
                break
            batch.append(job)
            rows += len(job.prompts)
        return [j for j in batch if not j.cancelled.is_set()]

    def _run(self) -> None:
        while not self._stopping.is_set():
            batch = self._take_batch()
            if batch:
                with self.gate.turn():
                    self._run_batch(batch)
        if self._held is not None:
            self._held.push(("error", Overloaded("the server is shutting down")))
            self._held = None

    def _joining(self, running: int, room: int | None) -> list[Job]:
        """Jobs that join the running batch now: waiting jobs, in order, while they fit in ``max_batch`` and in
        the ``room`` the model has left."""
        joining: list[Job] = []
        free = self.max_batch - running if room is None else min(self.max_batch - running, room)
        while free > 0 and not self._stopping.is_set() and not self.gate.contended:
            job = self._pop(None)
            if job is None:
                break
            if job.cancelled.is_set():
                continue
            if len(job.prompts) > free or job.model is not None:
                self._held = job  # waits for room (or for the next batch)
                break
            joining.append(job)
            free -= len(job.prompts)
        return joining

    def _run_batch(self, batch: list[Job]) -> None:
        rows: list[tuple[Job, int]] = []
        left: dict[int, int] = {}  # id(job) -> choices not finished yet
        jobs: list[Job] = []

        def add(new: list[Job]) -> list[tuple[Prompt, GenerationConfig]]:
            for job in new:
                jobs.append(job)
                left[id(job)] = len(job.prompts)
                rows.extend((job, i) for i in range(len(job.prompts)))
            self.stats.rows += sum(len(j.prompts) for j in new)
            return [(job.prompts[i], job.configs[i]) for job in new for i in range(len(job.prompts))]

        first = add(batch)
        model = batch[0].model if batch[0].model is not None else self.model
        self.stats.batches += 1
        self.stats.max_batch_rows = max(self.stats.max_batch_rows, len(rows))
        kwargs: dict[str, Any] = {}
        if self._can_cancel:
            kwargs["should_stop"] = lambda r: rows[r][0].cancelled.is_set()
        if self._can_whole and model is self.model:
            kwargs["whole"] = lambda r: not rows[r][0].streaming
        if self.continuous and model is self.model:
            def admit(running: int, room: int | None) -> list[tuple[Prompt, GenerationConfig]]:
                new = self._joining(running, room)
                if not new:
                    return []
                self.stats.joined += len(new)
                self.stats.max_batch_rows = max(self.stats.max_batch_rows, running + sum(len(j.prompts) for j in new))
                return add(new)

            kwargs["admit"] = admit
        try:
            events = model.stream([p for p, _ in first], [c for _, c in first], **kwargs)
            for ev in events:
                job, choice = rows[ev.index]
                if not job.cancelled.is_set():
                    job.push(("event", choice, ev))
                if ev.completion is not None:
                    left[id(job)] -= 1
                    if left[id(job)] == 0:
                        job.push(("done",))  # answered now, not when the whole batch ends
                if all(j.cancelled.is_set() or left[id(j)] == 0 for j in jobs) and self._queue.empty() \
                        and self._held is None:
                    close = getattr(events, "close", None)
                    if close:
                        close()
                    break
        except Exception as e:  # reported to every job of the batch not answered yet; the server stays up
            log.exception("generation failed")
            for job in jobs:
                if left[id(job)]:
                    job.push(("error", e))
            return
        for job in jobs:
            if left[id(job)]:
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


def _takes_whole(model: Any) -> bool:
    """Whether ``stream(..., whole=)`` reaches an engine that takes it with rows numbered as the server numbers
    them: a chain of methods that pass their rows through one for one (in-context methods, rewriter and corrector
    stages) over a model whose ``stream`` names ``whole``. A node that regroups rows (best-of-N, DeRa) gets none."""
    for _ in range(65):
        if not isinstance(model, MethodModel):
            return "whole" in inspect.signature(model.stream).parameters
        if type(model).stream is not MethodModel.stream:
            return False
        model = model.base
    return False


def _accepts_kwargs(fn: Any) -> bool:
    try:
        return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False
