"""What the catalog stores: the adapter record, metric rows, kinds, the errors, and the checks every field
passes before it is written (names, embeddings, JSON). Imports neither torch nor SQLite."""

from __future__ import annotations

import json
import math
import os
import re
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from adaptforge.errors import AdaptforgeError
from adaptforge.provenance import Provenance, labels_of, read, routed_over_of, router_of

CATALOG_FILE = "catalog.sqlite"
ADAPTERS_DIR = "adapters"
RUNS_DIR = "runs"
GENERATORS_DIR = "generators"
EXPORT_RECORD_FILE = "adaptforge.json"
LOCKS_DIR = ".locks"
PROVENANCE_FORMAT = "adaptforge-adapter-record"
MAX_NAME_LENGTH = 128
ID_PATTERN = re.compile(r"^[0-9a-f]{16}$")
EMBEDDING_DTYPE = np.dtype("<f4")

KINDS = ("train", "import", "merge", "compose", "generate", "prune", "tta", "other")
OWN_KINDS = ("train", "import")


class LibraryError(AdaptforgeError):
    """A library operation that cannot be done as asked (unknown name, name taken, bad input, ...)."""


class CorruptAdapterError(LibraryError):
    """An adapter's files no longer match the checksums recorded when it was added."""


class BaseMismatchError(LibraryError):
    """An adapter trained on a different base model than the one it is being loaded for."""


@dataclass(frozen=True)
class MetricRow:
    """One metric value of one adapter (or of the bare base model, ``adapter_id=None``) on a task split."""

    adapter_id: str | None
    base_fingerprint: str
    task: str
    split: str
    metric: str
    value: float
    n: int
    created: float = field(default_factory=time.time)
    subset: str = "all"  # which examples of the split: "all", or the seeded sample ("sample:64:seed0")
    task_fingerprint: str | None = None  # the task's content hash: the same name may hold other data later

    def to_json(self) -> dict[str, Any]:
        return {
            "adapter_id": self.adapter_id,
            "base_fingerprint": self.base_fingerprint,
            "task": self.task,
            "task_fingerprint": self.task_fingerprint,
            "split": self.split,
            "subset": self.subset,
            "metric": self.metric,
            "value": None if math.isnan(self.value) else self.value,
            "n": self.n,
            "created": self.created,
        }


class BaseLike(Protocol):
    """The base model an adapter is stored against: its name (or folder) and weight fingerprint. A loaded
    :class:`~adaptforge.backbone.Backbone` is one; :class:`BaseRef` names one without loading it."""

    @property
    def name(self) -> str: ...

    @property
    def fingerprint(self) -> str: ...


@dataclass(frozen=True)
class BaseRef:
    """A base model by name (or folder) and fingerprint, without loading it."""

    name: str
    fingerprint: str


@dataclass(frozen=True)
class TaskEntry:
    """The task an adapter is for, as the catalog stores it: its name, its description and the description's
    embedding (what ``similar`` ranks by). An adapter of no one task (``name`` None) may still be described."""

    name: str | None
    description: str | None = None
    embedding: np.ndarray | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class AdapterRecord:
    """The catalog's view of one adapter. ``parents`` are ids in order; some may since have been removed."""

    id: str
    name: str
    task: str | None
    description: str | None
    base_model: str
    base_fingerprint: str
    rank: int
    targets: tuple[str, ...]
    recipe: dict = field(compare=False)
    method: str
    params: dict = field(compare=False)
    parents: tuple[str, ...]
    checksum: str  # sha256 of adapter_model.safetensors
    created: float
    path: Path
    embedding: np.ndarray | None = field(compare=False, repr=False)
    config_checksum: str = ""  # sha256 of adapter_config.json
    kind: str = "other"  # what made it: one of KINDS (the method column says which algorithm)
    extra_checksums: dict = field(default_factory=dict, compare=False)  # more files of the folder -> sha256

    def __hash__(self) -> int:
        return hash((self.id, self.checksum))

    @property
    def is_task_adapter(self) -> bool:
        """Is this a task's own adapter: trained on (or imported for) exactly that one task?

        The one rule for "the adapter of task T": merges compare against it, composition and the generator
        draw candidates from it. Merged, composed, generated and multi-task adapters are derived, never
        a task's own (a composed aTLAS adapter and an aTLAS merge share a method name, not a kind).
        """
        return self.kind in OWN_KINDS and self.task is not None and self.method != "train_multitask"

    @property
    def provenance(self) -> Provenance | None:
        """How it was made, typed (:mod:`adaptforge.provenance`); None for an adapter of kind ``other``."""
        return read(self.kind, self.recipe, self.params)

    @property
    def labels(self) -> dict[str, tuple[str, ...]]:
        """Task name -> label set, as recorded when the adapter was made (empty when none was)."""
        return labels_of(self.params)

    @property
    def own_labels(self) -> tuple[str, ...] | None:
        """The label set of the task it was made for: its task's entry, else the only one recorded."""
        labels = self.labels
        if self.task in labels:
            return labels[str(self.task)]
        return next(iter(labels.values())) if len(labels) == 1 else None

    @property
    def router_settings(self) -> dict[str, Any] | None:
        """The settings of the router stored with a per-input merge or composition (None: a static adapter)."""
        return router_of(self.recipe)

    @property
    def routed_over(self) -> tuple[str, ...]:
        """The adapters its router mixes, in order: ids, or names in recipes from before ids were stored."""
        return routed_over_of(self.recipe)

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict (path as a string, embedding as a list of floats or None)."""
        return {
            "id": self.id,
            "name": self.name,
            "task": self.task,
            "description": self.description,
            "base_model": self.base_model,
            "base_fingerprint": self.base_fingerprint,
            "rank": self.rank,
            "targets": list(self.targets),
            "recipe": self.recipe,
            "method": self.method,
            "params": self.params,
            "parents": list(self.parents),
            "checksum": self.checksum,
            "config_checksum": self.config_checksum,
            "created": self.created,
            "path": str(self.path),
            "embedding": None if self.embedding is None else [float(x) for x in self.embedding],
            "kind": self.kind,
            "extra_checksums": dict(self.extra_checksums),
        }


def validate_name(name: object) -> str:
    """Names are catalog keys, never paths: refuse anything that could be mistaken for one or for an id.

    The one check of every output name (train, import, merge, compose, generate): besides the catalog,
    a name becomes a folder under ``runs/``, so ``.``/``..``, separators and control characters are refused,
    and so is a leading dot (reserved for temp folders, locks and hidden files).
    """
    if not isinstance(name, str):
        raise LibraryError(f"adapter name must be a string, got {type(name).__name__}")
    if not name.strip():
        raise LibraryError("adapter name is empty or whitespace only")
    if name.startswith("."):
        raise LibraryError(
            f"adapter name {name!r} starts with a dot; names such as '.' and '..' would be paths, and leading "
            "dots are reserved for temporary files"
        )
    if len(name) > MAX_NAME_LENGTH:
        raise LibraryError(f"adapter name {name[:40]!r}... is {len(name)} characters; at most {MAX_NAME_LENGTH}")
    if name != name.strip():
        raise LibraryError(f"adapter name {name!r} starts or ends with whitespace")
    if "/" in name or "\\" in name or os.sep in name or (os.altsep and os.altsep in name):
        raise LibraryError(f"adapter name {name!r} contains a path separator")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise LibraryError(f"adapter name {name!r} contains a control character")
    if ID_PATTERN.match(name):
        raise LibraryError(f"adapter name {name!r} looks like an adapter id (16 hex digits); choose another name")
    if not name.isprintable():
        raise LibraryError(f"adapter name {name!r} contains a non-printable character")
    return name


def require_text(value: object, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise LibraryError(f"{what} must be a non-empty string, got {value!r}")
    return value


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


def dump_json(value: Any, what: str) -> str:
    try:
        return json.dumps(value, sort_keys=True, default=_json_default)
    except (TypeError, ValueError) as err:
        raise LibraryError(f"{what} must be JSON-serialisable: {err}") from None


def as_embedding(embedding: Any) -> np.ndarray:
    """A description embedding as stored: a finite, non-zero 1-D float32 vector."""
    try:
        arr = np.asarray(embedding, dtype=np.float32)
    except (TypeError, ValueError) as err:
        raise LibraryError(f"embedding is not a numeric vector: {err}") from None
    if arr.ndim == 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 1 or arr.size == 0:
        raise LibraryError(f"embedding must be a non-empty 1-D vector, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise LibraryError("embedding holds NaN or infinite values")
    if not np.any(arr):
        raise LibraryError("embedding is all zeros; cosine similarity is undefined for it")
    return arr.astype(EMBEDDING_DTYPE, copy=False)


def frozen(vector: np.ndarray) -> np.ndarray:
    """A read-only float32 copy (records are frozen, and so are their embeddings)."""
    out = np.array(vector, dtype=np.float32)
    out.flags.writeable = False
    return out


def check_kind(kind: object) -> str:
    if kind not in KINDS:
        raise LibraryError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    return str(kind)


def check_metric_row(row: MetricRow) -> MetricRow:
    if not isinstance(row, MetricRow):
        raise LibraryError(f"metrics must be MetricRow objects, got {type(row).__name__}")
    require_text(row.base_fingerprint, "metric base_fingerprint")
    require_text(row.task, "metric task")
    require_text(row.split, "metric split")
    require_text(row.metric, "metric name")
    try:
        float(row.value)
    except (TypeError, ValueError):
        raise LibraryError(f"metric {row.metric!r} value {row.value!r} is not a number") from None
    if not isinstance(row.n, (int, np.integer)) or isinstance(row.n, bool) or row.n < 0:
        raise LibraryError(f"metric {row.metric!r}: n must be a non-negative integer, got {row.n!r}")
    return row


def new_id() -> str:
    return uuid.uuid4().hex[:16]
