"""The Python API: a small, stable surface over the verbs for scripts and notebooks.

    from adaptforge import api

    model = api.load_model()                       # the embedded MiniLM; "smollm2" or a model folder
    lib = api.open_library("lib")                  # created when new
    task = api.shipped_task("sst2")                # or api.load_task(folder | SNI .json | .csv)
    api.train(task, lib, "sst2-lora", model, api.TrainConfig(epochs=1, max_train=64))
    adapter = api.load_adapter(lib, "sst2-lora", model)
    scored = api.score(model, task, ["a gripping film"], adapter)   # scored.predictions, scored.logits
    api.merge(lib, ["sst2-lora", "subjectivity-lora"], "both", method="ties", params={"density": 0.2})
    api.evaluate(model, task, adapter, split="test").accuracy

Everything here is a thin call into :mod:`adaptforge.pipelines` (the same code the CLI runs) and keeps its
signature across releases; the modules below it may change.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from adaptforge.backbone import Backbone
from adaptforge.core import AdaptforgeError, LoraDelta
from adaptforge.evaluate import EvalResult, evaluate_task, logits_of
from adaptforge.generation import GenerationResult
from adaptforge.library import AdapterRecord, Library
from adaptforge.scorers import make_scorer
from adaptforge.tasks import Example, Task
from adaptforge.tasks import load_task as _load_task
from adaptforge.train.config import TrainConfig

__all__ = [
    "AdapterRecord",
    "AdaptforgeError",
    "Backbone",
    "Library",
    "LoraDelta",
    "Scored",
    "Task",
    "TrainConfig",
    "evaluate",
    "load_adapter",
    "load_model",
    "load_task",
    "merge",
    "open_library",
    "score",
    "shipped_task",
    "train",
]


@dataclass(frozen=True)
class Scored:
    """Label logits of some texts: ``logits[i, j]`` is text i's score for ``labels[j]``."""

    labels: tuple[str, ...]
    logits: torch.Tensor

    @property
    def predictions(self) -> list[str]:
        return [self.labels[int(i)] for i in self.logits.argmax(-1)]

    @property
    def probabilities(self) -> torch.Tensor:
        return self.logits.softmax(-1)


def load_model(name: str | None = None) -> Backbone:
    """The base model: ``None`` the embedded all-MiniLM-L6-v2, ``"smollm2"`` the embedded LLM, else a Hugging Face
    model folder (or a hub name in the local cache)."""
    return Backbone.load(name)


def open_library(path: str | Path, create: bool = True) -> Library:
    """The adapter library at ``path`` (created when new unless ``create=False``)."""
    return Library(Path(path), create=create)


def load_task(
    path: str | Path, *, text_col: str = "text", label_col: str = "label", description: str | None = None
) -> Task:
    """A task folder, a Super-NaturalInstructions ``.json`` or a ``.csv`` (``description``: its instruction)."""
    return _load_task(path, text_col=text_col, label_col=label_col, description=description)


def shipped_task(name: str) -> Task:
    """One of the small real tasks that ship inside the package (``sst2``, ``agnews``, ``subjectivity``, ...)."""
    folder = Path(__file__).resolve().parent / "data" / "tasks" / name
    if not (folder / "task.json").is_file():
        known = sorted(p.name for p in folder.parent.iterdir() if (p / "task.json").is_file())
        raise AdaptforgeError(f"no shipped task {name!r}; shipped: {', '.join(known)}")
    return _load_task(folder)


def train(
    task: Task | Sequence[Task],
    library: Library,
    name: str,
    model: Backbone | None = None,
    config: TrainConfig | None = None,
    *,
    overwrite: bool = False,
) -> AdapterRecord:
    """Train a LoRA adapter on ``task`` (several tasks: one multi-task adapter, ``config.sampler``) and add it to
    ``library`` as ``name``; its dev accuracy is recorded. Returns the stored record."""
    from adaptforge.pipelines.train import train_into_library

    return train_into_library(task, model or load_model(), library, name, config, overwrite=overwrite).record


def load_adapter(library: Library, name: str, model: Backbone | None = None) -> LoraDelta:
    """An adapter's LoRA weights, checksum verified (and, given ``model``, checked to be made on that base)."""
    delta, _ = library.load(name, expected_fingerprint=model.fingerprint if model is not None else None)
    return delta


def score(
    model: Backbone,
    task: Task,
    texts: Sequence[str],
    adapter: LoraDelta | None = None,
    batch_size: int = 64,
) -> Scored:
    """Score ``texts`` against ``task``'s labels under its instruction, with ``adapter`` applied (``None``:
    zero-shot), exactly as evaluation and ``adaptforge predict`` do."""
    if task.generative or not task.labels:
        raise AdaptforgeError(f"task {task.name!r} has no labels to score; answer a generation task with predict")
    scorer = make_scorer(model)
    examples = [Example(str(t), task.labels[0]) for t in texts]  # the label is unused: only logits are read
    with model.applied(adapter) as applied:
        logits = logits_of(scorer, task, examples, applied, batch_size=batch_size)
    return Scored(tuple(task.labels), logits)


def evaluate(
    model: Backbone,
    task: Task,
    adapter: LoraDelta | None = None,
    split: str = "test",
    limit: int | None = None,
) -> EvalResult | GenerationResult:
    """Accuracy and macro-F1 of ``adapter`` (``None``: zero-shot) on a split (exact match and ROUGE-L for a
    generation task); ``limit``: a seeded label-stratified sample."""
    return evaluate_task(make_scorer(model), task, split, adapter, limit=limit)


def merge(
    library: Library,
    adapters: Sequence[str],
    out: str,
    method: str = "task_arithmetic",
    params: Mapping[str, Any] | None = None,
    *,
    overwrite: bool = False,
) -> AdapterRecord:
    """Merge ``adapters`` (names) with a registered method (``adaptforge merge --list``) into ``out``, stored with
    its lineage. Data-driven methods are for the CLI's recipe (``--data``)."""
    from adaptforge.pipelines.merge import MergeRecipe, merge_into_library

    recipe = MergeRecipe.from_mapping(
        {"method": method, "adapters": list(adapters), "params": dict(params or {}), "out": out}, where="api.merge"
    )
    return merge_into_library(recipe, library, overwrite=overwrite).record
