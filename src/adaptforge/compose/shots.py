"""The k labelled examples of a new task, split into the part a method fits on and a held-out part.

:func:`draw_shots` takes a label-stratified seeded sample of ``k`` examples (``Task.sample``) and sets
aside about ``holdout_fraction`` of them, again stratified by label, for early stopping. The held-out
part never takes the last example of a label, so every label seen in the shots is also in ``fit``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from adaptforge.core import AdaptforgeError
from adaptforge.tasks import Example, Task

MIN_SHOTS_FOR_HOLDOUT = 4  # below this, every shot is needed for fitting


@dataclass(frozen=True)
class Shots:
    """The few labelled examples of ``task``: ``fit`` (what a method learns from) and ``holdout``
    (for early stopping; may be empty). ``k = 0`` is a task known only by its description and labels."""

    task: Task
    fit: tuple[Example, ...]
    holdout: tuple[Example, ...]
    seed: int

    @property
    def k(self) -> int:
        return len(self.fit) + len(self.holdout)

    @property
    def examples(self) -> tuple[Example, ...]:
        return self.fit + self.holdout


def draw_shots(task: Task, k: int, seed: int = 0, split: str = "train", holdout_fraction: float = 0.25) -> Shots:
    """``k`` label-stratified examples of ``task``'s ``split`` (seeded, unstratified on a generation task);
    ``round(k * holdout_fraction)`` of them are held out (stratified, seeded) when ``k >= 4``. The same
    (task, k, seed) always gives the same shots."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise AdaptforgeError(f"task {task.name!r}: k (the number of shots) must be a non-negative integer, got {k!r}")
    if not isinstance(holdout_fraction, (int, float)) or not 0.0 <= holdout_fraction < 1.0:
        raise AdaptforgeError(f"holdout_fraction must be in [0, 1), got {holdout_fraction!r}")
    if k == 0:
        return Shots(task, (), (), seed)
    if split not in task.splits:
        available = ", ".join(task.splits) or "none"
        raise AdaptforgeError(
            f"task {task.name!r} has no {split!r} split to draw k={k} shots from (available: {available})"
        )
    pool = task.split(split)
    if k > len(pool):
        raise AdaptforgeError(
            f"task {task.name!r} has only {len(pool)} examples in its {split!r} split; cannot draw k={k} shots"
        )
    present = [] if task.generative else sorted({e.label for e in pool}, key=task.labels.index)
    if not task.generative and len(present) < 2:
        raise AdaptforgeError(
            f"task {task.name!r}: its {split!r} split has examples of {len(present)} label(s) {present}; "
            "few-shot composition needs examples of at least 2 labels"
        )
    examples = task.sample(split, k, seed=seed)
    n_holdout = round(k * holdout_fraction) if k >= MIN_SHOTS_FOR_HOLDOUT else 0
    if task.generative:  # free-text responses: no labels to stratify by
        held = set(random.Random(seed).sample(range(k), n_holdout))
    else:
        held = set(_holdout_indices([e.label for e in examples], n_holdout, seed))
    fit = tuple(e for i, e in enumerate(examples) if i not in held)
    holdout = tuple(e for i, e in enumerate(examples) if i in held)
    return Shots(task, fit, holdout, seed)


def _holdout_indices(labels: list[str], n: int, seed: int) -> list[int]:
    """``n`` indices shared among labels in proportion to their counts (largest remainder), never a label's
    last example: labels are capped at ``count - 1`` and what a cap leaves over goes to labels with room."""
    groups: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        groups.setdefault(label, []).append(i)
    sizes = {label: len(members) for label, members in groups.items()}
    room = {label: size - 1 for label, size in sizes.items()}
    n = min(n, sum(room.values()))
    exact = {label: n * size / len(labels) for label, size in sizes.items()}
    quota = {label: min(int(exact[label]), room[label]) for label in groups}
    by_remainder = sorted(groups, key=lambda lab: (-(exact[lab] - int(exact[lab])), -sizes[lab], labels.index(lab)))
    while sum(quota.values()) < n:
        label = next(lab for lab in by_remainder if quota[lab] < room[lab])
        quota[label] += 1
        by_remainder.remove(label)
        by_remainder.append(label)  # the next extra goes to another label first
    rng = random.Random(seed)
    chosen: list[int] = []
    for label, members in groups.items():
        chosen.extend(rng.sample(members, quota[label]))
    return sorted(chosen)
