"""The sweep/eval backends on a real local Ray cluster (``ray_session``: 2 CPUs, started once per test run):
ray and local give the same numbers for the same cells, workers set their torch threads, a failing job comes
back as its outcome while the others finish, and an address nobody answers at fails fast with a clear error."""

from __future__ import annotations

import json
import socket
import sys
import time
from dataclasses import dataclass

import pytest
from helpers import library_copy, run_cli

from adaptforge.backends import BACKENDS, Worker, WorkerSetup
from adaptforge.core import AdaptforgeError
from adaptforge.library import Library
from adaptforge.pipelines.sweep import SweepSpec, run_sweep


@dataclass(frozen=True)
class ThreadsJob:
    """Reports the worker's torch threads and OMP setting; ``fail`` raises instead."""

    key: str
    fail: bool = False
    die: bool = False

    def execute(self, worker: Worker) -> dict:
        import os

        if self.fail:
            raise ValueError(f"boom in {self.key}")
        if self.die:
            os._exit(3)  # the worker process dies (as when killed or out of memory)
        return {"threads": worker.threads(), "omp": os.environ.get("OMP_NUM_THREADS")}


@pytest.fixture(scope="module")
def by_value(ray_session):
    """Ray workers cannot import this test module: ship its job class by value."""
    ray_session.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield ray_session
    ray_session.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ray_workers_set_their_threads_and_a_failing_job_does_not_stop_the_others(by_value):
    """One worker of two threads: a job that raises and one that kills its worker both come back as failed
    outcomes; the jobs after them run (the dead worker is replaced)."""
    backend = BACKENDS.get("ray")({"workers": 1, "threads_per_worker": 2})
    seen = []
    jobs = [ThreadsJob("a"), ThreadsJob("b", fail=True), ThreadsJob("c"), ThreadsJob("d", die=True), ThreadsJob("e")]
    outcomes = backend.run(WorkerSetup(model=None, library=None), jobs, seen.append)
    assert [o.key for o in outcomes] == list("abcde") and sorted(o.key for o in seen) == list("abcde")
    assert outcomes[0].ok and outcomes[0].payload == {"threads": 2, "omp": "2"} and outcomes[0].worker == "ray-worker-0"
    assert not outcomes[1].ok and outcomes[1].error.startswith("ValueError: boom in b (at test_backends.py:")
    assert outcomes[2].ok
    assert not outcomes[3].ok and outcomes[3].error.startswith("Ray worker died: ")
    assert outcomes[4].ok and outcomes[4].worker == "ray-worker-1" and outcomes[4].payload["threads"] == 2


def test_an_address_that_does_not_answer_fails_fast_with_a_clear_error(ray_session, tmp_path, trained_library):
    address = f"127.0.0.1:{free_port()}"
    backend = BACKENDS.get("ray")({"address": address, "connect_timeout": 2.0})
    start = time.perf_counter()
    with pytest.raises(AdaptforgeError) as err:
        backend.run(WorkerSetup(model=None, library=None), [ThreadsJob("a")])
    assert time.perf_counter() - start < 5
    assert str(err.value).startswith(
        f"--ray-address {address!r} does not answer (Connection refused, waited at most 2s)"
    )
    spec = tmp_path / "grid.yaml"
    spec.write_text(f"train:\n  tasks: [{trained_library[1]['sst2']}]\n")
    res = run_cli("sweep", spec, "--library", tmp_path / "lib", "--backend", "ray", "--ray-address", address, ok=False)
    assert res.exit_code == 2 and f"error: --ray-address {address!r} does not answer" in res.output
    assert not (tmp_path / "lib").exists()  # nothing left behind by a sweep that never started


SPEC = """
name: g
train:
  tasks: [{sst2}]
  rank: [2]
  seeds: [0, 1]
  epochs: [1]
  options: {{max_train: 16, batch_size: 16, targets: [query, value]}}
  eval: {{split: dev, limit: 16}}
"""

MERGE = """
merge:
  merges: [[sst2-a, agnews-a]]
  methods: [ties]
  params: {{ties: {{density: [0.5]}}}}
  eval: {{tasks: [{agnews}], split: dev, limit: 16}}
compose:
  tasks: [{subjectivity}]
  k: [8]
  methods: [lorahub]
  params: {{lorahub: {{budget: [10]}}}}
  options: {{candidates: 2}}
  eval: {{split: dev, limit: 16}}
"""


def sweep_both_ways(tmp_path, trained_library, text: str) -> dict:
    """The same spec on the local backend (one thread) and on two Ray workers (one thread each), each into its
    own copy of the trained library; the rows and the stored adapters must be identical."""
    spec_path = tmp_path / "grid.yaml"
    spec_path.write_text(text.format(**{k: str(v) for k, v in trained_library[1].items()}))
    spec = SweepSpec.from_yaml(spec_path)
    runs = {}
    for name, params in (("local", {"threads": 1}), ("ray", {"workers": 2, "threads_per_worker": 1})):
        lib = library_copy(trained_library, tmp_path / name)
        runs[name] = (lib, run_sweep(spec, lib, BACKENDS.get(name)(params)))
    (local_lib, local), (ray_lib, remote) = runs["local"], runs["ray"]
    assert {r.status for r in remote.rows} == {"ran"}
    assert {r.worker for r in remote.rows} == {"ray-worker-0", "ray-worker-1"}
    assert [(r.key, r.adapter, r.accuracy) for r in remote.rows] == [(r.key, r.adapter, r.accuracy) for r in local.rows]
    for row in local.rows:
        a, _ = local_lib.load(row.adapter)
        b, _ = ray_lib.load(row.adapter)
        assert a.targets == b.targets
        for name in a:
            assert a[name].A.equal(b[name].A) and a[name].B.equal(b[name].B), (row.label, name)
    return runs


def test_ray_and_local_train_sweeps_give_the_same_numbers(by_value, tmp_path, trained_library):
    runs = sweep_both_ways(tmp_path, trained_library, SPEC)
    assert [r.label for r in runs["ray"][1].rows] == ["sst2 r2 lrdefault e1 s0", "sst2 r2 lrdefault e1 s1"]


@pytest.mark.slow
def test_ray_and_local_merge_compose_and_eval_give_the_same_numbers(by_value, tmp_path, trained_library):
    """Train, merge and compose (LoraHub, seeded) stages on one pool of actors, then ``eval --backend ray``
    against ``eval`` in this process."""
    runs = sweep_both_ways(tmp_path, trained_library, SPEC + MERGE)
    ray_lib = runs["ray"][0]
    assert [r.stage for r in runs["ray"][1].rows] == ["train", "train", "merge", "compose"]
    sst2 = trained_library[1]["sst2"]
    args = ("eval", sst2, "--library", ray_lib.root, "--adapter", "sst2-a", "--zero-shot", "--split", "dev")
    here = json.loads(run_cli(*args, "--json").stdout)
    before = len(Library(ray_lib.root).metrics("sst2-a"))
    there = json.loads(run_cli(*args, "--json", "--backend", "ray", "--workers", "2").stdout)
    assert there == here
    assert len(Library(ray_lib.root).metrics("sst2-a")) == before + 3  # accuracy, macro-F1, loss: the driver wrote


def test_a_flag_the_backend_does_not_take_is_an_error(tmp_path, trained_library):
    spec = tmp_path / "grid.yaml"
    spec.write_text(f"train:\n  tasks: [{trained_library[1]['sst2']}]\n")
    res = run_cli("sweep", spec, "--library", tmp_path / "lib", "--workers", "2", ok=False)
    assert res.exit_code == 2 and "error: --workers: only with --backend ray" in res.output
    res = run_cli("sweep", spec, "--library", tmp_path / "lib", "--backend", "spark", ok=False)
    assert res.exit_code == 2 and "error: unknown sweep backend 'spark'; known: local, ray." in res.output
