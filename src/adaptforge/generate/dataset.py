"""Training samples of an adapter generator: the library's single-task adapters and their description embeddings.

A generator learns ``p(adapter | description embedding)`` from adapters that all have the same shape: one base
model, the same target modules, and the same ``(out, in, rank)`` per module (the *template*). Several adapters of
one task (seeds, data subsets) are several samples with that task's embedding. Adapters that do not fit the most
common template are skipped with a logged reason (ICM-LoRA, Shao et al. 2025, https://arxiv.org/abs/2501.17635,
likewise trains on one fixed adapter layout).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

import numpy as np

from adaptforge.core import AdaptforgeError, LoraDelta
from adaptforge.library import AdapterRecord, Library

log = logging.getLogger(__name__)

MIN_SAMPLES = 2


@dataclass(frozen=True)
class ModuleSpec:
    """One target module of the template: dense delta shape ``(out, in)``, LoRA rank and scale."""

    name: str
    out_features: int
    in_features: int
    rank: int
    scale: float

    def signature(self) -> tuple[str, int, int, int]:
        return (self.name, self.out_features, self.in_features, self.rank)

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "out": self.out_features,
            "in": self.in_features,
            "rank": self.rank,
            "scale": self.scale,
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> ModuleSpec:
        return cls(str(data["name"]), int(data["out"]), int(data["in"]), int(data["rank"]), float(data["scale"]))


@dataclass(frozen=True)
class AdapterTemplate:
    """The layout every sample shares and every generated adapter gets (modules in sorted order)."""

    modules: tuple[ModuleSpec, ...]

    @classmethod
    def of(cls, delta: LoraDelta) -> AdapterTemplate:
        return cls(tuple(ModuleSpec(n, *delta[n].shape, delta[n].rank, float(delta[n].scale)) for n in delta))

    @property
    def targets(self) -> list[str]:
        return [m.name for m in self.modules]

    @property
    def ranks(self) -> dict[str, int]:
        return {m.name: m.rank for m in self.modules}

    @property
    def shapes(self) -> dict[str, tuple[int, int]]:
        return {m.name: (m.out_features, m.in_features) for m in self.modules}

    @property
    def scales(self) -> dict[str, float]:
        return {m.name: m.scale for m in self.modules}

    def signature(self) -> tuple[tuple[str, int, int, int], ...]:
        """What must match between samples: names, shapes and ranks (scales may differ; they are folded in)."""
        return tuple(m.signature() for m in self.modules)

    def adapter_parameters(self) -> int:
        """Parameters of one adapter of this layout (``r * (in + out)`` per module)."""
        return sum(m.rank * (m.in_features + m.out_features) for m in self.modules)

    def mismatch(self, delta: LoraDelta) -> str | None:
        """Why ``delta`` does not fit this template (None: it fits)."""
        other = AdapterTemplate.of(delta)
        if [m.name for m in other.modules] != self.targets:
            return f"targets {len(other.modules)} modules ({other.targets[:2]}...), the template {len(self.modules)}"
        for mine, theirs in zip(self.modules, other.modules, strict=True):
            if mine.signature() != theirs.signature():
                return (
                    f"module {mine.name!r} is (out, in, rank) {theirs.signature()[1:]}, "
                    f"the template {mine.signature()[1:]}"
                )
        return None

    def to_json(self) -> list[dict[str, object]]:
        return [m.to_json() for m in self.modules]

    @classmethod
    def from_json(cls, data: Sequence[dict[str, object]]) -> AdapterTemplate:
        return cls(tuple(ModuleSpec.from_json(m) for m in data))


@dataclass
class GeneratorSamples:
    """``N`` adapters of one template with their description embeddings ``[N, d]`` (float32)."""

    deltas: list[LoraDelta]
    embeddings: np.ndarray
    names: list[str]
    tasks: list[str]
    template: AdapterTemplate
    base_fingerprint: str = ""
    skipped: dict[str, str] = field(default_factory=dict)  # adapter name -> why it was left out

    def __post_init__(self) -> None:
        self.embeddings = np.asarray(self.embeddings, dtype=np.float32)
        n = len(self.deltas)
        if self.embeddings.ndim != 2 or self.embeddings.shape[0] != n or len(self.names) != n or len(self.tasks) != n:
            raise AdaptforgeError(
                f"generator samples: {n} deltas, embeddings of shape {self.embeddings.shape}, {len(self.names)} "
                f"names and {len(self.tasks)} tasks; expected one embedding row, name and task per delta"
            )
        if not np.all(np.isfinite(self.embeddings)):
            raise AdaptforgeError("generator samples: embeddings contain NaN or infinity")
        for name, delta in zip(self.names, self.deltas, strict=True):
            reason = self.template.mismatch(delta)
            if reason is not None:
                raise AdaptforgeError(f"generator samples: adapter {name!r} does not fit the template: {reason}")

    def __len__(self) -> int:
        return len(self.deltas)

    @property
    def embedding_dim(self) -> int:
        return int(self.embeddings.shape[1])

    @classmethod
    def from_deltas(
        cls,
        deltas: Sequence[LoraDelta],
        embeddings: np.ndarray | Sequence[Sequence[float]],
        names: Sequence[str] | None = None,
        tasks: Sequence[str] | None = None,
    ) -> GeneratorSamples:
        """Samples from in-memory adapters; the first adapter defines the template (all must match it)."""
        if not deltas:
            raise AdaptforgeError("generator samples: no adapters given")
        names = list(names) if names is not None else [f"sample{i}" for i in range(len(deltas))]
        tasks = list(tasks) if tasks is not None else list(names)
        return cls(list(deltas), np.asarray(embeddings, dtype=np.float32), names, tasks, AdapterTemplate.of(deltas[0]))


def _candidate_reason(record: AdapterRecord, exclude: Collection[str]) -> str | None:
    if not record.is_task_adapter:
        return f"made by {record.kind} ({record.method}); only tasks' own adapters (trained or imported) are samples"
    if record.task is None or record.embedding is None:
        return "has no task description embedding"
    if record.task in exclude:
        return f"task {record.task!r} is excluded"
    return None


def collect_samples(library: Library, base_fingerprint: str, exclude_tasks: Collection[str] = ()) -> GeneratorSamples:
    """The library's single-task adapters on ``base_fingerprint`` with a description embedding, minus
    ``exclude_tasks``; those off the most common template (targets, shapes, ranks) or embedding size are skipped."""
    exclude = set(exclude_tasks)
    skipped: dict[str, str] = {}
    loaded: list[tuple[LoraDelta, AdapterRecord]] = []
    for record in library.list(base_fingerprint=base_fingerprint):
        reason = _candidate_reason(record, exclude)
        if reason is None:
            loaded.append(library.load(record.name, expected_fingerprint=base_fingerprint))
        else:
            skipped[record.name] = reason
    kept = _most_common_layout(loaded, skipped)
    for name, reason in skipped.items():
        log.info("generator samples: skipping %r: %s", name, reason)
    if len(kept) < MIN_SAMPLES:
        raise AdaptforgeError(
            f"library {library.root}: {len(kept)} usable adapter(s) on base {base_fingerprint}; a generator needs at "
            f"least {MIN_SAMPLES} single-task adapters with description embeddings and one layout "
            f"(skipped {len(skipped)}: {_summary(skipped)}). Train more adapters with `adaptforge train`."
        )
    template = AdapterTemplate.of(kept[0][0])
    return GeneratorSamples(
        deltas=[d for d, _ in kept],
        embeddings=np.stack([np.asarray(r.embedding, dtype=np.float32) for _, r in kept]),
        names=[r.name for _, r in kept],
        tasks=[str(r.task) for _, r in kept],
        template=template,
        base_fingerprint=base_fingerprint,
        skipped=skipped,
    )


def _most_common_layout(
    loaded: list[tuple[LoraDelta, AdapterRecord]], skipped: dict[str, str]
) -> list[tuple[LoraDelta, AdapterRecord]]:
    """The adapters of the most common (template, embedding size); the others go to ``skipped`` with a reason."""
    if not loaded:
        return []
    keys = [(AdapterTemplate.of(d).signature(), _dim(r)) for d, r in loaded]
    common = Counter(keys).most_common(1)[0][0]
    first = keys.index(common)
    template, dim = AdapterTemplate.of(loaded[first][0]), _dim(loaded[first][1])
    kept = []
    for key, (delta, record) in zip(keys, loaded, strict=True):
        if key == common:
            kept.append((delta, record))
        elif key[0] != common[0]:
            skipped[record.name] = f"layout differs from the most common one: {template.mismatch(delta)}"
        else:
            skipped[record.name] = f"description embedding has {key[1]} dimensions, the others {dim}"
    return kept


def _dim(record: AdapterRecord) -> int:
    return 0 if record.embedding is None else int(record.embedding.size)


def _summary(skipped: dict[str, str], limit: int = 3) -> str:
    items = [f"{name}: {reason}" for name, reason in list(skipped.items())[:limit]]
    return "; ".join(items) + ("; ..." if len(skipped) > limit else "") if items else "none"
