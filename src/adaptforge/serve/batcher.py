"""The micro-batcher: requests wait in one bounded queue; a single worker thread owns the model and runs
them in batches of up to ``max_batch`` texts, waiting at most ``max_wait_ms`` after the first one arrived for
others to join (the dynamic batching of inference servers). The queue is bounded in texts, so a burst is
answered with :class:`~adaptforge.serve.errors.Busy` (429) instead of growing memory, and :meth:`stop`
refuses new work (503) while the worker finishes what was accepted.

Generic over what a job is: the executor receives the jobs of one batch and sets each job's future. The
benchmark runs PEFT baselines through the same batcher, so every engine sees the same queueing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from adaptforge.serve.errors import Busy, Unavailable

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Job:
    """One request's work: ``rows`` texts; ``batchable`` jobs may share a forward with others."""

    payload: Any
    rows: int
    batchable: bool = True
    future: Future = field(default_factory=Future)
    enqueued: float = field(default_factory=time.perf_counter)


Executor = Callable[[list[Job]], None]


class MicroBatcher:
    """See the module docstring. ``execute`` runs on the worker thread and must resolve every job's future
    (a job left unresolved, or an exception escaping ``execute``, fails the batch's jobs, not the worker)."""

    def __init__(
        self,
        execute: Executor,
        *,
        max_batch: int,
        max_wait_ms: float,
        max_queue: int,
        on_batch: Callable[[list[Job]], None] | None = None,
        name: str = "adaptforge-model",
    ) -> None:
        self.execute = execute
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.on_batch = on_batch
        self._queue: deque[Job] = deque()
        self._queued_rows = 0
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    @property
    def running(self) -> bool:
        return self._thread.is_alive() and not self._stopping

    def start(self) -> None:
        self._thread.start()

    def submit(self, payload: Any, rows: int, batchable: bool = True) -> Future:
        """Queue a job of ``rows`` texts; :class:`Busy` when the queue cannot take them, :class:`Unavailable`
        when stopping."""
        job = Job(payload, rows, batchable)
        with self._cond:
            if self._stopping or not self._thread.is_alive():
                raise Unavailable("the server is shutting down; retry on another instance")
            if self._queued_rows + rows > self.max_queue:
                raise Busy(
                    f"the queue is full ({self._queued_rows} of {self.max_queue} texts waiting); retry shortly",
                    headers={"Retry-After": "1"},
                )
            self._queue.append(job)
            self._queued_rows += rows
            self._cond.notify()
        return job.future

    def stop(self, timeout: float | None = None) -> None:
        """Refuse new jobs, let the worker finish the accepted ones, and join it."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def take(self, accept: Callable[[Job], bool], rows: int) -> list[Job]:
        """Without waiting: the jobs at the head of the queue that ``accept`` takes, up to ``rows`` rows, marked
        running (continuous batching: a running batch admits them between two steps; a job that ``accept``
        refuses keeps its place and ends the taking, so nothing is overtaken)."""
        taken: list[Job] = []
        with self._cond:
            while self._queue and accept(self._queue[0]) and self._queue[0].rows <= rows:
                job = self._queue.popleft()
                self._queued_rows -= job.rows
                rows -= job.rows
                if job.future.set_running_or_notify_cancel():
                    taken.append(job)
        return taken

    def _next_batch(self) -> list[Job] | None:
        with self._cond:
            while not self._queue and not self._stopping:
                self._cond.wait()
            if not self._queue:
                return None
            first = self._queue[0]
            if first.batchable:
                deadline = first.enqueued + self.max_wait
                while not self._stopping and not self._full():
                    remaining = deadline - time.perf_counter()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
            batch = [self._queue.popleft()]
            rows = batch[0].rows
            while (
                first.batchable
                and self._queue
                and self._queue[0].batchable
                and rows + self._queue[0].rows <= self.max_batch
            ):
                rows += self._queue[0].rows
                batch.append(self._queue.popleft())
            self._queued_rows -= rows
            return batch

    def _full(self) -> bool:
        """Whether the batchable jobs at the head of the queue fill a batch, or a job that cannot join follows."""
        rows = 0
        for job in self._queue:
            if not job.batchable:
                return True
            rows += job.rows
            if rows >= self.max_batch:
                return True
        return False

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            batch = [job for job in batch if job.future.set_running_or_notify_cancel()]  # skip abandoned ones
            if not batch:
                continue
            try:
                if self.on_batch is not None:
                    self.on_batch(batch)
                self.execute(batch)
            except BaseException as err:  # noqa: BLE001 - the worker must outlive any one batch
                log.exception("batch of %d job(s) failed", len(batch))
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(err)
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(RuntimeError("the batch executor gave this job no result"))
