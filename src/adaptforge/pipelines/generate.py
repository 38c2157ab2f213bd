"""``adaptforge generate``: an adapter for a task never trained on, by a registered generator (:data:`GENERATORS`).

``span`` (default) conditions on the description and labels; ``icm`` (ICM-LoRA) on the in-context task vector of
k demonstrations (``--examples``, ``--shots``; ``--shots 0``: the description). The method's generator, fitted
on the library and cached in ``<library>/generators/<key>``, decodes the adapter; it is stored with the training
adapters as parents and a :class:`~adaptforge.provenance.GenerateProvenance` naming the generator, the condition
source and the seed.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from adaptforge.backbone import Backbone
from adaptforge.core import AdaptforgeError
from adaptforge.evaluate import check_request, evaluate
from adaptforge.generate import GeneratorConfig, LoraGenerator
from adaptforge.generate.methods import FEW_ADAPTERS, GENERATORS, GENERATORS_DIR, SpanMethod, generator_key
from adaptforge.library import AdapterRecord, Library
from adaptforge.params import Params
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
from adaptforge.provenance import GenerateProvenance
from adaptforge.scorers import classification_only, make_scorer
from adaptforge.tasks import Example, Task, TaskFormatError, load_task, read_examples


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
    config = config or GeneratorConfig()
    got = SpanMethod.obtain(
        library, backbone.fingerprint, make_scorer(backbone), config, exclude_tasks, reporter(notify)
    )
    assert isinstance(got.generator, LoraGenerator)
    return got.generator, got.records, got.folder


def read_demonstrations(path: Path, labels: Sequence[str]) -> list[Example]:
    """Labelled examples from a JSONL file (``{"text": ..., "label": ...}`` per line, read by the task reader so
    its errors name the line and field) or a task folder's train split; every label must be one of ``labels``."""
    path = Path(path)
    if path.is_dir():
        task = load_task(path)
        classification_only(task, "generate --examples")
        examples = list(task.splits.get("train", ()))
        bad = [e.label for e in examples if e.label not in labels]
        if bad:
            raise AdaptforgeError(f"--examples {path}: label {bad[0]!r} is not one of --labels {list(labels)}")
        return examples
    if not path.is_file():
        raise AdaptforgeError(f"--examples {path}: no such file")
    try:
        return list(read_examples(path, labels))
    except TaskFormatError as err:
        raise AdaptforgeError(
            f"--examples {err}; demonstrations are labelled, one JSON object per line like "
            '{"text": ..., "label": ...} (--shots 0 conditions on the description alone)'
        ) from None


def generate_into_library(
    description: str,
    labels: Sequence[str],
    library: Library,
    out: str,
    *,
    method: str = "span",
    examples: Sequence[Example] | None = None,
    shots: int | None = None,
    params: Params | Mapping[str, Any] | None = None,
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
    """Generate an adapter for a task never trained on with a registered generator (:data:`GENERATORS`):
    ``span`` from its description and labels, ``icm`` from ``shots`` of its ``examples`` (in-context task
    vector; ``shots=0``: description only). ``eval_task`` (optional) reports zero-shot vs generated."""
    say = reporter(notify)
    start = time.perf_counter()
    gen_method = GENERATORS.get(method)
    library.check_free(out, overwrite)
    if eval_task is not None:
        check_request([eval_task], eval_split, limit)
        classification_only(eval_task, f"generate {method!r} --eval")
    if not isinstance(description, str) or not description.strip():
        raise AdaptforgeError("--description must be a non-empty task description")
    if config is not None and params is None:
        params = config
    if method == "icm" and shots is not None:
        base = params if isinstance(params, Mapping) else (params.to_dict() if params is not None else {})
        params = {**base, **({"condition": "description"} if shots == 0 else {"shots": shots})}
    typed = gen_method.parse_params(params)
    task = Task(task_name or out, description.strip(), tuple(labels), {})
    if eval_task is not None and tuple(eval_task.labels) != task.labels:
        raise AdaptforgeError(
            f"--eval task {eval_task.name!r} has labels {list(eval_task.labels)}, but --labels gave "
            f"{list(task.labels)}; they must match (same order)"
        )
    k = gen_method.uses_demonstrations(typed)
    demos: list[Example] = []
    if k:
        given = list(examples or ())
        if not given:
            raise AdaptforgeError(
                f"--method {method} conditions on {k} demonstrations of the task: pass --examples FILE (JSONL with "
                "'text' and 'label', or a task folder), or --shots 0 for description-only conditioning"
            )
        if k > len(given):
            raise AdaptforgeError(
                f"--shots {k} but --examples holds {len(given)} labelled example(s); pass --shots {len(given)} "
                "or fewer, or give more examples"
            )
        missing = [e for e in given if e.label not in task.labels]
        if missing:
            raise AdaptforgeError(f"--examples: label {missing[0].label!r} is not one of --labels {list(task.labels)}")
        pool = Task(task.name, task.description, task.labels, {"train": tuple(given)})
        demos = list(pool.sample("train", k, seed=seed or 0))
    check_has_adapters(library, "generate")
    gen_method.check_library(library)
    backbone = load_base(model, library=library, backbone=backbone, notify=say)
    scorer = make_scorer(backbone)
    got = gen_method.obtain(library, backbone.fingerprint, scorer, typed, (), say)
    condition, source = gen_method.condition(scorer, task, demos, typed)
    gen_start = time.perf_counter()
    delta = got.generator.generate(condition, seed=seed)
    generation_seconds = time.perf_counter() - gen_start
    info = {
        "generator_method": method,
        "generator": str(got.folder.relative_to(library.root)),
        "generator_id": got.folder.name,
        "generator_params": typed.to_dict(),
        "condition_source": source,
        "generator_bytes": got.generator_bytes,
        "training_bytes": got.training_bytes,
        "final_adapter_bytes": got.final_bytes or got.training_bytes,
        "training_adapters": len(got.records),
        "seed": seed,
        "generation_seconds": round(generation_seconds, 3),
        "generator_info": got.generator.info,
    }
    if isinstance(got.generator, LoraGenerator):
        sizes = got.generator.sizes()
        info |= {
            "generator_parameters": sizes["generator_parameters"],
            "training_adapter_parameters": sizes["library_parameters"],
        }
    say(
        f"generator {got.folder.name} ({method}): learned from {len(got.records)} library adapters "
        f"({got.training_bytes / 1e6:.2f} MB of weights); its own weights take {got.generator_bytes / 1e6:.2f} MB"
    )
    record = library.add(
        delta,
        name=out,
        base=backbone,
        task=task_entry(scorer, task),
        provenance=GenerateProvenance(
            task=task.name,
            labels=list(task.labels),
            seed=seed,
            info=info,
            generator_method=method,
            generator_id=got.folder.name,
            condition_source=source,
        ),
        parents=[r.id for r in got.records],
        overwrite=overwrite,
    )
    say(f"added {record.name} ({record.id}) to {library.root}")
    outcome = NewTaskOutcome(record, "generate", 0.0, info)
    if eval_task is not None:
        outcome.evals = zero_shot_vs(
            scorer,
            eval_task,
            eval_split,
            limit,
            library,
            record,
            lambda: evaluate(scorer, eval_task, eval_split, delta, adapter=record.name, limit=limit),
        )
        warn_if_worse(say, record.name, outcome.evals["adapter"], outcome.evals["zero_shot"])
    outcome.seconds = time.perf_counter() - start
    return outcome


__all__ = ["FEW_ADAPTERS", "GENERATORS_DIR", "generator_key", "generate_into_library", "library_generator"]
