"""Typed provenance: what made an adapter, one dataclass per kind, stored as its catalog row's recipe.

Every pipeline that adds an adapter says how it was made with one of these, so a recipe always has the
same keys for the same kind, and ``kind``, ``method`` and ``params`` (the catalog columns) are derived
from it in one place instead of five hand-built ``Library.add`` calls. The recipe JSON of each kind is
what earlier versions wrote, so stored libraries read the same. ``prune`` provenance is written beside a
pruned model; ``tta`` provenance comes with an adapter a test-time stream adapted (``adaptforge tta --save``).

Reading goes the other way: each type's ``from_recipe(recipe, params)`` rebuilds it from a stored row, and
handles the keys older versions wrote (there, once); :func:`read` picks the type by kind. Readers never
raise on a field they do not need: a stored library stays readable.
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

    @classmethod
    @abstractmethod
    def from_recipe(cls, recipe: Mapping[str, Any], params: Mapping[str, Any]) -> Provenance:
        """The provenance a stored row's recipe and params describe (the inverse of ``recipe``/``params``)."""

    def labels_by_task(self) -> dict[str, tuple[str, ...]]:
        """Task name -> its label set, as the adapter was made for (empty when none was recorded)."""
        return labels_of(self.params())

    def router_settings(self) -> dict[str, Any] | None:
        """The stored router's settings (a per-input merge or composition), else None."""
        return None

    def routed_over(self) -> tuple[str, ...]:
        """Ids (or, in recipes from before ids were stored, names) of the adapters the router mixes."""
        return ()


ROUTER_KEY = "router"
LEGACY_ROUTER_KEY = "routing"  # Arrow compositions stored before the router contract was unified


def labels_of(params: Mapping[str, Any]) -> dict[str, tuple[str, ...]]:
    """``params["labels"]`` (task -> label names) as tuples of strings; anything else recorded there is ignored."""
    labels = params.get("labels") if isinstance(params, Mapping) else None
    if not isinstance(labels, Mapping):
        return {}
    return {str(t): tuple(str(n) for n in names) for t, names in labels.items() if isinstance(names, (list, tuple))}


def router_of(recipe: Mapping[str, Any]) -> dict[str, Any] | None:
    """The router settings in a stored recipe, from the current key or the legacy one (None: a static adapter)."""
    settings = recipe.get(ROUTER_KEY) or recipe.get(LEGACY_ROUTER_KEY)
    return dict(settings) if isinstance(settings, Mapping) and settings.get("router") else None


def routed_over_of(recipe: Mapping[str, Any]) -> tuple[str, ...]:
    """The adapters a stored router mixes: the ids its settings record, else (recipes from before they did) the
    merge's inputs (``adapter_ids``) or the composition's candidates, by name; () for a static adapter."""
    settings = router_of(recipe)
    if settings is None:
        return ()
    candidates = [c.get("name") for c in recipe.get("candidates") or [] if isinstance(c, Mapping)]
    ids = settings.get("adapter_ids") or recipe.get("adapter_ids") or candidates
    return tuple(str(i) for i in ids)


def _dict(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else []


def _int(value: Any, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _float(value: Any, default: float = 0.0) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def _numbers(value: Any) -> dict[str, float]:
    """A mapping of names to numbers, keeping only the entries that are numbers."""
    items = _dict(value).items()
    return {str(k): float(v) for k, v in items if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _only_task(params: Mapping[str, Any], fallback: str = "") -> tuple[str, tuple[str, ...]]:
    labels = labels_of(params)
    return next(iter(labels.items())) if len(labels) == 1 else (fallback, ())


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
            "kind": self.kind,
            "config": dict(self.config),
            "tasks": [t.to_json() for t in self.tasks],
            "n_train": self.n_train,
            "seconds": round(self.seconds, 2),
            "history": list(self.history),
            "curves": dict(self.curves),
            "draws": dict(self.draws),
            "resumed_from": self.resumed_from,
        }

    @classmethod
    def from_recipe(cls, recipe: Mapping[str, Any], params: Mapping[str, Any]) -> TrainProvenance:
        # recipes before the kind was settled say "train_multitask" in `kind`; the method column says it now
        tasks = [t for t in _list(recipe.get("tasks")) if isinstance(t, Mapping)]
        return cls(
            config=_dict(recipe.get("config")),
            tasks=[TaskRef(str(t.get("name")), t.get("version"), str(t.get("fingerprint", ""))) for t in tasks],
            labels=labels_of(params),
            n_train=_int(recipe.get("n_train")),
            seconds=_float(recipe.get("seconds")),
            history=_list(recipe.get("history")),
            curves=_dict(recipe.get("curves")),
            draws=_dict(recipe.get("draws")),
            resumed_from=recipe.get("resumed_from"),
        )


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

    @classmethod
    def from_recipe(cls, recipe: Mapping[str, Any], params: Mapping[str, Any]) -> ImportProvenance:
        return cls(source=str(recipe.get("source", "")), peft_config=_dict(recipe.get("peft_config")))


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

    _OWN_KEYS: ClassVar[tuple[str, ...]] = ("kind", "adapter_ids", "data", "reconstruction_error", "info", "seconds")

    @classmethod
    def from_recipe(cls, recipe: Mapping[str, Any], params: Mapping[str, Any]) -> MergeProvenance:
        skip = (*cls._OWN_KEYS, ROUTER_KEY, LEGACY_ROUTER_KEY)
        errors = _numbers(_dict(recipe.get("reconstruction_error")).get("per_module"))
        return cls(
            merge_recipe={k: v for k, v in recipe.items() if k not in skip},
            typed_params=dict(params),
            adapter_ids=[str(i) for i in _list(recipe.get("adapter_ids"))],
            data=[d for d in _list(recipe.get("data")) if isinstance(d, Mapping)],
            reconstruction_error=errors,
            router=router_of(recipe),
            info=_dict(recipe.get("info")),
            seconds=_float(recipe.get("seconds")),
        )

    def router_settings(self) -> dict[str, Any] | None:
        return None if self.router is None else dict(self.router)

    def routed_over(self) -> tuple[str, ...]:
        return routed_over_of(self.recipe())


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

    @classmethod
    def from_recipe(cls, recipe: Mapping[str, Any], params: Mapping[str, Any]) -> ComposeProvenance:
        task = _dict(recipe.get("task"))
        _, labels = _only_task(params)
        shots = _dict(recipe.get("shots"))
        own = {k: v for k, v in params.items() if k not in ("labels", "shots", "seed")}
        if "seed" in params and params["seed"] != shots.get("seed"):
            own["seed"] = params["seed"]  # the composer's own seed, given apart from the shots'
        return cls(
            composer=str(recipe.get("method", "")),
            composer_params=own,
            task=task,
            labels=list(labels_of(params).get(str(task.get("name")), labels)),
            shots=shots,
            candidates=[c for c in _list(recipe.get("candidates")) if isinstance(c, Mapping)],
            weights=_numbers(recipe.get("weights")),
            router=router_of(recipe),
            info=_dict(recipe.get("info")),
        )

    def router_settings(self) -> dict[str, Any] | None:
        return None if self.router is None else dict(self.router)

    def routed_over(self) -> tuple[str, ...]:
        return routed_over_of(self.recipe())


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

    @classmethod
    def from_recipe(cls, recipe: Mapping[str, Any], params: Mapping[str, Any]) -> GenerateProvenance:
        task, labels = _only_task(params)
        seed = params.get("seed")
        return cls(
            task=task,
            labels=list(labels) or [str(n) for n in _list(recipe.get("labels"))],
            seed=None if seed is None else _int(seed),
            info={k: v for k, v in recipe.items() if k not in ("kind", "labels")},
            generator_method=str(params.get("generator_method") or "span"),
            generator_id=None if params.get("generator_id") is None else str(params["generator_id"]),
            condition_source=str(params.get("condition_source") or "description"),
        )


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

    @property
    def pattern(self) -> str:
        """The sparsity pattern (``unstructured``, ``2:4``, ``4:8`` or ``ffn``: neurons removed, not zeroed)."""
        return str(self.prune_params.get("pattern") or "unstructured")

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

    @classmethod
    def from_recipe(cls, recipe: Mapping[str, Any], params: Mapping[str, Any]) -> PruneProvenance:
        parent = _dict(recipe.get("parent"))
        size = recipe.get("intermediate_size")
        return cls(
            prune_method=str(recipe.get("method", "")),
            prune_params=_dict(recipe.get("params")) or dict(params),
            parent_model=str(parent.get("model", "")),
            parent_fingerprint=str(parent.get("fingerprint", "")),
            fingerprint=str(recipe.get("fingerprint", "")),
            calibration=_dict(recipe.get("calibration")),
            layers=_numbers(recipe.get("layers")),
            sparsity=_float(recipe.get("sparsity")),
            intermediate_size=None if size is None else _int(size),
            seconds=_float(recipe.get("seconds")),
        )


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

    @classmethod
    def from_recipe(cls, recipe: Mapping[str, Any], params: Mapping[str, Any]) -> TtaProvenance:
        task = _dict(recipe.get("task"))
        limit = recipe.get("limit")
        return cls(
            tta_method=str(recipe.get("method", "")),
            tta_params=_dict(recipe.get("params")),
            granularity=str(recipe.get("granularity", "")),
            batch_size=_int(recipe.get("batch_size")),
            parent=_dict(recipe.get("parent")),
            task=task,
            labels=list(labels_of(params).get(str(task.get("name")), ())),
            split=str(recipe.get("split", "")),
            limit=None if limit is None else _int(limit),
            n=_int(recipe.get("n")),
            updated=_int(recipe.get("updated")),
            resets=_int(recipe.get("resets")),
            metrics=_dict(recipe.get("metrics")),
            candidates=[str(c) for c in _list(recipe.get("candidates"))],
            pool=[str(c) for c in _list(recipe.get("pool"))],
            seconds=_float(recipe.get("seconds")),
        )


PROVENANCE_TYPES: dict[str, type[Provenance]] = {
    t.kind: t
    for t in (
        TrainProvenance,
        ImportProvenance,
        MergeProvenance,
        ComposeProvenance,
        GenerateProvenance,
        PruneProvenance,
        TtaProvenance,
    )
}


_RECIPE_KINDS = {"train": "train", "train_multitask": "train", "import": "import", "merge": "merge"}
_RECIPE_KINDS |= {"compose": "compose", "generate": "generate"}


def legacy_kind(recipe: Mapping[str, Any] | None, method: str) -> str:
    """The kind of a row stored before kinds were recorded (catalog migration, rebuild from old adapter folders):
    its recipe's ``kind`` (every recipe adaptforge wrote has one), else what its method says; ``other`` when
    neither tells. New adapters get theirs from their typed provenance."""
    by_recipe = _RECIPE_KINDS.get(str((recipe or {}).get("kind")))
    if by_recipe is not None:
        return by_recipe
    return {"train": "train", "train_multitask": "train", "import": "import", "generate": "generate"}.get(
        method, "other"
    )


def read(kind: str, recipe: Mapping[str, Any], params: Mapping[str, Any]) -> Provenance | None:
    """The typed provenance of a stored row of this kind (None for ``other``: an adapter no verb made)."""
    reader = PROVENANCE_TYPES.get(kind)
    return None if reader is None else reader.from_recipe(_dict(recipe), _dict(params))
