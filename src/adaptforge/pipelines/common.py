"""What several verbs share: progress messages, the rule that picks the base model, and the zero-shot vs
new-adapter comparison that compose and generate report."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from adaptforge.backbone import Backbone
from adaptforge.core import AdaptforgeError
from adaptforge.evaluate import EvalResult, evaluate_task
from adaptforge.library import AdapterRecord, Library, TaskEntry
from adaptforge.scorers import Scorer, describe
from adaptforge.tasks import Task

log = logging.getLogger(__name__)

Notify = Callable[[str], None]


def reporter(notify: Notify | None) -> Notify:
    """``notify`` or, when none is given (library use), the module log at INFO."""
    return notify or (lambda msg: log.info("%s", msg))


def choose_base(model: str | None, records: Sequence[AdapterRecord] = (), library: Library | None = None) -> str | None:
    """The one rule for which base model a verb loads: ``--model`` when given; else the base the given
    adapters were made on (they must agree); else the base most of the library's adapters use; else
    ``None`` (the embedded default)."""
    if model is not None:
        return model
    if records:
        bases = {(r.base_model, r.base_fingerprint) for r in records}
        if len({fp for _, fp in bases}) > 1:
            names = ", ".join(f"{r.name!r} on {r.base_model!r}" for r in records)
            raise AdaptforgeError(f"the adapters were made on different base models ({names}); pass --model")
        return records[0].base_model
    if library is not None:
        bases_of = [r.base_model for r in library.list()]
        if bases_of:
            return max(sorted(set(bases_of)), key=bases_of.count)
    return None


def load_base(
    model: str | None,
    records: Sequence[AdapterRecord] = (),
    library: Library | None = None,
    backbone: Backbone | None = None,
    notify: Notify | None = None,
) -> Backbone:
    """``backbone`` when the caller already holds one, else the base :func:`choose_base` picks, loaded."""
    if backbone is not None:
        return backbone
    name = choose_base(model, records, library)
    reporter(notify)(f"loading base model {name or 'embedded MiniLM'}")
    return Backbone.load(name)


def check_has_adapters(library: Library, verb: str) -> None:
    """Compose and generate build on the library's adapters: refuse an empty library before loading a model."""
    if len(library) == 0:
        raise AdaptforgeError(f"library {library.root} holds no adapters to {verb} from; train or import some first")


@dataclass
class NewTaskOutcome:
    """What compose or generate produced: the stored record, and zero-shot vs new adapter when evaluated."""

    record: AdapterRecord
    method: str
    seconds: float
    info: dict[str, Any]
    candidates: list[Any] = field(default_factory=list)  # compose.Candidate, summarised in to_json
    evals: dict[str, EvalResult] = field(default_factory=dict)  # "zero_shot" and "adapter"

    def to_json(self) -> dict[str, Any]:
        return {
            "adapter": self.record.name,
            "id": self.record.id,
            "method": self.method,
            "parents": list(self.record.parents),
            "candidates": [c.summary() for c in self.candidates],
            "seconds": round(self.seconds, 2),
            "info": self.info,
            "eval": {k: v.to_json() for k, v in self.evals.items()},
        }


def zero_shot_vs(
    scorer: Scorer,
    task: Task,
    split: str,
    limit: int | None,
    library: Library,
    record: AdapterRecord,
    adapter_eval: Callable[[], EvalResult],
) -> dict[str, EvalResult]:
    """Zero-shot and the new adapter on ``split`` (same examples); both recorded in the catalog."""
    zero = evaluate_task(scorer, task, split, None, limit=limit)
    tuned = adapter_eval()
    fp = scorer.backbone.fingerprint
    for res, adapter_id in ((zero, None), (tuned, record.id)):
        record_result(library, adapter_id, fp, task, res)
    return {"zero_shot": zero, "adapter": tuned}


def warn_if_worse(
    say: Notify, name: str, new: EvalResult, reference: EvalResult, what: str = "zero-shot", stored: bool = True
) -> bool:
    """Say so when an adapter made without full training (composed, generated, adapted at test time) scores below
    ``reference`` (the bare base, or the adapter it started from) on the same examples; returns whether it did."""
    if not new.primary < reference.primary:
        return False
    keep = f"; it is stored: `adaptforge library rm {name}` removes it" if stored else ""
    say(
        f"warning: {name} scores {new.primary:.3f} on {new.task}/{new.split} (n={new.n}), below {what} "
        f"{reference.primary:.3f}: the library's adapters may not suit this task{keep}"
    )
    return True


def record_result(
    library: Library,
    adapter_id: str | None,
    base_fingerprint: str,
    task: Task,
    result: EvalResult,
    values: Mapping[str, float] | None = None,
) -> None:
    """Store one evaluation in the catalog keyed by split, subset and the task's content (``values``: the
    metrics to store, by default the result's own)."""
    library.record_metrics(
        adapter_id,
        base_fingerprint,
        task.name,
        result.split,
        dict(values) if values is not None else result.metric_values(),
        result.n,
        subset=result.subset,
        task_fingerprint=task.fingerprint(),
    )


def task_entry(scorer: Scorer, task: Task) -> TaskEntry:
    """How the catalog refers to the task a new adapter is for: name, description and the description's
    embedding under ``scorer`` (what ``Library.similar`` ranks by)."""
    return TaskEntry(task.name, task.description, describe(scorer, task))
