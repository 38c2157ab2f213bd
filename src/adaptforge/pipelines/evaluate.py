"""``adaptforge eval``: every (adapter or zero-shot) x task cell on one split, recorded in the catalog."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import adaptforge.compose  # noqa: F401 - registers the arrow router that stored compositions name
import adaptforge.merge  # noqa: F401 - registers the entropy (DaWin) router that stored merges name
from adaptforge.backbone import Backbone
from adaptforge.core import AdaptforgeError
from adaptforge.evaluate import EvalResult, check_request, evaluate
from adaptforge.library import AdapterRecord, Library
from adaptforge.pipelines.common import Notify, load_base, record_result
from adaptforge.routing import Router, stored_router
from adaptforge.scorers import Scorer, make_scorer
from adaptforge.tasks import Task


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
    routed adapter (DaWin merge, Arrow composition) is evaluated through its router, exactly as when it was
    made (:func:`~adaptforge.routing.stored_router`)."""
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
            router = stored_router(library, rec, backbone.fingerprint)
        for task in tasks:
            if on_cell:
                on_cell(task.name, adapter)
            if router is not None:
                res = router.evaluate(scorer, task, split, limit, adapter)
            else:
                res = evaluate(scorer, task, split, delta, adapter=adapter, limit=limit)
            results.append(res)
            if record and library is not None:
                record_result(library, adapter_id, backbone.fingerprint, task, res)
    return results


@dataclass
class GridOutcome:
    """Every evaluated cell, and one line per adapter that could not be evaluated (another base, unloadable)."""

    results: list[EvalResult]
    skipped: list[str]


def evaluate_adapters(
    tasks: Sequence[Task],
    library: Library | None,
    adapters: Sequence[str],
    *,
    zero_shot: bool,
    model: str | None = None,
    split: str = "test",
    limit: int | None = None,
    on_cell: Callable[[str, str | None], None] | None = None,
    notify: Notify | None = None,
) -> GridOutcome:
    """``adaptforge eval``: adapters grouped by the base they were made on, each group on its own base (or on
    ``--model``, where adapters of another base are skipped with a reason instead of aborting the grid)."""
    check_request(tasks, split, limit)
    if adapters and library is None:
        raise AdaptforgeError("evaluating a named adapter needs --library")
    records = [library.get(name) for name in adapters] if library is not None else []
    groups: dict[str, list[AdapterRecord]] = {}
    for rec in records:
        groups.setdefault(rec.base_fingerprint, []).append(rec)
    results: list[EvalResult] = []
    skipped: list[str] = []
    if not groups:
        backbone = load_base(model, notify=notify)
        return GridOutcome(
            evaluate_grid(tasks, backbone, library, [], zero_shot=True, split=split, limit=limit, on_cell=on_cell),
            skipped,
        )
    for fingerprint, group in groups.items():
        names = [r.name for r in group]
        try:
            backbone = load_base(model, group, notify=notify)
        except AdaptforgeError as err:
            skipped += [f"{n}: base {group[0].base_model!r} cannot be loaded ({err})" for n in names]
            continue
        if backbone.fingerprint != fingerprint:
            skipped += [f"{n}: made on base {group[0].base_model!r}, not on --model {model!r}" for n in names]
            continue
        results += evaluate_grid(
            tasks, backbone, library, names, zero_shot=zero_shot, split=split, limit=limit, on_cell=on_cell
        )
        zero_shot = False  # one zero-shot row: the first base's
    return GridOutcome(results, skipped)
