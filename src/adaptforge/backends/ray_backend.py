"""The Ray backend: jobs spread over ``workers`` Ray actors, each a :class:`~adaptforge.backends.base.Worker`
that sets its torch threads and loads the backbone once, then takes one job at a time from the driver.

Ray (Moritz et al., OSDI 2018, https://arxiv.org/abs/1712.05889) is imported only here and only when a sweep
runs on it. Against Ray's own ``ActorPool`` we keep the scheduling loop (``ray.wait`` on one in-flight job per
actor) so that a job's exception comes back as its outcome, an actor that dies fails only its job, and
outcomes reach the driver in completion order for progress output. Jobs write to the library themselves
(atomic, safe with concurrent writers), so the library path must reach every worker.
"""

from __future__ import annotations

import logging
import os
import socket
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

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
from adaptforge.core import AdaptforgeError
from adaptforge.params import param

log = logging.getLogger(__name__)

GCS_PORT = 6379  # `ray start --head` default
CLIENT_PORT = 10001  # ray:// (Ray Client) default


@dataclass(frozen=True)
class RayParams(BackendParams):
    address: str | None = param(
        None, help="cluster to join (host:port, ray://host:port or 'auto'); null: a Ray session started here"
    )
    workers: int = param(2, ge=1, help="Ray actors, each loading the backbone once and running jobs one at a time")
    threads_per_worker: int = param(1, ge=1, help="torch threads (and Ray CPUs reserved) per actor")
    connect_timeout: float = param(10.0, gt=0, help="seconds to wait for --ray-address to answer")


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise AdaptforgeError(
            "the ray backend needs Ray, which is not installed: pip install 'adaptforge[ray]'"
        ) from None
    return ray


def probe(address: str, timeout: float) -> None:
    """Fail fast, naming the address, when nothing listens there (``ray.init`` would otherwise retry for long)."""
    if address in ("auto", "local"):
        return
    client = address.startswith("ray://")
    hostport = address.removeprefix("ray://").rsplit("/", 1)[0]
    host, sep, port_text = hostport.rpartition(":")
    if not sep:
        host, port_text = hostport, str(CLIENT_PORT if client else GCS_PORT)
    try:
        port = int(port_text)
    except ValueError:
        raise AdaptforgeError(f"--ray-address {address!r}: expected host:port or ray://host:port") from None
    try:
        with socket.create_connection((host.strip("[]"), port), timeout=timeout):
            pass
    except OSError as err:
        raise AdaptforgeError(
            f"--ray-address {address!r} does not answer ({err.strerror or err}, waited at most {timeout:g}s): start "
            "the cluster with `ray start --head` and pass the address it prints, or leave out --ray-address to run "
            "on a Ray session started on this machine"
        ) from None


class RayPool:
    """Up to ``workers`` actors, made when a batch first needs them and kept for later batches (each has loaded
    its backbone by then); one job in flight per actor."""

    def __init__(self, ray: Any, setup: WorkerSetup, workers: int, threads: int) -> None:
        self.ray, self.setup, self.threads = ray, setup, threads
        cpus = float(ray.cluster_resources().get("CPU", 0))
        if cpus < threads:
            raise AdaptforgeError(f"--threads-per-worker {threads}: the Ray cluster has {cpus:g} CPUs; ask for fewer")
        self.limit = min(workers, int(cpus // threads))
        if self.limit < workers:
            log.warning("running at most %d Ray worker(s), not %d: the cluster has %g CPUs", self.limit, workers, cpus)
        self.actors: dict[int, Any] = {}
        self.made = 0  # actors ever made: names stay unique when one is replaced
        env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        self.remote = ray.remote(Worker).options(num_cpus=threads, runtime_env={"env_vars": env})

    def _grow(self, jobs: int) -> None:
        """Actors for ``jobs`` jobs, up to the limit (one that died in an earlier batch is replaced here)."""
        while len(self.actors) < min(self.limit, jobs):
            self.actors[self.made] = self.remote.remote(self.setup, f"ray-worker-{self.made}")
            self.made += 1

    def close(self) -> None:
        for actor in self.actors.values():
            self.ray.kill(actor)
        self.actors.clear()

    def run(self, jobs: Sequence[Job], on_done: OnDone | None = None) -> list[JobOutcome]:
        ray, jobs = self.ray, list(jobs)
        self._grow(len(jobs))
        queue = deque(range(len(jobs)))
        outcomes: dict[int, JobOutcome] = {}
        inflight: dict[Any, tuple[int, int]] = {}  # object ref -> (actor, job index)

        def finish(index: int, outcome: JobOutcome) -> None:
            outcomes[index] = outcome
            if on_done is not None:
                on_done(outcome)

        def fill() -> None:
            """A job for every idle actor while jobs are queued."""
            busy = {actor for actor, _ in inflight.values()}
            for actor in [a for a in self.actors if a not in busy]:
                if queue:
                    index = queue.popleft()
                    inflight[self.actors[actor].run.remote(jobs[index])] = (actor, index)

        fill()
        while inflight:
            ready, _ = ray.wait(list(inflight), num_returns=1)
            actor, index = inflight.pop(ready[0])
            try:
                finish(index, ray.get(ready[0]))
            except ray.exceptions.RayActorError as err:  # the process died (killed, out of memory): its job fails,
                why = str(err).strip().splitlines()[0]  # and a new actor takes its place for the jobs still queued
                finish(index, JobOutcome(jobs[index].key, False, None, f"Ray worker died: {why}", 0.0, f"ray-{actor}"))
                del self.actors[actor]
                self._grow(len(queue) + len(inflight))
            except ray.exceptions.RayError as err:
                finish(index, JobOutcome(jobs[index].key, False, None, f"Ray error: {err}", 0.0, f"ray-{actor}"))
            fill()
        return [outcomes[i] for i in range(len(jobs))]


@BACKENDS.register
class RayBackend(Backend[RayParams]):
    """Run the jobs on Ray actors (one backbone per actor), locally or on a cluster given by its address."""

    name = "ray"
    reference_url = "https://arxiv.org/abs/1712.05889"

    def _connect(self, ray: Any) -> bool:
        """Join the session (already initialised, the given address, or a new local one); True when started here."""
        p = self.params
        if p.address is not None:  # checked even inside a running session: a typo in the flag is never ignored
            probe(p.address, p.connect_timeout)
        if ray.is_initialized():
            return False
        quiet = {"logging_level": logging.WARNING, "include_dashboard": False}
        if p.address is None:
            ray.init(num_cpus=p.workers * p.threads_per_worker, **quiet)
            return True
        try:
            ray.init(address=p.address, **quiet)
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise AdaptforgeError(f"--ray-address {p.address!r}: could not join the Ray cluster ({err})") from None
        return True

    @contextmanager
    def open(self, setup: WorkerSetup) -> Iterator[Pool]:
        p = self.params
        ray = import_ray()
        started = self._connect(ray)
        pool = RayPool(ray, replace(setup, threads=p.threads_per_worker), p.workers, p.threads_per_worker)
        try:
            yield pool
        finally:
            pool.close()
            if started:
                ray.shutdown()

    def describe(self) -> str:
        p = self.params
        where = p.address or f"a Ray session on this machine (pid {os.getpid()})"
        return f"ray ({p.workers} worker(s) x {p.threads_per_worker} thread(s), {where})"
