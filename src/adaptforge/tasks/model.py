"""The task types: :class:`Example` and :class:`Task` (splits, sampling, fingerprint), the split names and task
types, the error every format reports with, and the label-stratified sampling the splits and ``Task.sample``
share."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from adaptforge.core import AdaptforgeError

SPLITS: tuple[str, ...] = ("train", "dev", "test")
"""The split names a task may have, in the order they are stored and written."""

TASK_TYPES: tuple[str, ...] = ("classification", "generation")
"""``task.json``'s ``type``: scored over a label set, or answered by free text (supervised fine-tuning)."""

MAX_INFERRED_LABELS = 50
"""More distinct outputs than this, with no explicit ``labels``, means the data is generative, not classification."""

_SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "dev": "dev",
    "valid": "dev",
    "validation": "dev",
    "val": "dev",
    "test": "test",
    "testing": "test",
}
_SPLIT_FRACTIONS = (0.8, 0.1, 0.1)


class TaskFormatError(AdaptforgeError):
    """Task data on disk (or handed to :class:`Task`) is malformed; the message says where and what was expected."""


def _where(file: str | Path, line: int | None = None, field_: str | None = None) -> str:
    """``file, line N, field "x"``: the one place error locations are formatted, so they all read alike."""
    parts = [str(file)]
    if line is not None:
        parts.append(f"line {line}")
    if field_ is not None:
        parts.append(f"field {field_!r}")
    return ", ".join(parts)


@dataclass(frozen=True)
class Example:
    """One labelled text; pair tasks (NLI, paraphrase, QA) put both parts into ``text``. In a generation task
    ``text`` is the prompt (the last user turn), ``label`` the response, and ``history`` the chat turns
    (``(role, content)``) before that prompt, if it came as a multi-turn conversation."""

    text: str
    label: str
    history: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.text, str):
            raise TaskFormatError(f"Example.text must be a string, got {type(self.text).__name__}")
        if not isinstance(self.label, str):
            raise TaskFormatError(f"Example.label must be a string, got {type(self.label).__name__}")
        object.__setattr__(self, "history", tuple((str(r), str(c)) for r, c in self.history))


@dataclass(frozen=True, repr=False)
class Task:
    """A classification task: instruction, fixed label order and its splits.

    Immutable so that a task can be shared between trainer, evaluator and library without copies;
    :meth:`with_splits` derives variants. ``path`` records where the task came from and is left out of
    equality, so a task written with :func:`write_task` and loaded back compares equal to the original.
    """

    name: str
    description: str
    labels: tuple[str, ...]
    splits: Mapping[str, tuple[Example, ...]]
    source: str | None = None
    license: str | None = None
    version: str | None = None
    path: Path | None = field(default=None, compare=False)
    task_type: str = "classification"  # one of TASK_TYPES; generation tasks have no labels

    @property
    def generative(self) -> bool:
        return self.task_type == "generation"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise TaskFormatError(f"task name must be a non-empty string, got {self.name!r}")
        if not isinstance(self.description, str):
            raise TaskFormatError(f"task {self.name!r}: description must be a string, got {self.description!r}")
        if isinstance(self.labels, str) or not isinstance(self.labels, Iterable):
            raise TaskFormatError(f"task {self.name!r}: labels must be a sequence of strings, got {self.labels!r}")
        labels = tuple(self.labels)
        if self.task_type not in TASK_TYPES:
            raise TaskFormatError(f"task {self.name!r}: type {self.task_type!r} is not one of {list(TASK_TYPES)}")
        problem = _label_list_problem(labels) if not self.generative else None
        if self.generative and labels:
            problem = f"a generation task has no labels, got {list(labels)}"
        if problem:
            raise TaskFormatError(f"task {self.name!r}: {problem}")
        allowed = set(labels)
        if not isinstance(self.splits, Mapping):
            raise TaskFormatError(
                f"task {self.name!r}: splits must be a mapping of split name to examples, "
                f"got {type(self.splits).__name__}"
            )
        unknown = sorted(set(self.splits) - set(SPLITS))
        if unknown:
            raise TaskFormatError(
                f"task {self.name!r}: unknown split(s) {', '.join(unknown)}; splits are {', '.join(SPLITS)}"
            )
        splits: dict[str, tuple[Example, ...]] = {}
        for split in SPLITS:
            if split not in self.splits:
                continue
            examples = tuple(self.splits[split])
            for i, example in enumerate(examples):
                if not isinstance(example, Example):
                    raise TaskFormatError(
                        f"task {self.name!r}, split {split!r}, example {i}: expected an Example, "
                        f"got {type(example).__name__}"
                    )
                if self.generative:
                    if not example.label.strip():
                        raise TaskFormatError(f"task {self.name!r}, split {split!r}, example {i}: empty response")
                elif example.label not in allowed:
                    raise TaskFormatError(
                        f"task {self.name!r}, split {split!r}, example {i}: label "
                        f"{example.label!r} is not one of {list(labels)}"
                    )
            splits[split] = examples
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "splits", MappingProxyType(splits))
        if self.path is not None:
            object.__setattr__(self, "path", Path(self.path))

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}={len(v)}" for k, v in self.splits.items())
        if self.generative:
            return f"Task(name={self.name!r}, generation, splits({sizes}))"
        return f"Task(name={self.name!r}, labels={self.labels!r}, splits({sizes}))"

    def __hash__(self) -> int:
        return hash(
            (
                self.name,
                self.description,
                self.labels,
                tuple(self.splits.items()),
                self.source,
                self.license,
                self.version,
                self.task_type,
            )
        )

    def split(self, name: str) -> tuple[Example, ...]:
        """The examples of one split; a missing split is an error that lists the ones present."""
        try:
            return self.splits[name]
        except KeyError:
            available = ", ".join(self.splits) or "none"
            raise TaskFormatError(f"task {self.name!r} has no split {name!r}; available: {available}") from None

    def label_ids(self, split: str) -> list[int]:
        """Each example's label as its index in :attr:`labels` (the class order every scorer uses)."""
        index = {label: i for i, label in enumerate(self.labels)}
        return [index[e.label] for e in self.split(split)]

    def label_counts(self, split: str) -> dict[str, int]:
        """How many examples of each label a split has, in label order (zero counts included)."""
        counts = dict.fromkeys(self.labels, 0)
        for e in self.split(split):
            counts[e.label] += 1
        return counts

    def sample(self, split: str, n: int | None, seed: int = 0) -> tuple[Example, ...]:
        """A reproducible, label-stratified subset of ``n`` examples, in the split's original order.

        ``n`` of ``None`` or at least the split size returns the whole split unchanged. Otherwise every label
        present gets at least one example when ``n`` allows it, and the rest is shared in proportion to the
        label counts, so small training budgets and evaluation limits still see every class.
        """
        examples = self.split(split)
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
            raise TaskFormatError(f"task {self.name!r}: sample size must be a non-negative integer or None, got {n!r}")
        if n is None or n >= len(examples):
            return examples
        if self.generative:  # free-text responses: no classes to stratify by
            return tuple(examples[i] for i in sorted(random.Random(seed).sample(range(len(examples)), n)))
        chosen = _stratified_pick([e.label for e in examples], n, random.Random(seed), at_least_one=True)
        return tuple(examples[i] for i in chosen)

    def with_splits(self, **splits: Sequence[Example] | None) -> Task:
        """A copy with the given splits replaced (``None`` drops a split); everything else is kept."""
        merged: dict[str, Sequence[Example]] = dict(self.splits)
        for name, examples in splits.items():
            if examples is None:
                merged.pop(name, None)
            else:
                merged[name] = examples
        return Task(
            self.name,
            self.description,
            self.labels,
            merged,
            self.source,
            self.license,
            self.version,
            self.path,
            self.task_type,
        )

    def fingerprint(self) -> str:
        """A short content hash (name, description, labels, all examples): identifies the data when ``version``
        is not set, e.g. to record exactly which data an adapter was trained on. Computed once per task (it
        is immutable): every recorded evaluation asks for it."""
        cached = self.__dict__.get("_fingerprint")
        if cached is not None:
            return cached
        h = hashlib.sha256()
        h.update(json.dumps([self.name, self.description, list(self.labels)], ensure_ascii=False).encode())
        if self.generative:  # classification fingerprints stay as they were recorded
            h.update(b"\n#generation")
        for split, examples in self.splits.items():
            h.update(f"\n#{split}\n".encode())
            for e in examples:
                row = [e.text, e.label] + ([[list(t) for t in e.history]] if e.history else [])
                h.update(json.dumps(row, ensure_ascii=False).encode() + b"\n")
        object.__setattr__(self, "_fingerprint", h.hexdigest()[:16])  # not a field: equality is unchanged
        return self.__dict__["_fingerprint"]


# --------------------------------------------------------------------------------------------- sampling


def _allocate(counts: Sequence[int], n: int) -> list[int]:
    """Share ``n`` among groups in proportion to ``counts`` (largest remainder; ties go to the earlier group)."""
    total = sum(counts)
    if total == 0:
        return [0] * len(counts)
    base = [n * c // total for c in counts]
    remainders = sorted(range(len(counts)), key=lambda i: (-(n * counts[i] % total), i))
    for i in remainders[: n - sum(base)]:
        base[i] += 1
    return base


def _stratified_pick(labels: Sequence[str], n: int, rng: random.Random, *, at_least_one: bool) -> list[int]:
    """Indices of ``n`` items drawn per label in proportion to label frequency, returned sorted.

    With ``at_least_one`` a label whose proportional share rounds to zero still gets one item when ``n`` is at
    least the number of labels (used for samples, where a missing class hurts); splitting keeps plain
    proportions instead so that rare labels are not pulled out of the training split.
    """
    groups: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        groups.setdefault(label, []).append(i)
    members = list(groups.values())
    sizes = [len(m) for m in members]
    quota = _allocate(sizes, n)
    if at_least_one and n >= len(members):
        # labels rounded down to nothing borrow one slot each from the currently largest share
        for i in [i for i, k in enumerate(quota) if k == 0]:
            donor = max(range(len(quota)), key=lambda j: (quota[j], -j))
            quota[donor] -= 1
            quota[i] = 1
    chosen: list[int] = []
    for group, k in zip(members, quota, strict=True):
        chosen.extend(rng.sample(group, k))
    return sorted(chosen)


def _split_examples(examples: Sequence[Example], seed: int, file: Path) -> dict[str, tuple[Example, ...]]:
    """Deterministic stratified 80/10/10 train/dev/test split of a single-file task."""
    total = len(examples)
    if total < 3:
        raise TaskFormatError(
            f"{file}: only {total} example(s); at least 3 are needed to split into train/dev/test "
            "(or assign splits yourself, e.g. with a 'split' column in a CSV)"
        )
    n_dev = max(1, round(total * _SPLIT_FRACTIONS[1]))
    n_test = max(1, round(total * _SPLIT_FRACTIONS[2]))
    rng = random.Random(seed)
    test_idx = set(_stratified_pick([e.label for e in examples], n_test, rng, at_least_one=False))
    rest = [i for i in range(total) if i not in test_idx]
    dev_idx = {rest[j] for j in _stratified_pick([examples[i].label for i in rest], n_dev, rng, at_least_one=False)}
    return {
        "train": tuple(examples[i] for i in range(total) if i not in test_idx and i not in dev_idx),
        "dev": tuple(examples[i] for i in sorted(dev_idx)),
        "test": tuple(examples[i] for i in sorted(test_idx)),
    }


# --------------------------------------------------------------------------------------------- validation helpers


def _label_list_problem(labels: Sequence[Any]) -> str | None:
    """Why a label list is unusable, or ``None``: scorers need >= 2 distinct non-empty string classes."""
    bad = [x for x in labels if not isinstance(x, str) or not x.strip()]
    if bad:
        return f"labels must be non-empty strings, got {bad[0]!r}"
    seen: set[str] = set()
    for x in labels:
        if x in seen:
            return f"labels must be unique, {x!r} appears more than once"
        seen.add(x)
    if len(labels) < 2:
        return f"a classification task needs at least 2 labels, got {list(labels)}"
    return None
