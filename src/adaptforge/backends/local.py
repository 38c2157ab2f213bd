"""The in-process backend: every job on one :class:`~adaptforge.backends.base.Worker` in this process, in order."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from adaptforge.backends.base import Backend, BackendParams, Job, JobOutcome, OnDone, Worker, WorkerSetup
from adaptforge.params import param


@dataclass(frozen=True)
class LocalParams(BackendParams):
    threads: int | None = param(None, ge=1, help="torch intra-op threads while the jobs run; null: leave as is")


class LocalBackend(Backend):
    """Run the jobs one after another in this process (no Ray needed): the reference every other backend matches.

    The "paper" link is the sequential map the distributed backends parallelise (Python's ``map``).
    """

    name = "local"
    reference_url = "https://docs.python.org/3/library/functions.html#map"
    params_type = LocalParams

    def run(self, setup: WorkerSetup, jobs: Sequence[Job], on_done: OnDone | None = None) -> list[JobOutcome]:
        import torch

        assert isinstance(self.params, LocalParams)
        before = torch.get_num_threads()
        worker = Worker(replace(setup, threads=self.params.threads or setup.threads))
        outcomes = []
        try:
            for job in jobs:
                outcome = worker.run(job)
                if on_done is not None:
                    on_done(outcome)
                outcomes.append(outcome)
        finally:
            torch.set_num_threads(before)
        return outcomes

    def describe(self) -> str:
        assert isinstance(self.params, LocalParams)
        threads = f", {self.params.threads} thread(s)" if self.params.threads else ""
        return f"local (this process{threads})"
