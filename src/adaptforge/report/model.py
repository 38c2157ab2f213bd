"""What the report is made from: the catalog's own records and metric rows, plus what only the disk knows
(file sizes) and the benchmark files, gathered by :mod:`adaptforge.pipelines.report`.

The page shows catalog values as they are (no re-evaluation), so every number can name the row it came
from. These types hold no tensors and this package imports no torch: rendering a report never needs a
model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the records are read by attribute only; importing the library would pull in torch
    from adaptforge.library import AdapterRecord, MetricRow

Tail = Callable[[Sequence[float]], float]  # the tail statistic of a set of task scores (evaluate.cvar)


@dataclass(frozen=True)
class FileInfo:
    """One file of an adapter's folder: name and size in bytes (``None`` when it is missing)."""

    name: str
    size: int | None


@dataclass(frozen=True)
class BenchCell:
    """A benchmark number or text, with the JSON pointer (``/rows/0/lora``) it was read from."""

    text: str
    value: float | None
    pointer: str


@dataclass(frozen=True)
class BenchTable:
    """One benchmark result file shown as a table."""

    file: str
    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[BenchCell | None, ...], ...]


@dataclass(frozen=True)
class BenchView:
    """The ``--bench`` folder: the files understood as tables, and one note per file skipped (and why)."""

    folder: str
    tables: tuple[BenchTable, ...] = ()
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class ReportInput:
    """Everything one page shows. ``references`` maps (merged adapter id, task) to the id of that task's own
    adapter (the library's rule, :meth:`~adaptforge.library.Library.task_adapter`), for merges evaluated
    without a recorded normalized accuracy."""

    library: str
    generated: float
    adapters: tuple[AdapterRecord, ...]
    metrics: tuple[MetricRow, ...]
    files: Mapping[str, tuple[FileInfo, ...]] = field(default_factory=dict)
    references: Mapping[tuple[str, str], str] = field(default_factory=dict)
    bench: BenchView | None = None
    notes: tuple[str, ...] = ()
