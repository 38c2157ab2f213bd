"""``adaptforge train``: train one adapter (one task, or several with a task sampler), evaluate it on dev,
and add it to the library with its provenance."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from adaptforge.backbone import Backbone
from adaptforge.core import AdaptforgeError
from adaptforge.evaluate import EvalResult, evaluate_task
from adaptforge.library import AdapterRecord, Library, MetricRow, TaskEntry
from adaptforge.pipelines.common import record_result, task_entry
from adaptforge.provenance import TaskRef, TrainProvenance
from adaptforge.scorers import make_scorer
from adaptforge.snapshots import demonstrations_of
from adaptforge.tasks import Task
from adaptforge.train.checkpoint import load_checkpoint
from adaptforge.train.config import TrainConfig
from adaptforge.train.samplers import SAMPLERS
from adaptforge.train.trainer import ProgressFn, TrainResult, train_tasks

DEMONSTRATIONS = 64  # labelled train examples stored with snapshots (label-stratified, the run's seed)


@dataclass
class TrainedAdapter:
    record: AdapterRecord
    result: TrainResult
    evals: list[EvalResult]  # the trained adapter on each task's eval split
    zero_shot: list[EvalResult]  # the base model on the same examples, in the same order


def check_train_request(
    library: Library, name: str, cfg: TrainConfig | None, *, resume: bool = False, overwrite: bool = False
) -> None:
    """What can be refused from the library and the config alone, so a caller checks it before loading the base
    model: a misspelt sampler or option, a taken name, a stopped run's checkpoint without --resume/--overwrite."""
    if cfg is not None:
        SAMPLERS.get(cfg.sampler).parse_params(cfg.sampler_options)
    library.check_free(name, overwrite)
    left = load_checkpoint(library.run_dir(name)) if not resume and not overwrite else None
    if left is not None:
        raise AdaptforgeError(
            f"a run of {name!r} stopped at step {left.step} and left its checkpoint in "
            f"{library.run_dir(name)}; pass --resume to continue it, or --overwrite to start over"
        )


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
    check_train_request(library, name, cfg, resume=resume, overwrite=overwrite)
    with library.run_lock(name):  # a second train of this name refuses at once
        left = load_checkpoint(library.run_dir(name)) if not resume else None
        if left is not None:
            if not overwrite:
                raise AdaptforgeError(
                    f"a run of {name!r} stopped at step {left.step} and left its checkpoint in "
                    f"{library.run_dir(name)}; pass --resume to continue it, or --overwrite to start over"
                )
            library.clear_run(name)
        result = train_tasks(
            tasks, backbone, cfg, checkpoint_dir=library.run_dir(name), resume=resume, progress=progress
        )
        scorer = make_scorer(backbone, result.config.max_length, result.config.temperature)
        fingerprints = {t.name: t.fingerprint() for t in tasks}
        cells = [(task, split) for task in tasks for split in eval_splits if split in task.splits]
        evals = [evaluate_task(scorer, t, split, result.delta, name, eval_limit) for t, split in cells]
        zero_shot = [evaluate_task(scorer, t, split, None, None, eval_limit) for t, split in cells]
        metrics = [
            MetricRow(
                None,
                backbone.fingerprint,
                ev.task,
                ev.split,
                metric,
                value,
                ev.n,
                subset=ev.subset,
                task_fingerprint=fingerprints[ev.task],
            )
            for ev in evals
            for metric, value in ev.metric_values().items()
        ]
        for (task, _), ev in zip(cells, zero_shot, strict=True):  # the base model's row, next to the adapter's
            record_result(library, None, backbone.fingerprint, task, ev)
        single = tasks[0] if len(tasks) == 1 else None
        snapshots = result.snapshots
        if snapshots is not None and single is not None:  # the task's demonstrations, for in-context conditions
            examples = single.sample("train", DEMONSTRATIONS, seed=result.config.seed)
            snapshots = dataclasses.replace(snapshots, demonstrations=demonstrations_of(examples))
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
            base=backbone,
            task=task_entry(scorer, single) if single else TaskEntry("+".join(t.name for t in tasks)),
            provenance=provenance,
            metrics=metrics,
            overwrite=overwrite,
            snapshots=snapshots,
        )
        library.clear_run(name)
        return TrainedAdapter(record, result, evals, zero_shot)
