"""Library-level operations that the CLI (and users' scripts) call: each one reads from and writes
to the adapter library with its recipe, so every result can be traced back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import adaptforge.compose  # noqa: F401  (registers the arrow router)
import adaptforge.merge  # noqa: F401  (registers the entropy router)
from adaptforge.adapters import check_compatible, read_adapter
from adaptforge.backbone import Backbone
from adaptforge.core import AdaptforgeError
from adaptforge.evaluate import EvalResult, check_request, evaluate
from adaptforge.library import AdapterRecord, Library, MetricRow, validate_name
from adaptforge.routing import Router, rebuild, stored_settings
from adaptforge.scorers import Scorer, make_scorer
from adaptforge.tasks import Task
from adaptforge.train.config import TrainConfig
from adaptforge.train.trainer import ProgressFn, TrainResult, train_tasks

log = logging.getLogger(__name__)


def describe(scorer: Scorer, task: Task) -> np.ndarray:
    """Embedding of a task's description and label set, stored in the catalog for retrieval."""
    text = f"{task.description} Labels: {', '.join(task.labels)}."
    return scorer.embed_texts([text])[0].numpy().astype(np.float32)


def check_new_name(library: Library, name: str, overwrite: bool) -> None:
    """Refuse an output name that is taken (unless overwriting), before any work is done."""
    validate_name(name)
    if library.exists(name) and not overwrite:
        raise AdaptforgeError(
            f"adapter name {name!r} already exists in {library.root}; choose another name or pass --overwrite"
        )


def metric_values(result: EvalResult) -> dict[str, float]:
    return {"accuracy": result.accuracy, "macro_f1": result.macro_f1, "loss": result.loss}


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
    check_new_name(library, name, overwrite)
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
            for metric, value in metric_values(ev).items()
        ]
        single = tasks[0] if len(tasks) == 1 else None
        recipe = {
            "kind": "train" if single else "train_multitask",
            "config": result.config.to_dict(),
            "tasks": [{"name": t.name, "version": t.version, "fingerprint": t.fingerprint()} for t in tasks],
            "n_train": result.n_train,
            "seconds": round(result.seconds, 2),
            "history": result.history,
            "curves": result.curves,
            "draws": dict(zip(result.tasks, result.draws, strict=True)),
            "resumed_from": result.resumed_from,
        }
        record = library.add(
            result.delta,
            name=name,
            base_model=backbone.name,
            base_fingerprint=backbone.fingerprint,
            task=single.name if single else "+".join(t.name for t in tasks),
            description=single.description if single else None,
            embedding=describe(scorer, single) if single else None,
            recipe=recipe,
            method="train" if single else "train_multitask",
            params={"labels": {t.name: list(t.labels) for t in tasks}},
            metrics=metrics,
            overwrite=overwrite,
        )
        library.clear_run(name)
        return TrainedAdapter(record, result, evals)


def import_peft_folder(
    folder: str | Path,
    backbone: Backbone,
    library: Library,
    name: str,
    task: Task | None = None,
    overwrite: bool = False,
) -> AdapterRecord:
    """Import a LoRA folder made by PEFT (or anyone) after checking it fits ``backbone``."""
    check_new_name(library, name, overwrite)
    delta, config = read_adapter(folder)
    check_compatible(delta, backbone.model, what=str(folder))
    stated = config.get("base_model_name_or_path")
    if stated and Path(stated).name != Path(backbone.name).name:
        log.warning(
            "%s: its config names base model %r; importing it for %r, whose layers it fits",
            folder,
            stated,
            backbone.name,
        )
    embedding = describe(make_scorer(backbone), task) if task else None
    return library.add(
        delta,
        name=name,
        base_model=backbone.name,
        base_fingerprint=backbone.fingerprint,
        task=task.name if task else None,
        description=task.description if task else None,
        embedding=embedding,
        recipe={"kind": "import", "source": str(Path(folder).resolve()), "peft_config": config},
        method="import",
        overwrite=overwrite,
    )


def routed_settings(router: Router | None, adapter_ids: Sequence[str]) -> dict[str, Any] | None:
    """What a routed adapter's recipe stores under ``router``: the router's settings and the ids of the
    adapters it routes over, in order (``None`` for a static adapter)."""
    return None if router is None else {**router.describe(), "adapter_ids": list(adapter_ids)}


def stored_router(library: Library, record: AdapterRecord, backbone: Backbone) -> Router | None:
    """The router of a stored routed adapter (DaWin merge, Arrow composition), rebuilt from its recipe;
    ``None`` for a static adapter. Its stored tensors are only the static fallback, so evaluating it without
    the router would measure something else. Recipes written before the router stored its adapter ids name
    them as the merge's inputs (``adapter_ids``) or the composition's candidates."""
    settings = stored_settings(record.recipe)
    if settings is None:
        return None
    recipe = record.recipe or {}
    names = (
        settings.get("adapter_ids") or recipe.get("adapter_ids") or [c["name"] for c in recipe.get("candidates", [])]
    )
    missing = [n for n in names if not library.exists(n)]
    if not names or missing:
        raise AdaptforgeError(
            f"adapter {record.name!r} routes over {names} but {missing or 'none'} of them are not in the library "
            f"{library.root}; re-add them or make it again"
        )
    deltas = [library.load(n, expected_fingerprint=backbone.fingerprint)[0] for n in names]
    return rebuild(settings, deltas)


def evaluate_grid(
    tasks: Sequence[Task],
    backbone: Backbone,
    library: Library | None,
    adapters: Sequence[str],
    *,
    zero_shot: bool,
    split: str = "test",
    limit: int | None = None,
    record: bool = True,
    on_cell: Callable[[str, str | None], None] | None = None,
    scorer: Scorer | None = None,
) -> list[EvalResult]:
    """Every (adapter or zero-shot) x task cell; metrics are written to the library when given. A stored
    routed adapter (DaWin merge, Arrow composition) is evaluated through its router (:func:`stored_router`)."""

    check_request(tasks, split, limit)
    scorer = scorer or make_scorer(backbone)
    columns: list[str | None] = ([None] if zero_shot else []) + list(adapters)
    results = []
    for adapter in columns:
        delta = None
        adapter_id = None
        router: Router | None = None
        if adapter is not None:
            if library is None:
                raise AdaptforgeError("evaluating a named adapter needs --library")
            delta, rec = library.load(adapter, expected_fingerprint=backbone.fingerprint)
            adapter_id = rec.id
            router = stored_router(library, rec, backbone)
        for task in tasks:
            if on_cell:
                on_cell(task.name, adapter)
            if router is not None:
                res = router.evaluate(scorer, task, split, limit, adapter)
            else:
                res = evaluate(scorer, task, split, delta, adapter=adapter, limit=limit)
            results.append(res)
            if record and library is not None:
                library.record_metrics(adapter_id, backbone.fingerprint, task.name, split, metric_values(res), res.n)
    return results
