"""Where sweep and eval jobs run: registered backends with typed params (``local`` in this process, ``ray`` on a
Ray cluster), interchangeable and giving the same numbers for the same jobs. Ray is imported only when the
``ray`` backend runs."""

from adaptforge.backends.base import BACKENDS, Backend, BackendParams, Job, JobOutcome, Worker, WorkerSetup
from adaptforge.backends.local import LocalBackend, LocalParams
from adaptforge.backends.ray_backend import RayBackend, RayParams

__all__ = [
    "BACKENDS",
    "Backend",
    "BackendParams",
    "Job",
    "JobOutcome",
    "LocalBackend",
    "LocalParams",
    "RayBackend",
    "RayParams",
    "Worker",
    "WorkerSetup",
]
