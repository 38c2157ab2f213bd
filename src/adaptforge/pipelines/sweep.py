"""``adaptforge sweep``: a grid of trainings, merges and compositions, run on a backend, every cell into the library.

The spec (:mod:`adaptforge.pipelines.sweep_spec`) expands into cells. A cell's identity is a stable hash of its
resolved spec (the task's content fingerprint, the full train config or typed method params, the input
adapters' ids, the evaluation settings, the base model), and the hash is the tail of the adapter's name in the
catalog; so a re-run of a sweep whose driver was killed finds the cells that landed and skips them (a train cell
killed halfway resumes from its checkpoint). Stages run in order, train then merge then compose, because
compositions retrieve the library's task adapters, which the train stage may have just made; within a stage
the backend runs the cells in any order and they write to the library themselves (atomic, concurrent writers
safe). A failing cell is reported with its label and error; the others finish.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from adaptforge.backends import Backend, JobOutcome, Worker, WorkerSetup
from adaptforge.backends.base import Pool
from adaptforge.core import AdaptforgeError
from adaptforge.library import AdapterRecord, Library, MetricRow, shown_row
from adaptforge.pipelines.sweep_spec import SweepSpec, SweepSpecError
from adaptforge.tasks import Task, load_task

if TYPE_CHECKING:
    from adaptforge.pipelines.merge import MergeRecipe

KEY_LENGTH = 10  # hex digits of the cell hash kept in the adapter name (40 bits: no collision in any real sweep)
STAGES = ("train", "merge", "compose")


def cell_key(resolved: Mapping[str, Any]) -> str:
    """The stable identity of a cell: sha256 of its resolved spec as canonical JSON."""
    text = json.dumps(resolved, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:KEY_LENGTH]


def _number(value: float | None) -> str:
    return "default" if value is None else f"{value:g}"


@dataclass(frozen=True)
class TrainCell:
    """Train one adapter on one task with one config, evaluated on ``split``."""

    task: Task
    config: Mapping[str, Any]
    split: str
    limit: int | None
    name: str
    key: str
    label: str
    stage: str = "train"

    def execute(self, worker: Worker) -> dict[str, Any]:
        from adaptforge.pipelines.train import train_into_library
        from adaptforge.train.checkpoint import load_checkpoint
        from adaptforge.train.config import TrainConfig

        library = worker.library()
        resume = load_checkpoint(library.run_dir(self.name)) is not None  # a killed run of this cell goes on
        splits = (self.split,) if self.split in self.task.splits else ()
        trained = train_into_library(
            self.task,
            worker.backbone(),
            library,
            self.name,
            TrainConfig.from_dict(self.config),
            resume=resume,
            eval_splits=splits,
            eval_limit=self.limit,
        )
        return {"adapter": self.name, "id": trained.record.id, "resumed": resume}


@dataclass(frozen=True)
class MergeCell:
    """One merge recipe (adapters x method x params), evaluated on the merge stage's eval tasks."""

    recipe: MergeRecipe
    eval_tasks: tuple[Task, ...]
    split: str
    limit: int | None
    needs_model: bool
    name: str
    key: str
    label: str
    stage: str = "merge"

    def execute(self, worker: Worker) -> dict[str, Any]:
        from adaptforge.pipelines.merge import merge_into_library

        backbone = worker.backbone() if self.needs_model else None
        outcome = merge_into_library(
            self.recipe,
            worker.library(),
            backbone=backbone,
            eval_tasks=self.eval_tasks,
            split=self.split,
            limit=self.limit,
        )
        return {"adapter": self.name, "id": outcome.record.id}


@dataclass(frozen=True)
class ComposeCell:
    """Compose an adapter for one task from k shots with one method and seed."""

    task: Task
    method: str
    k: int
    seed: int
    params: Mapping[str, Any]
    candidates: int
    exclude_tasks: tuple[str, ...]
    split: str
    limit: int | None
    name: str
    key: str
    label: str
    stage: str = "compose"

    def execute(self, worker: Worker) -> dict[str, Any]:
        from adaptforge.pipelines.compose import compose_into_library

        eval_split = self.split if self.split in self.task.splits else None
        outcome = compose_into_library(
            self.task,
            worker.library(),
            self.name,
            method=self.method,
            shots=self.k,
            candidates=self.candidates,
            seed=self.seed,
            params=self.params,
            backbone=worker.backbone(),
            exclude_tasks=self.exclude_tasks,
            eval_split=eval_split,
            limit=self.limit,
        )
        return {"adapter": self.name, "id": outcome.record.id}


Cell = TrainCell | MergeCell | ComposeCell


class _Tasks:
    """Each task folder loaded once per sweep."""

    def __init__(self) -> None:
        self._tasks: dict[str, Task] = {}

    def __call__(self, path: str) -> Task:
        if path not in self._tasks:
            self._tasks[path] = load_task(path)
        return self._tasks[path]


def _label_scoring_only(spec: SweepSpec, tasks: _Tasks, paths: Sequence[str], key: str, what: str) -> None:
    """Refuse a generation task listed under ``key`` where the stage only scores label sets (before any cell runs
    or any model loads), naming the key, its line and the task."""
    from adaptforge.scorers import classification_only

    for i, path in enumerate(paths):
        try:
            classification_only(tasks(path), what)
        except AdaptforgeError as err:
            line = spec.lines.get((*key.split("."), str(i))) or spec.lines.get(tuple(key.split(".")))
            where = f"{spec.source}" + (f" line {line}" if line else "")
            raise SweepSpecError(f"{where}: key '{key}': {err}") from None


def train_cells(spec: SweepSpec, tasks: _Tasks) -> list[TrainCell]:
    from adaptforge.train.config import TrainConfig

    grid = spec.train
    if grid is None:
        return []
    cells = []
    for path in grid.tasks:
        task = tasks(path)
        for combo in itertools.product(*grid.axes.values()):
            values = dict(zip(grid.axes, combo, strict=True))
            config = TrainConfig.from_dict({**grid.options, **values}).to_dict()
            resolved = {
                "stage": "train",
                "model": spec.model,
                "task": {"name": task.name, "fingerprint": task.fingerprint()},
                "config": config,
                "eval": {"split": grid.split, "limit": grid.limit},
            }
            key = cell_key(resolved)
            label = f"{task.name} r{config['rank']} lr{_number(config['lr'])} e{config['epochs']} s{config['seed']}"
            name = f"{spec.name}-{label.replace(' ', '-')}-{key}"
            cells.append(TrainCell(task, config, grid.split, grid.limit, name, key, label))
    return cells


def merge_cells(spec: SweepSpec, tasks: _Tasks, library: Library) -> list[MergeCell]:
    from adaptforge.merge import MERGE_METHODS
    from adaptforge.pipelines.merge import MergeRecipe

    grid = spec.merge
    if grid is None:
        return []
    _label_scoring_only(spec, tasks, grid.data, "merge.data", "a merge fitted on data")
    _label_scoring_only(spec, tasks, grid.eval_tasks, "merge.eval.tasks", "merge's evaluation (normalized accuracy)")
    eval_tasks = tuple(tasks(p) for p in grid.eval_tasks)
    data_fps = [tasks(p).fingerprint() for p in grid.data]
    cells = []
    for i, group in enumerate(grid.merges):
        records: list[AdapterRecord] = []
        for name in group:
            if not library.exists(name):
                raise SweepSpecError(
                    f"{spec.source}: key 'merge.merges' (line {spec.lines.get(('merge', 'merges', str(i)), '?')}): "
                    f"adapter {name!r} is not in {library.root}; merge adapters the library holds"
                )
            records.append(library.get(name))
        for method in grid.methods:
            impl = MERGE_METHODS.get(method)
            for params in grid.params[method]:
                resolved = {
                    "stage": "merge",
                    "model": spec.model,
                    "adapters": [r.id for r in records],
                    "method": method,
                    "params": impl.parse_params(params).to_dict(),
                    "data": data_fps,
                    "eval": {"tasks": [t.fingerprint() for t in eval_tasks], "split": grid.split, "limit": grid.limit},
                }
                key = cell_key(resolved)
                shown = " ".join(f"{k}={v}" for k, v in params.items())
                label = f"{'+'.join(group)} {method}" + (f" {shown}" if shown else "")
                name = f"{spec.name}-{method}-{key}"
                recipe = MergeRecipe(method, tuple(group), name, dict(params), grid.data)
                needs_model = impl.needs_data or impl.needs_base or bool(eval_tasks) or spec.model is not None
                cells.append(MergeCell(recipe, eval_tasks, grid.split, grid.limit, needs_model, name, key, label))
    return cells


def compose_cells(spec: SweepSpec, tasks: _Tasks) -> list[ComposeCell]:
    from adaptforge.compose import COMPOSERS

    grid = spec.compose
    if grid is None:
        return []
    _label_scoring_only(spec, tasks, grid.tasks, "compose.tasks", "compose (every method)")
    cells = []
    for path in grid.tasks:
        task = tasks(path)
        for method, k, seed in itertools.product(grid.methods, grid.k, grid.seeds):
            for params in grid.params[method]:
                if "seed" in params:
                    raise SweepSpecError(f"{spec.source}: key 'compose.params.{method}.seed': set it as compose.seeds")
                typed = COMPOSERS.get(method).parse_params({"seed": seed, **params}).to_dict()
                resolved = {
                    "stage": "compose",
                    "model": spec.model,
                    "task": {"name": task.name, "fingerprint": task.fingerprint()},
                    "method": method,
                    "k": k,
                    "params": typed,
                    "candidates": grid.candidates,
                    "exclude_tasks": sorted(grid.exclude_tasks),
                    "eval": {"split": grid.split, "limit": grid.limit},
                }
                key = cell_key(resolved)
                shown = "".join(f" {k_}={v}" for k_, v in params.items())
                label = f"{task.name} {method} k{k} s{seed}{shown}"
                name = f"{spec.name}-{task.name}-{method}-k{k}-s{seed}-{key}"
                cells.append(
                    ComposeCell(
                        task,
                        method,
                        k,
                        seed,
                        dict(params),
                        grid.candidates,
                        grid.exclude_tasks,
                        grid.split,
                        grid.limit,
                        name,
                        key,
                        label,
                    )
                )
    return cells


@dataclass(frozen=True)
class CellRow:
    """One line of the results table."""

    stage: str
    key: str
    label: str
    adapter: str
    status: str  # "ran", "skipped" (finished by an earlier run) or "failed"
    split: str
    accuracy: float | None = None
    seconds: float = 0.0
    worker: str = ""
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "cell": self.key,
            "label": self.label,
            "adapter": self.adapter,
            "status": self.status,
            "split": self.split,
            "accuracy": self.accuracy,
            "seconds": round(self.seconds, 2),
            "worker": self.worker,
            "error": self.error,
        }


@dataclass
class SweepOutcome:
    rows: list[CellRow] = field(default_factory=list)
    backend: str = ""
    seconds: float = 0.0

    @property
    def failed(self) -> list[CellRow]:
        return [r for r in self.rows if r.status == "failed"]

    def to_json(self) -> dict[str, Any]:
        counts = {s: sum(r.status == s for r in self.rows) for s in ("ran", "skipped", "failed")}
        return {
            "backend": self.backend,
            "seconds": round(self.seconds, 2),
            **counts,
            "cells": [r.to_json() for r in self.rows],
        }


def recorded_accuracy(library: Library, adapter: str, split: str) -> float | None:
    """Mean over tasks of the adapter's recorded accuracy on ``split`` (routed accuracy for routed adapters, exact
    match on a generation task), each task's the row :func:`~adaptforge.library.shown_row` picks (the most
    examples, then the newest); ``None`` when it was not evaluated."""
    by_task: dict[str, list[MetricRow]] = {}
    for row in library.metrics(adapter, split=split):
        if row.metric in ("accuracy", "routed_accuracy", "exact_match"):
            by_task.setdefault(row.task, []).append(row)
    shown = [r.value for r in map(shown_row, by_task.values()) if r is not None]
    return sum(shown) / len(shown) if shown else None


def plan(spec: SweepSpec, library: Library) -> dict[str, list[Cell]]:
    """Every cell of the spec, by stage (tasks loaded and merge inputs resolved now: bad input fails before work)."""
    tasks = _Tasks()
    stages: dict[str, list[Cell]] = {
        "train": list(train_cells(spec, tasks)),
        "merge": list(merge_cells(spec, tasks, library)),
        "compose": list(compose_cells(spec, tasks)),
    }
    for stage, cells in stages.items():  # the same cell twice (a task listed twice) runs once
        stages[stage] = list({c.key: c for c in cells}.values())
    return stages


def run_sweep(
    spec: SweepSpec,
    library: Library,
    backend: Backend,
    *,
    on_cell: Callable[[CellRow], None] | None = None,
    notify: Callable[[str], None] | None = None,
) -> SweepOutcome:
    """Run every cell not already in the library on ``backend``, stage by stage; one row per cell."""
    import time

    start = time.perf_counter()
    stages = plan(spec, library)
    if not any(stages.values()):
        raise AdaptforgeError(f"{spec.source}: the grid expands to no cells")
    setup = WorkerSetup(model=spec.model, library=str(library.root))
    outcome = SweepOutcome(backend=backend.describe())
    pending = any(not library.exists(c.name) for cells in stages.values() for c in cells)
    # One pool for all stages, so each worker loads the model once; none at all when every cell has landed.
    with backend.open(setup) if pending else nullcontext() as pool:
        for stage in STAGES:
            outcome.rows += _run_stage(stage, stages[stage], library, pool, on_cell, notify)
    outcome.seconds = time.perf_counter() - start
    return outcome


def _run_stage(
    stage: str,
    cells: Sequence[Cell],
    library: Library,
    pool: Pool | None,
    on_cell: Callable[[CellRow], None] | None,
    notify: Callable[[str], None] | None,
) -> list[CellRow]:
    """One stage's cells: those already in the library are skipped (their recorded accuracy shown), the rest run."""
    todo = [c for c in cells if not library.exists(c.name)]
    by_key = {c.key: c for c in cells}
    rows: dict[str, CellRow] = {}
    for c in cells:
        if c not in todo:
            accuracy = recorded_accuracy(library, c.name, c.split)
            rows[c.key] = CellRow(stage, c.key, c.label, c.name, "skipped", c.split, accuracy)
    if notify is not None and cells:
        notify(f"{stage}: {len(cells)} cell(s), {len(rows)} finished earlier, {len(todo)} to run")
    if on_cell is not None:
        for row in rows.values():
            on_cell(row)

    def finished(result: JobOutcome) -> None:
        c = by_key[result.key]
        accuracy = recorded_accuracy(library, c.name, c.split) if result.ok else None
        status = "ran" if result.ok else "failed"
        row = CellRow(
            c.stage, c.key, c.label, c.name, status, c.split, accuracy, result.seconds, result.worker, result.error
        )
        rows[c.key] = row
        if on_cell is not None:
            on_cell(row)

    if todo:
        assert pool is not None
        pool.run(todo, finished)
    return [rows[c.key] for c in cells]
