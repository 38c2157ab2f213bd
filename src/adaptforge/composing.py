"""Library-level composition and generation: an adapter for a new task from k shots or a description.

``compose_into_library`` retrieves candidates from the library, composes them with a registered
method (:mod:`adaptforge.compose`) and stores the result with its candidates as parents;
``generate_into_library`` fits (or reuses) the conditional generator of the library's adapters
(:mod:`adaptforge.generate`) and decodes an adapter from a description and label set. Both check the
output name before any work and write nothing unless the whole operation succeeds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adaptforge.backbone import Backbone
from adaptforge.compose import (
    COMPOSERS,
    Candidate,
    ComposeResult,
    Shots,
    compose,
    draw_shots,
    evaluate_composed,
    rank_candidates,
)
from adaptforge.core import AdaptforgeError
from adaptforge.evaluate import EvalResult, check_request, evaluate
from adaptforge.generate import GeneratorConfig, LoraGenerator, collect_samples
from adaptforge.library import AdapterRecord, Library
from adaptforge.routing import RECIPE_KEY
from adaptforge.scorers import Scorer, make_scorer
from adaptforge.tasks import Task
from adaptforge.workflows import check_new_name, describe, metric_values, routed_settings

log = logging.getLogger(__name__)

Notify = Callable[[str], None]
GENERATORS_DIR = "generators"


@dataclass
class NewTaskOutcome:
    """What compose or generate produced: the stored record, and zero-shot vs new adapter when evaluated."""

    record: AdapterRecord
    method: str
    seconds: float
    info: dict[str, Any]
    candidates: list[Candidate] = field(default_factory=list)
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


def _backbone(library: Library, model: str | None, backbone: Backbone | None, notify: Notify) -> Backbone:
    """The given backbone, else ``model``, else the base model most of the library's adapters were trained on."""
    if backbone is not None:
        return backbone
    if model is None:
        bases = [r.base_model for r in library.list()]
        if not bases:
            raise AdaptforgeError(f"library {library.root} holds no adapters to compose or generate from")
        model = max(set(bases), key=bases.count)
    notify(f"loading base model {model}")
    return Backbone.load(model)


def _evaluate_pair(
    scorer: Scorer,
    task: Task,
    split: str,
    limit: int | None,
    library: Library,
    record: AdapterRecord,
    adapter_eval: Callable[[], EvalResult],
) -> dict[str, EvalResult]:
    """Zero-shot and the new adapter on ``split`` (same examples); both recorded in the catalog."""
    zero = evaluate(scorer, task, split, None, limit=limit)
    tuned = adapter_eval()
    fp = scorer.backbone.fingerprint
    for res, adapter_id in ((zero, None), (tuned, record.id)):
        library.record_metrics(adapter_id, fp, task.name, split, metric_values(res), res.n)
    return {"zero_shot": zero, "adapter": tuned}


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
    say = notify or (lambda msg: log.info("%s", msg))
    start = time.perf_counter()
    check_new_name(library, out, overwrite)
    if eval_split is not None:
        check_request([task], eval_split, limit)
    composer = COMPOSERS.get(method)
    drawn: Shots = draw_shots(task, shots, seed=seed)
    if composer.needs_shots and drawn.k == 0:
        raise AdaptforgeError(
            f"compose method {method!r} learns from labelled examples: give --shots K > 0 "
            "(retrieval and arrow work with --shots 0)"
        )
    backbone = _backbone(library, model, backbone, say)
    scorer = make_scorer(backbone)
    say(f"ranking library adapters for {task.name} ({drawn.k} shots)")
    found = rank_candidates(
        library, scorer, task, n=candidates, shots=drawn if drawn.k else None, exclude_tasks=exclude_tasks
    )
    say(f"composing {len(found)} candidates with {method}")
    result: ComposeResult = compose(method, found, scorer, drawn, {"seed": seed, **dict(params or {})})
    parents = [c.name for c, w in zip(found, result.weights, strict=True) if w != 0] or [c.name for c in found]
    recipe = {
        "kind": "compose",
        "method": method,
        "task": {"name": task.name, "fingerprint": task.fingerprint(), "path": str(task.path) if task.path else None},
        "shots": {"k": drawn.k, "seed": seed, "fit": len(drawn.fit), "holdout": len(drawn.holdout)},
        "candidates": [c.summary() for c in found],
        "weights": dict(zip([c.name for c in found], result.weights, strict=True)),
        RECIPE_KEY: routed_settings(result.router, [library.get(c.name).id for c in found]),
        "info": result.info,
    }
    record = library.add(
        result.delta,
        name=out,
        base_model=backbone.name,
        base_fingerprint=backbone.fingerprint,
        task=task.name,
        description=task.description,
        embedding=describe(scorer, task),
        recipe=recipe,
        method=method,
        params={"labels": {task.name: list(task.labels)}, "shots": drawn.k, "seed": seed, **dict(params or {})},
        parents=parents,
        overwrite=overwrite,
    )
    say(f"added {record.name} ({record.id}) to {library.root}")
    outcome = NewTaskOutcome(record, method, 0.0, recipe, found)
    if eval_split is not None:
        outcome.evals = _evaluate_pair(
            scorer,
            task,
            eval_split,
            limit,
            library,
            record,
            lambda: evaluate_composed(scorer, task, result, eval_split, limit=limit, adapter=record.name),
        )
    outcome.seconds = time.perf_counter() - start
    return outcome


def generator_key(records: Sequence[AdapterRecord], config: GeneratorConfig) -> str:
    """Identity of a generator: the exact adapters it was trained on (checksums) and its config."""
    payload = json.dumps(
        {"adapters": sorted(r.checksum for r in records), "config": config.to_dict()}, sort_keys=True
    ).encode()
    return hashlib.sha256(payload).hexdigest()[:16]


def library_generator(
    library: Library,
    backbone: Backbone,
    config: GeneratorConfig | None = None,
    exclude_tasks: Sequence[str] = (),
    notify: Notify | None = None,
) -> tuple[LoraGenerator, list[AdapterRecord], Path]:
    """The generator of the library's single-task adapters on ``backbone``: loaded from
    ``<library>/generators/<key>`` when one was fitted on exactly these adapters with this config, else
    fitted and saved there (atomically, by :meth:`LoraGenerator.save`)."""
    say = notify or (lambda msg: log.info("%s", msg))
    config = config or GeneratorConfig()
    samples = collect_samples(library, backbone.fingerprint, exclude_tasks=exclude_tasks)
    records = [library.get(name) for name in samples.names]
    folder = library.root / GENERATORS_DIR / generator_key(records, config)
    if folder.is_dir():
        say(f"reusing generator {folder.name} ({len(records)} adapters)")
        return LoraGenerator.load(folder), records, folder
    say(f"fitting the generator on {len(records)} adapters")
    generator = LoraGenerator.fit(samples, config)
    generator.save(folder)
    return generator, records, folder


def generate_into_library(
    description: str,
    labels: Sequence[str],
    library: Library,
    out: str,
    *,
    task_name: str | None = None,
    seed: int | None = None,
    config: GeneratorConfig | None = None,
    model: str | None = None,
    backbone: Backbone | None = None,
    eval_task: Task | None = None,
    eval_split: str = "test",
    limit: int | None = None,
    overwrite: bool = False,
    notify: Notify | None = None,
) -> NewTaskOutcome:
    """Generate an adapter for a task never trained on, from its description and labels alone (ICM-LoRA
    style, see :mod:`adaptforge.generate`); ``eval_task`` (optional) reports zero-shot vs generated."""
    say = notify or (lambda msg: log.info("%s", msg))
    start = time.perf_counter()
    check_new_name(library, out, overwrite)
    if eval_task is not None:
        check_request([eval_task], eval_split, limit)
    if not isinstance(description, str) or not description.strip():
        raise AdaptforgeError("--description must be a non-empty task description")
    task = Task(task_name or out, description.strip(), tuple(labels), {})
    if eval_task is not None and tuple(eval_task.labels) != task.labels:
        raise AdaptforgeError(
            f"--eval task {eval_task.name!r} has labels {list(eval_task.labels)}, but --labels gave "
            f"{list(task.labels)}; they must match (same order)"
        )
    backbone = _backbone(library, model, backbone, say)
    scorer = make_scorer(backbone)
    generator, records, folder = library_generator(library, backbone, config, notify=say)
    embedding = describe(scorer, task)
    delta = generator.generate(embedding, seed=seed)
    sizes = generator.sizes()
    info = {
        "generator": str(folder.relative_to(library.root)),
        "generator_parameters": sizes["generator_parameters"],
        "training_adapters": len(records),
        "training_adapter_parameters": sizes["library_parameters"],
        "seed": seed,
        "generator_info": generator.info,
    }
    record = library.add(
        delta,
        name=out,
        base_model=backbone.name,
        base_fingerprint=backbone.fingerprint,
        task=task.name,
        description=task.description,
        embedding=embedding,
        recipe={"kind": "generate", "labels": list(task.labels), **info},
        method="generate",
        params={"labels": {task.name: list(task.labels)}, "seed": seed},
        parents=[r.id for r in records],
        overwrite=overwrite,
    )
    say(f"added {record.name} ({record.id}) to {library.root}")
    outcome = NewTaskOutcome(record, "generate", 0.0, info)
    if eval_task is not None:
        outcome.evals = _evaluate_pair(
            scorer,
            eval_task,
            eval_split,
            limit,
            library,
            record,
            lambda: evaluate(scorer, eval_task, eval_split, delta, adapter=record.name, limit=limit),
        )
    outcome.seconds = time.perf_counter() - start
    return outcome
