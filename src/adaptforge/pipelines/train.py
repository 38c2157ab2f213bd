"""``adaptforge train``: train one adapter (one task, or several with a task sampler), evaluate it on dev,
and add it to the library with its provenance."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from adaptforge.backbone import Backbone
from adaptforge.evaluate import EvalResult, evaluate
from adaptforge.library import AdapterRecord, Library, MetricRow
from adaptforge.provenance import TaskRef, TrainProvenance
from adaptforge.scorers import describe, make_scorer
from adaptforge.tasks import Task
from adaptforge.train.config import TrainConfig
from adaptforge.train.trainer import ProgressFn, TrainResult, train_tasks


@dataclass
class TrainedAdapter:
    record: AdapterRecord
    result: TrainResult
    evals: list[EvalResult]


def train_into_library(
    tasks: Task | Sequence[Task],
    backbone: Backbone,
    library: Library,
    name: str,
    cfg: TrainConfig | None = None,
    *,
    resume: bool = False,
    eval_splits: Sequence[str] = ("dev",),
    eval_limit: int | None = None,
    progress: ProgressFn | None = None,
    overwrite: bool = False,
) -> TrainedAdapter:
    """Train (one task, or several with the config's sampler), evaluate, and add the adapter.

    Checkpoints live in ``<library>/runs/<name>`` until the adapter has landed, so a killed run
    resumes with ``resume=True`` and a finished one leaves nothing behind.
    """
    tasks = [tasks] if isinstance(tasks, Task) else list(tasks)
    library.check_free(name, overwrite)
    with library.run_lock(name):  # a second train of this name refuses at once
        result = train_tasks(
            tasks, backbone, cfg, checkpoint_dir=library.run_dir(name), resume=resume, progress=progress
        )
        scorer = make_scorer(backbone, result.config.max_length, result.config.temperature)
        evals = [
            evaluate(scorer, task, split, result.delta, adapter=name, limit=eval_limit)
            for task in tasks
            for split in eval_splits
            if split in task.splits
        ]
        metrics = [
            MetricRow(None, backbone.fingerprint, ev.task, ev.split, metric, value, ev.n)
            for ev in evals
            for metric, value in ev.metric_values().items()
        ]
        single = tasks[0] if len(tasks) == 1 else None
        provenance = TrainProvenance(
            config=result.config.to_dict(),
            tasks=[TaskRef(t.name, t.version, t.fingerprint()) for t in tasks],
            labels={t.name: list(t.labels) for t in tasks},
            n_train=result.n_train,
            seconds=result.seconds,
            history=result.history,
            curves=result.curves,
            draws=dict(zip(result.tasks, result.draws, strict=True)),
            resumed_from=result.resumed_from,
        )
        record = library.add(
            result.delta,
            name=name,
            base_model=backbone.name,
            base_fingerprint=backbone.fingerprint,
            task=single.name if single else "+".join(t.name for t in tasks),
            description=single.description if single else None,
            embedding=describe(scorer, single) if single else None,
            provenance=provenance,
            metrics=metrics,
            overwrite=overwrite,
        )
        library.clear_run(name)
        return TrainedAdapter(record, result, evals)
