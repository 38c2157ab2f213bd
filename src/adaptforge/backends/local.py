"""The in-process backend: every job on one :class:`~adaptforge.backends.base.Worker` in this process, in order."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace

from adaptforge.backends.base import (
    BACKENDS,
    Backend,
    BackendParams,
    Job,
    JobOutcome,
    OnDone,
    Pool,
    Worker,
    WorkerSetup,
)
from adaptforge.params import param


@dataclass(frozen=True)
class LocalPool:
    worker: Worker

    def run(self, jobs: Sequence[Job], on_done: OnDone | None = None) -> list[JobOutcome]:
        outcomes = []
        for job in jobs:
            outcomes.append(self.worker.run(job))
            if on_done is not None:
                on_done(outcomes[-1])
        return outcomes


@dataclass(frozen=True)
class LocalParams(BackendParams):
    threads: int | None = param(None, ge=1, help="torch intra-op threads while the jobs run; null: leave as is")


@BACKENDS.register
class LocalBackend(Backend[LocalParams]):
    """Run the jobs one after another in this process (no Ray needed): the reference every other backend matches.

    The "paper" link is the sequential map the distributed backends parallelise (Python's ``map``).
    """

    name = "local"
    reference_url = "https://docs.python.org/3/library/functions.html#map"

    @contextmanager
    def open(self, setup: WorkerSetup) -> Iterator[Pool]:
        import torch

        before = torch.get_num_threads()
        try:
            yield LocalPool(Worker(replace(setup, threads=self.params.threads or setup.threads)))
        finally:
            torch.set_num_threads(before)

    def describe(self) -> str:
        threads = f", {self.params.threads} thread(s)" if self.params.threads else ""
        return f"local (this process{threads})"
