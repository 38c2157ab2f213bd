"""The contract every sweep backend follows, and the worker that runs jobs wherever a backend puts it.

A *job* is a small picklable object with a stable ``key`` and an ``execute(worker)`` method; a backend only
decides where jobs run (in this process, or in Ray actors on a cluster) and hands each finished job's
:class:`JobOutcome` back to the driver in completion order. A :class:`Worker` holds what is expensive to
make once per process (the backbone, its scorer, the library handle) so a worker that runs twenty cells
loads the model once. Failures are data, not exceptions: a job that raises becomes an outcome with its
error, so the other jobs finish and the driver reports every failure at the end.
"""

from __future__ import annotations

import os
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

from adaptforge.core import Registry
from adaptforge.methods import Method
from adaptforge.params import Params

if TYPE_CHECKING:
    from adaptforge.backbone import Backbone
    from adaptforge.library import Library
    from adaptforge.scorers import Scorer


class Job(Protocol):
    """One unit of work: ``key`` identifies it (stable across runs), ``execute`` does it on a worker and returns
    a small JSON-ready (or at least picklable) payload."""

    @property
    def key(self) -> str: ...

    def execute(self, worker: Worker) -> Any: ...


@dataclass(frozen=True)
class JobOutcome:
    """What came back of one job: its payload, or the error (type, message and the traceback's last lines)."""

    key: str
    ok: bool
    payload: Any = None
    error: str | None = None
    seconds: float = 0.0
    worker: str = "local"


@dataclass(frozen=True)
class WorkerSetup:
    """What a worker needs to build itself: the base model (``None``: the embedded default), the library
    folder (the same path must reach every worker) and the torch threads it sets before any work."""

    model: str | None
    library: str | None
    threads: int | None = None


@dataclass(repr=False)
class Worker:
    """One per process: sets torch's threads, then loads the backbone, its scorer and the library on first
    use and keeps them for every later job (per-job caches, such as loaded adapters, live in ``cache``)."""

    setup: WorkerSetup
    name: str = "local"
    cache: dict[str, Any] = field(default_factory=dict)
    _backbone: Backbone | None = None
    _library: Library | None = None
    _scorer: Scorer | None = None

    def __repr__(self) -> str:  # Ray prefixes a worker's log lines with this
        return f"Worker({self.name})"

    def __post_init__(self) -> None:
        # The same filter the CLI sets (a transformers deprecation PEFT triggers), for worker processes.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # as the CLI: a worker never downloads behind the user's back
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # no "Loading weights" bar per worker
        if self.setup.threads is not None:
            import torch

            # Ray starts workers with one intra-op thread unless told otherwise; say it explicitly here.
            torch.set_num_threads(self.setup.threads)

    def backbone(self) -> Backbone:
        if self._backbone is None:
            from adaptforge.backbone import Backbone

            self._backbone = Backbone.load(self.setup.model)
        return self._backbone

    def scorer(self) -> Scorer:
        if self._scorer is None:
            from adaptforge.scorers import make_scorer

            self._scorer = make_scorer(self.backbone())
        return self._scorer

    def library(self) -> Library:
        if self._library is None:
            from adaptforge.core import AdaptforgeError
            from adaptforge.library import Library

            if self.setup.library is None:
                raise AdaptforgeError("this job needs a library, and the worker was given none")
            self._library = Library(Path(self.setup.library), create=False)
        return self._library

    def run(self, job: Job) -> JobOutcome:
        """``job.execute(self)``; an exception becomes a failed outcome naming its type, message and origin."""
        start = time.perf_counter()
        try:
            payload = job.execute(self)
        except Exception as err:  # noqa: BLE001 - reported with the job, the other jobs go on
            where = traceback.extract_tb(err.__traceback__)[-1:]
            origin = f" (at {Path(where[0].filename).name}:{where[0].lineno})" if where else ""
            message = f"{type(err).__name__}: {err}{origin}"
            return JobOutcome(job.key, False, None, message, time.perf_counter() - start, self.name)
        return JobOutcome(job.key, True, payload, None, time.perf_counter() - start, self.name)

    def threads(self) -> int:
        import torch

        return torch.get_num_threads()


OnDone = Callable[[JobOutcome], None]


@dataclass(frozen=True)
class BackendParams(Params):
    """Base of every backend's typed params."""


class Pool(Protocol):
    """Workers a backend holds open between batches of jobs (a sweep's stages reuse the same loaded models)."""

    def run(self, jobs: Sequence[Job], on_done: OnDone | None = None) -> list[JobOutcome]:
        """Every job; outcomes in the order of ``jobs``; ``on_done`` is called as each one finishes."""
        ...


BP = TypeVar("BP", bound=BackendParams)


class Backend(Method[BP]):
    """Where sweep and eval jobs run. Concrete backends set ``name``, ``reference_url`` and ``params_type``
    and implement :meth:`open`; for the same jobs every backend returns the same payloads."""

    kind: ClassVar[str] = "sweep backend"
    params_base: ClassVar[type[Params]] = BackendParams
    params_type: ClassVar[type[Params]] = BackendParams

    def __init__(self, params: BP | dict[str, Any] | None = None) -> None:
        self.params: BP = self.parse_params(params)

    def open(self, setup: WorkerSetup) -> AbstractContextManager[Pool]:
        """Workers built from ``setup``, alive until the context exits."""
        raise NotImplementedError

    def run(self, setup: WorkerSetup, jobs: Sequence[Job], on_done: OnDone | None = None) -> list[JobOutcome]:
        """One batch of jobs on a pool opened for it."""
        with self.open(setup) as pool:
            return pool.run(jobs, on_done)

    def describe(self) -> str:
        """One line for progress output: where the jobs run."""
        return self.name


BACKENDS: Registry[type[Backend[Any]]] = Registry(
    "sweep backend",
    Backend,
    entries={"local": "adaptforge.backends.local:LocalBackend", "ray": "adaptforge.backends.ray_backend:RayBackend"},
)
