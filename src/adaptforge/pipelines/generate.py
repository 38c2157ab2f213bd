"""``adaptforge generate``: an adapter for a task never trained on, from its description and labels.

The library's generator (:mod:`adaptforge.generate`), fitted on the tasks' own adapters and cached in
``<library>/generators/<key>``, decodes the adapter; it is stored with the training adapters as parents
and a :class:`~adaptforge.provenance.GenerateProvenance`.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from pathlib import Path

from adaptforge.backbone import Backbone
from adaptforge.core import AdaptforgeError
from adaptforge.evaluate import check_request, evaluate
from adaptforge.generate import GeneratorConfig, LoraGenerator, collect_samples
from adaptforge.library import AdapterRecord, Library
from adaptforge.pipelines.common import NewTaskOutcome, Notify, check_has_adapters, load_base, reporter, zero_shot_vs
from adaptforge.provenance import GenerateProvenance
from adaptforge.scorers import describe, make_scorer
from adaptforge.tasks import Task

GENERATORS_DIR = "generators"
FEW_ADAPTERS = 8  # below this many training adapters a learned generator has little to learn from


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
    say = reporter(notify)
    config = config or GeneratorConfig()
    samples = collect_samples(library, backbone.fingerprint, exclude_tasks=exclude_tasks)
    records = [library.get(name) for name in samples.names]
    folder = library.root / GENERATORS_DIR / generator_key(records, config)
    if folder.is_dir():
        say(f"reusing generator {folder.name} ({len(records)} adapters)")
        return LoraGenerator.load(folder), records, folder
    if len(records) < FEW_ADAPTERS:
        say(
            f"warning: the generator learns from only {len(records)} adapters; with fewer than {FEW_ADAPTERS} it "
            "can do little more than return their mean (train or import more tasks' adapters)"
        )
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
    say = reporter(notify)
    start = time.perf_counter()
    library.check_free(out, overwrite)
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
    check_has_adapters(library, "generate")
    backbone = load_base(model, library=library, backbone=backbone, notify=say)
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
        provenance=GenerateProvenance(task=task.name, labels=list(task.labels), seed=seed, info=info),
        parents=[r.id for r in records],
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
    outcome.seconds = time.perf_counter() - start
    return outcome
