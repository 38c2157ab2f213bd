"""Typed provenance: what made an adapter, one dataclass per kind, stored as its catalog row's recipe.

Every pipeline that adds an adapter says how it was made with one of these, so a recipe always has the
same keys for the same kind, and ``kind``, ``method`` and ``params`` (the catalog columns) are derived
from it in one place instead of five hand-built ``Library.add`` calls. The recipe JSON of each kind is
what earlier versions wrote, so stored libraries read the same. ``prune`` provenance is written beside a
pruned model; ``tta`` provenance comes with an adapter a test-time stream adapted (``adaptforge tta --save``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar


@dataclass(frozen=True)
class Provenance(ABC):
    """How one adapter was made. ``kind`` is one of the library's ``KINDS``."""

    kind: ClassVar[str]

    @property
    @abstractmethod
    def method(self) -> str:
        """The algorithm (catalog column ``method``): ``train``, ``import``, a merge method, a composer..."""

    def params(self) -> dict[str, Any]:
        """The catalog column ``params``: what a reader needs without parsing the recipe (labels, seeds)."""
        return {}

    @abstractmethod
    def recipe(self) -> dict[str, Any]:
        """The full JSON recipe, starting with ``kind``."""


@dataclass(frozen=True)
class TaskRef:
    """A task as provenance records it: name, version and content fingerprint."""

    name: str
    version: str | int | None
    fingerprint: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "fingerprint": self.fingerprint}


@dataclass(frozen=True)
class TrainProvenance(Provenance):
    """``adaptforge train``: the resolved config, the tasks and labels, and the run's history."""

    kind: ClassVar[str] = "train"
    config: Mapping[str, Any]
    tasks: Sequence[TaskRef]
    labels: Mapping[str, Sequence[str]]
    n_train: int
    seconds: float
    history: Sequence[Any] = ()
    curves: Mapping[str, Any] = field(default_factory=dict)
    draws: Mapping[str, int] = field(default_factory=dict)
    resumed_from: int | None = None

    @property
    def method(self) -> str:
        return "train" if len(self.tasks) == 1 else "train_multitask"

    def params(self) -> dict[str, Any]:
        return {"labels": {name: list(labels) for name, labels in self.labels.items()}}

    def recipe(self) -> dict[str, Any]:
        return {
            "kind": self.method,
            "config": dict(self.config),
            "tasks": [t.to_json() for t in self.tasks],
            "n_train": self.n_train,
            "seconds": round(self.seconds, 2),
            "history": list(self.history),
            "curves": dict(self.curves),
            "draws": dict(self.draws),
            "resumed_from": self.resumed_from,
        }


@dataclass(frozen=True)
class ImportProvenance(Provenance):
    """``adaptforge library import``: the source folder and the PEFT config as found there; for an adaptforge
    export, ``origin`` is how it was made where it came from (method, kind, recipe, parents by name)."""

    kind: ClassVar[str] = "import"
    source: str
    peft_config: Mapping[str, Any]
    task: str | None = None
    labels: Sequence[str] = ()
    origin: Mapping[str, Any] | None = None

    @property
    def method(self) -> str:
        return "import"

    def params(self) -> dict[str, Any]:
        return {"labels": {self.task: list(self.labels)}} if self.task and self.labels else {}

    def recipe(self) -> dict[str, Any]:
        recipe = {"kind": "import", "source": self.source, "peft_config": dict(self.peft_config)}
        return recipe | ({"origin": dict(self.origin)} if self.origin is not None else {})


@dataclass(frozen=True)
class MergeProvenance(Provenance):
    """``adaptforge merge``: the resolved merge recipe (every default filled in), the input ids, the data
    fitted on, the re-factoring error, the router (per-input merges) and the method's info."""

    kind: ClassVar[str] = "merge"
    merge_recipe: Mapping[str, Any]
    typed_params: Mapping[str, Any]
    adapter_ids: Sequence[str]
    data: Sequence[Mapping[str, Any]]
    reconstruction_error: Mapping[str, float]
    router: Mapping[str, Any] | None
    info: Mapping[str, Any]
    seconds: float

    @property
    def method(self) -> str:
        return str(self.merge_recipe["method"])

    def params(self) -> dict[str, Any]:
        return dict(self.typed_params)

    def recipe(self) -> dict[str, Any]:
        errors = dict(self.reconstruction_error)
        return {
            "kind": "merge",
            **dict(self.merge_recipe),
            "adapter_ids": list(self.adapter_ids),
            "data": [dict(d) for d in self.data],
            "reconstruction_error": {
                "max": max(errors.values()) if errors else 0.0,
                "mean": sum(errors.values()) / len(errors) if errors else 0.0,
                "per_module": errors,
                "exact": not errors,
            },
            "router": None if self.router is None else dict(self.router),
            "info": dict(self.info),
            "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True)
class ComposeProvenance(Provenance):
    """``adaptforge compose``: the composer and its params, the task, the shots drawn, the candidates with
    their weights, and the router (per-input compositions)."""

    kind: ClassVar[str] = "compose"
    composer: str
    composer_params: Mapping[str, Any]
    task: Mapping[str, Any]
    labels: Sequence[str]
    shots: Mapping[str, Any]
    candidates: Sequence[Mapping[str, Any]]
    weights: Mapping[str, float]
    router: Mapping[str, Any] | None
    info: Mapping[str, Any]

    @property
    def method(self) -> str:
        return self.composer

    def params(self) -> dict[str, Any]:
        task = str(self.task["name"])
        shots = {"shots": self.shots["k"], "seed": self.shots["seed"]}
        return {"labels": {task: list(self.labels)}, **shots, **dict(self.composer_params)}

    def recipe(self) -> dict[str, Any]:
        return {
            "kind": "compose",
            "method": self.composer,
            "task": dict(self.task),
            "shots": dict(self.shots),
            "candidates": [dict(c) for c in self.candidates],
            "weights": dict(self.weights),
            "router": None if self.router is None else dict(self.router),
            "info": dict(self.info),
        }


@dataclass(frozen=True)
class GenerateProvenance(Provenance):
    """``adaptforge generate``: the task's labels, the generator (its folder in the library and sizes), the
    adapters it learned from and the sampling seed."""

    kind: ClassVar[str] = "generate"
    task: str
    labels: Sequence[str]
    seed: int | None
    info: Mapping[str, Any]
    generator_method: str = "span"
    generator_id: str | None = None  # the generator's folder name in <library>/generators
    condition_source: str = "description"  # what the condition was read from ("16 demonstrations", ...)

    @property
    def method(self) -> str:
        return self.generator_method  # the algorithm (span, icm); the kind says it was generated

    def params(self) -> dict[str, Any]:
        return {
            "labels": {self.task: list(self.labels)},
            "seed": self.seed,
            "generator_method": self.generator_method,
            "generator_id": self.generator_id,
            "condition_source": self.condition_source,
        }

    def recipe(self) -> dict[str, Any]:
        return {"kind": "generate", "labels": list(self.labels), **dict(self.info)}


@dataclass(frozen=True)
class PruneProvenance(Provenance):
    """``adaptforge prune``: written beside the pruned model (``adaptforge_prune.json``), linking it to its
    parent base: the method and its params, the sparsity reached per layer, and hashes of the calibration
    texts, so the pruned base can be traced and re-made."""

    kind: ClassVar[str] = "prune"
    prune_method: str
    prune_params: Mapping[str, Any]
    parent_model: str
    parent_fingerprint: str
    fingerprint: str
    calibration: Mapping[str, Any]
    layers: Mapping[str, float]
    sparsity: float
    intermediate_size: int | None
    seconds: float

    @property
    def method(self) -> str:
        return self.prune_method

    def params(self) -> dict[str, Any]:
        return dict(self.prune_params)

    def recipe(self) -> dict[str, Any]:
        return {
            "kind": "prune",
            "method": self.prune_method,
            "params": dict(self.prune_params),
            "parent": {"model": self.parent_model, "fingerprint": self.parent_fingerprint},
            "fingerprint": self.fingerprint,
            "calibration": dict(self.calibration),
            "sparsity": self.sparsity,
            "layers": dict(self.layers),
            "intermediate_size": self.intermediate_size,
            "seconds": round(self.seconds, 2),
        }


@dataclass(frozen=True)
class TtaProvenance(Provenance):
    """``adaptforge tta --save``: the adapter adapted along a stream of unlabelled inputs. The parent adapter,
    the test-time method and its params, the granularity and batch size, the task and split whose inputs (never
    labels) it adapted on, how many inputs updated it, the resets that fired, before/after metrics on those
    inputs, and what the method drew on besides (library candidates, training pools)."""

    kind: ClassVar[str] = "tta"
    tta_method: str
    tta_params: Mapping[str, Any]
    granularity: str
    batch_size: int
    parent: Mapping[str, Any]
    task: Mapping[str, Any]
    labels: Sequence[str]
    split: str
    limit: int | None
    n: int
    updated: int
    resets: int
    metrics: Mapping[str, Any]
    candidates: Sequence[str] = ()
    pool: Sequence[str] = ()
    seconds: float = 0.0

    @property
    def method(self) -> str:
        return self.tta_method

    def params(self) -> dict[str, Any]:
        task = str(self.task["name"])
        return {"labels": {task: list(self.labels)}, "granularity": self.granularity, **dict(self.tta_params)}

    def recipe(self) -> dict[str, Any]:
        return {
            "kind": "tta",
            "method": self.tta_method,
            "params": dict(self.tta_params),
            "granularity": self.granularity,
            "batch_size": self.batch_size,
            "parent": dict(self.parent),
            "task": dict(self.task),
            "split": self.split,
            "limit": self.limit,
            "n": self.n,
            "updated": self.updated,
            "resets": self.resets,
            "metrics": dict(self.metrics),
            "candidates": list(self.candidates),
            "pool": list(self.pool),
            "seconds": round(self.seconds, 2),
        }
