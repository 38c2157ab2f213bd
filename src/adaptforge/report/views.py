"""From catalog rows to what each section of the page shows: the adapters x tasks grid, the best adapter per
task, merges against each task's own adapter, new-task adapters against zero-shot, and training runs.

Pure functions over :class:`~adaptforge.report.model.ReportInput`; every value they produce keeps the
metric row (or recipe key) it came from, so the page can trace it. When a value was recorded more than once
the row :func:`~adaptforge.library.shown_row` picks is shown: the one on the most examples, the newest among
equals, so a side-effect ``--limit`` evaluation never hides a fuller one.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from adaptforge.library.metrics import shown_row
from adaptforge.provenance import ComposeProvenance, GenerateProvenance, TrainProvenance
from adaptforge.report.model import ReportInput, Tail

if TYPE_CHECKING:
    from adaptforge.library import AdapterRecord, MetricRow

ACCURACY = "accuracy"
ROUTED_ACCURACY = "routed_accuracy"  # per-input (DaWin, Arrow) adapters evaluated through their router
NORMALIZED = "normalized_accuracy"
SPLIT_ORDER = ("test", "dev", "validation", "train")
NEW_TASK_KINDS = ("compose", "generate")


def task_names(record: AdapterRecord) -> list[str]:
    """The tasks an adapter is for: one, or several joined by ``+`` (multi-task training and merges)."""
    return [t for t in (record.task or "").split("+") if t]


class MetricIndex:
    """The catalog's metric rows by (adapter id, task, split, metric), oldest first: the one lookup every
    section uses, so the grid, the merges and the new-task tables agree on which row a number is."""

    def __init__(self, rows: Iterable[MetricRow]) -> None:
        self._rows: dict[tuple[str | None, str, str, str], list[MetricRow]] = defaultdict(list)
        for row in sorted(rows, key=lambda r: r.created):
            if not math.isnan(row.value):
                self._rows[(row.adapter_id, row.task, row.split, row.metric)].append(row)

    def shown(self, adapter_id: str | None, task: str, split: str, metric: str) -> MetricRow | None:
        """The row that stands for this score (:func:`~adaptforge.library.shown_row`)."""
        return shown_row(self._rows.get((adapter_id, task, split, metric), []))

    def on_same_examples(self, adapter_id: str, like: MetricRow, metric: str = ACCURACY) -> MetricRow | None:
        """The newest ``metric`` row of an adapter on the task, split, base and number of examples of ``like``."""
        rows = self._rows.get((adapter_id, like.task, like.split, metric), [])
        same = [r for r in rows if r.n == like.n and r.base_fingerprint == like.base_fingerprint]
        return same[-1] if same else None

    def accuracy(self, adapter_id: str, task: str, split: str) -> MetricRow | None:
        """The shown accuracy, plain or routed (``merge --eval`` records a per-input merge's score as
        ``routed_accuracy``; ``eval`` of the stored adapter routes it too and records ``accuracy``)."""
        found = [self.shown(adapter_id, task, split, m) for m in (ACCURACY, ROUTED_ACCURACY)]
        return shown_row([r for r in found if r is not None])

    def zero_shot(self, base_fingerprint: str, task: str, split: str, n: int | None = None) -> MetricRow | None:
        """The bare base model's accuracy on the task: the newest on ``n`` examples when recorded, else the shown
        row."""
        rows = [r for r in self._rows.get((None, task, split, ACCURACY), []) if r.base_fingerprint == base_fingerprint]
        same = [r for r in rows if r.n == n]
        return same[-1] if same else shown_row(rows)

    def zero_shot_bases(self, split: str) -> list[str]:
        """Base fingerprints with a zero-shot accuracy on ``split``."""
        return sorted(
            {
                r.base_fingerprint
                for (a, _, s, m), rows in self._rows.items()
                if a is None and s == split and m == ACCURACY
                for r in rows
            }
        )

    def splits(self) -> list[str]:
        found = {split for (_, _, split, metric) in self._rows if metric in (ACCURACY, ROUTED_ACCURACY)}
        return sorted(found, key=lambda s: (SPLIT_ORDER.index(s) if s in SPLIT_ORDER else len(SPLIT_ORDER), s))

    def tasks(self, split: str) -> list[str]:
        return sorted({t for (_, t, s, m) in self._rows if s == split and m in (ACCURACY, ROUTED_ACCURACY)})


# ------------------------------------------------------------------------------------------------ the grid


@dataclass(frozen=True)
class GridCell:
    """An adapter's accuracy on one task and split, and the zero-shot row it is compared with."""

    adapter: AdapterRecord
    row: MetricRow
    zero: MetricRow | None

    @property
    def delta(self) -> float | None:
        return None if self.zero is None else self.row.value - self.zero.value


@dataclass(frozen=True)
class Grid:
    """Adapters x tasks on one split. ``zero`` holds the zero-shot row per (base fingerprint, task)."""

    split: str
    tasks: tuple[str, ...]
    adapters: tuple[AdapterRecord, ...]
    cells: Mapping[tuple[str, str], GridCell]
    zero: Mapping[tuple[str, str], MetricRow]
    unevaluated: tuple[AdapterRecord, ...]

    @property
    def bases(self) -> list[str]:
        return sorted({base for base, _ in self.zero})

    @property
    def column_n(self) -> dict[str, int]:
        """Per task, the number of examples most of its cells were scored on (the larger on a tie): a cell on
        another number is marked, since it does not compare with the rest of its column."""
        counts: dict[str, Counter[int]] = defaultdict(Counter)
        for (_, task), cell in self.cells.items():
            counts[task][cell.row.n] += 1
        for (_, task), row in self.zero.items():
            counts[task][row.n] += 1
        return {task: max(c.items(), key=lambda kv: (kv[1], kv[0]))[0] for task, c in counts.items()}


def grids(data: ReportInput, index: MetricIndex) -> list[Grid]:
    """One grid per split that holds accuracies (test first, then dev, then the rest)."""
    out = []
    for split in index.splits():
        tasks = index.tasks(split)
        cells: dict[tuple[str, str], GridCell] = {}
        for record in data.adapters:
            for task in tasks:
                row = index.accuracy(record.id, task, split)
                if row is not None:
                    zero = index.zero_shot(row.base_fingerprint, task, split, row.n)
                    cells[(record.id, task)] = GridCell(record, row, zero)
        shown = tuple(r for r in data.adapters if any((r.id, t) in cells for t in tasks))
        zero = {}
        for base in index.zero_shot_bases(split):
            for task in tasks:
                row = index.zero_shot(base, task, split)
                if row is not None:
                    zero[(base, task)] = row
        unevaluated = tuple(r for r in data.adapters if r not in shown)
        out.append(Grid(split, tuple(tasks), shown, cells, zero, unevaluated))
    return out


@dataclass(frozen=True)
class BestRow:
    """Per task and split: the best adapter's cell (highest accuracy, the older on a tie) and how many were
    evaluated; ``zero`` is the zero-shot row of the best adapter's base (or any base when none was evaluated)."""

    split: str
    task: str
    best: GridCell | None
    zero: MetricRow | None
    evaluated: int


def best_per_task(grid: Grid) -> list[BestRow]:
    rows = []
    for task in grid.tasks:
        cells = [c for (_, t), c in grid.cells.items() if t == task]
        best = max(cells, key=lambda c: (c.row.value, -c.adapter.created), default=None)
        if best is not None:
            zero = best.zero
        else:
            zero = next((row for (_, t), row in sorted(grid.zero.items()) if t == task), None)
        rows.append(BestRow(grid.split, task, best, zero, len(cells)))
    return rows


# ------------------------------------------------------------------------------------------------ merges


@dataclass(frozen=True)
class MergeScore:
    """A merged adapter on one task: its accuracy row, and its normalized accuracy (the recorded row, else
    accuracy over the reference adapter's accuracy on the same split and number of examples)."""

    task: str
    split: str
    accuracy: MetricRow
    normalized_row: MetricRow | None
    reference: AdapterRecord | None
    reference_row: MetricRow | None

    @property
    def normalized(self) -> float | None:
        if self.normalized_row is not None:
            return self.normalized_row.value
        if self.reference_row is None or self.reference_row.value == 0:
            return None
        return self.accuracy.value / self.reference_row.value


@dataclass(frozen=True)
class MergeView:
    adapter: AdapterRecord
    split: str
    scores: tuple[MergeScore, ...]

    @property
    def average_normalized(self) -> float | None:
        values = [s.normalized for s in self.scores if s.normalized is not None]
        return sum(values) / len(values) if values else None

    @property
    def worst(self) -> MergeScore | None:
        """Lowest normalized accuracy (or accuracy, when no task has a reference), as ``adaptforge merge`` reports."""
        normed = [s for s in self.scores if s.normalized is not None]
        if normed:
            return min(normed, key=lambda s: s.normalized or 0.0)
        return min(self.scores, key=lambda s: s.accuracy.value, default=None)


def merges(data: ReportInput, index: MetricIndex) -> list[MergeView]:
    """Every merged adapter on every split it was evaluated on."""
    by_id = {r.id: r for r in data.adapters}
    out = []
    for record in (r for r in data.adapters if r.kind == "merge"):
        for split in index.splits():
            scores = []
            for task in index.tasks(split):
                acc = index.accuracy(record.id, task, split)
                if acc is None:
                    continue
                metric = NORMALIZED if acc.metric == ACCURACY else "routed_" + NORMALIZED
                norm = index.on_same_examples(record.id, acc, metric)
                ref = by_id.get(data.references.get((record.id, task), ""))
                ref_row = index.on_same_examples(ref.id, acc) if ref is not None else None
                scores.append(MergeScore(task, split, acc, norm, ref, ref_row))
            if scores:
                out.append(MergeView(record, split, tuple(scores)))
    return out


# ------------------------------------------------------------------------------------------------ new tasks


@dataclass(frozen=True)
class NewTaskRow:
    """A composed or generated adapter on a task, next to zero-shot on the same examples."""

    adapter: AdapterRecord
    cell: GridCell
    detail: str


def new_task_detail(record: AdapterRecord) -> str:
    """How it was made, from its provenance: shots and the heaviest candidates, or the generator."""
    made = record.provenance
    if isinstance(made, ComposeProvenance):
        used = [(name, w) for name, w in made.weights.items() if w != 0]
        top = sorted(used, key=lambda kv: -abs(kv[1]))
        shown = ", ".join(f"{name} {w:+.2f}" for name, w in top[:3])
        more = f" (+{len(top) - 3} more)" if len(top) > 3 else ""
        return f"k={made.shots.get('k', '?')} shots; weights: {shown or 'none'}{more}"
    if isinstance(made, GenerateProvenance):
        info = made.info
        return (
            f"generator {info.get('generator', '?')} trained on {info.get('training_adapters', '?')} adapters; "
            f"seed {info.get('seed') if info.get('seed') is not None else '-'}"
        )
    return ""


def new_tasks(grid_list: Sequence[Grid]) -> list[NewTaskRow]:
    rows = []
    for grid in grid_list:
        for cell in grid.cells.values():
            if cell.adapter.kind in NEW_TASK_KINDS:
                rows.append(NewTaskRow(cell.adapter, cell, new_task_detail(cell.adapter)))
    return sorted(rows, key=lambda r: (r.adapter.created, r.cell.row.task, r.cell.row.split))


# ------------------------------------------------------------------------------------------------ training


@dataclass(frozen=True)
class TrainingRun:
    """What a training recipe recorded: batch losses ``(step, task index, loss)``, dev curves per task
    ``(step, dev loss, dev accuracy)``, batches drawn per task, and (several tasks) the tail of the dev
    accuracies at each check: ``(step, tail, worst)``."""

    adapter: AdapterRecord
    tasks: tuple[str, ...]
    history: tuple[tuple[int, int, float], ...]
    curves: Mapping[str, tuple[tuple[int, float, float], ...]]
    draws: Mapping[str, int]
    tail: tuple[tuple[int, float, float], ...]

    @property
    def multitask(self) -> bool:
        return len(self.tasks) > 1

    def draws_over_time(self) -> dict[str, tuple[list[int], list[int]]]:
        """Per task: the steps at which it was drawn and its cumulative count of batches then (a step function
        that starts at 0 and ends at the last step), one point per draw rather than per step and task."""
        last = self.history[-1][0] + 1 if self.history else 0
        series: dict[str, tuple[list[int], list[int]]] = {t: ([0], [0]) for t in self.tasks}
        for step, i, _ in self.history:
            if 0 <= i < len(self.tasks):
                steps, counts = series[self.tasks[i]]
                steps.append(step + 1)
                counts.append(counts[-1] + 1)
        for steps, counts in series.values():
            steps.append(last)
            counts.append(counts[-1])
        return series


def _triples(raw: Any, types: tuple[type, type, type]) -> tuple[tuple[Any, Any, Any], ...] | None:
    if not isinstance(raw, list):
        return None
    out = []
    for item in raw:
        if not isinstance(item, (list, tuple)) or len(item) != 3:
            return None
        try:
            out.append(tuple(t(x) for t, x in zip(types, item, strict=True)))
        except (TypeError, ValueError):
            return None
    return tuple(out)  # type: ignore[return-value]


def training_run(record: AdapterRecord, tail: Tail, notes: list[str]) -> TrainingRun | None:
    """The run a train recipe describes, or ``None`` when it recorded none; a malformed recipe is a note."""
    made = record.provenance
    if not isinstance(made, TrainProvenance) or not made.history:
        return None
    tasks = tuple(t.name for t in made.tasks)
    history = _triples(list(made.history), (int, int, float))
    curves = {str(k): _triples(v, (int, float, float)) for k, v in made.curves.items()}
    if not tasks or history is None or any(v is None for v in curves.values()):
        notes.append(
            f"adapter {record.name!r} ({record.id}): its training recipe is not in the expected shape; "
            "its curves are not drawn"
        )
        return None
    draws = {k: int(v) for k, v in made.draws.items() if isinstance(v, (int, float))}
    tail_curve: list[tuple[int, float, float]] = []
    complete = {t: c for t, c in curves.items() if c}
    if len(tasks) > 1 and len(complete) == len(tasks):
        steps = sorted(set.intersection(*({p[0] for p in c} for c in complete.values())))  # type: ignore[union-attr]
        for step in steps:
            accs = [next(p[2] for p in c if p[0] == step) for c in complete.values()]  # type: ignore[union-attr]
            tail_curve.append((step, tail(accs), min(accs)))
    return TrainingRun(
        record,
        tasks,
        history,
        {k: v for k, v in curves.items() if v is not None},
        draws,
        tuple(tail_curve),
    )
