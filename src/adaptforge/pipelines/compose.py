"""``adaptforge compose``: an adapter for a new task from k labelled examples and the library's adapters.

Candidates are retrieved from the library (:func:`~adaptforge.compose.rank_candidates`), combined by a
registered composer (:mod:`adaptforge.compose`) and stored with the candidates as parents and a
:class:`~adaptforge.provenance.ComposeProvenance`. The output name is checked before any work; nothing is
written unless the whole operation succeeds.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from adaptforge.backbone import Backbone
from adaptforge.compose import COMPOSERS, ComposeResult, Shots, compose, draw_shots, evaluate_composed, rank_candidates
from adaptforge.core import AdaptforgeError
from adaptforge.evaluate import check_request
from adaptforge.library import Library
from adaptforge.pipelines.common import (
    NewTaskOutcome,
    Notify,
    check_has_adapters,
    load_base,
    reporter,
    task_entry,
    warn_if_worse,
    zero_shot_vs,
)
from adaptforge.provenance import ComposeProvenance
from adaptforge.routing import routed_settings
from adaptforge.scorers import classification_only, make_scorer
from adaptforge.tasks import Task


def compose_into_library(
    task: Task,
    library: Library,
    out: str,
    *,
    method: str = "lorahub",
    shots: int = 16,
    candidates: int = 20,
    seed: int = 0,
    params: Mapping[str, Any] | None = None,
    model: str | None = None,
    backbone: Backbone | None = None,
    exclude_tasks: Sequence[str] = (),
    eval_split: str | None = "test",
    limit: int | None = None,
    overwrite: bool = False,
    notify: Notify | None = None,
) -> NewTaskOutcome:
    """Compose an adapter for ``task`` from ``shots`` labelled train examples and the library's adapters.

    The ``candidates`` best adapters (description similarity, then loss on the shots) are combined by
    ``method``; the result is stored as ``out`` with the candidates as parents and the shots, weights and
    method info in its recipe. ``eval_split`` (``None``: skip) reports zero-shot vs the new adapter.
    """
    composer = COMPOSERS.get(method)
    if not composer.generative:
        classification_only(task, f"compose {method!r}")
    say = reporter(notify)
    start = time.perf_counter()
    library.check_free(out, overwrite)
    if eval_split is not None:
        check_request([task], eval_split, limit)
    drawn: Shots = draw_shots(task, shots, seed=seed)
    if composer.needs_shots and drawn.k == 0:
        raise AdaptforgeError(
            f"compose method {method!r} learns from labelled examples: give --shots K > 0 "
            "(retrieval and arrow work with --shots 0)"
        )
    check_has_adapters(library, "compose")
    backbone = load_base(model, library=library, backbone=backbone, notify=say)
    scorer = make_scorer(backbone, generative=task.generative)
    say(f"ranking library adapters for {task.name} ({drawn.k} shots)")
    found = rank_candidates(
        library, scorer, task, n=candidates, shots=drawn if drawn.k else None, exclude_tasks=exclude_tasks
    )
    say(f"composing {len(found)} candidates with {method}")
    result: ComposeResult = compose(method, found, scorer, drawn, {"seed": seed, **dict(params or {})})
    parents = [c.name for c, w in zip(found, result.weights, strict=True) if w != 0] or [c.name for c in found]
    provenance = ComposeProvenance(
        composer=method,
        composer_params=dict(params or {}),
        task={"name": task.name, "fingerprint": task.fingerprint(), "path": str(task.path) if task.path else None},
        labels=list(task.labels),
        shots={"k": drawn.k, "seed": seed, "fit": len(drawn.fit), "holdout": len(drawn.holdout)},
        candidates=[c.summary() for c in found],
        weights=dict(zip([c.name for c in found], result.weights, strict=True)),
        router=routed_settings(result.router, [library.get(c.name).id for c in found]),
        info=result.info,
    )
    record = library.add(
        result.delta,
        name=out,
        base=backbone,
        task=task_entry(scorer, task),
        provenance=provenance,
        parents=parents,
        overwrite=overwrite,
    )
    say(f"added {record.name} ({record.id}) to {library.root}")
    outcome = NewTaskOutcome(record, method, 0.0, provenance.recipe(), found)
    if eval_split is not None:
        outcome.evals = zero_shot_vs(
            scorer,
            task,
            eval_split,
            limit,
            library,
            record,
            lambda: evaluate_composed(scorer, task, result, eval_split, limit=limit, adapter=record.name),
        )
        warn_if_worse(say, record.name, outcome.evals["adapter"], outcome.evals["zero_shot"])
    outcome.seconds = time.perf_counter() - start
    return outcome
