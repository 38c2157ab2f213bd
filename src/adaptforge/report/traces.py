"""How the page traces each number to where it came from, and the small cells every section shares.

Tracing: every number is an element of class ``num`` whose ``data-source`` says where it comes from and
whose other ``data-*`` attributes name it exactly; the tooltip says the same in words.

- ``metric``: one catalog metric row: ``data-adapter-id`` (empty for the bare base model, i.e. zero-shot),
  ``data-base``, ``data-task``, ``data-split``, ``data-metric``, ``data-n``, ``data-value``.
- ``delta``: an adapter's row minus the zero-shot row: the adapter row's attributes plus ``data-zero-n`` and
  ``data-zero-value`` (the zero-shot row of the same base, task, split and metric).
- ``ratio``: a merge's accuracy over its task's own adapter's (``data-ref-id``), same task, split and n.
- ``mean`` / ``min``: over the row's ``metric`` or ``delta`` cells named in ``data-of``.
- ``recipe``: ``data-adapter-id`` and ``data-pointer``, a JSON pointer into that adapter's catalog recipe.
- ``derived``: computed from a recipe field named in ``data-pointer`` (``data-how`` says how).
- ``file``: ``data-adapter-id`` and ``data-file`` in the adapter's folder; the value is its size in bytes.
- ``bench``: ``data-file`` and ``data-pointer`` into a benchmark result file.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from adaptforge.report.lineage import KIND_COLOURS
from adaptforge.report.markup import AttrValue, Cell, el, esc, fmt

if TYPE_CHECKING:
    from adaptforge.library import AdapterRecord, MetricRow
    from adaptforge.report.views import GridCell


def when(stamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(stamp))


def metric_trace(row: MetricRow, name: str) -> dict[str, AttrValue]:
    who = f"{name} ({row.adapter_id})" if row.adapter_id else "the base model alone (zero-shot)"
    return {
        "class": "num",
        "data-source": "metric",
        "data-adapter-id": row.adapter_id or "",
        "data-base": row.base_fingerprint,
        "data-task": row.task,
        "data-split": row.split,
        "data-metric": row.metric,
        "data-n": row.n,
        "data-value": repr(row.value),
        "title": f"{who} on {row.task}/{row.split}: {row.metric} {row.value:.4f}, n={row.n}, "
        f"base {row.base_fingerprint[:12]}, recorded {when(row.created)}",
    }


def metric_span(row: MetricRow | None, name: str) -> str:
    return el("span", esc(fmt(row.value)), metric_trace(row, name)) if row is not None else "-"


def delta_trace(cell: GridCell) -> dict[str, AttrValue]:
    assert cell.zero is not None
    base = metric_trace(cell.row, cell.adapter.name)
    return {
        **base,
        "data-source": "delta",
        "data-value": repr(cell.delta),
        "data-zero-n": cell.zero.n,
        "data-zero-value": repr(cell.zero.value),
        "title": f"{cell.adapter.name} ({cell.adapter.id}) minus zero-shot on {cell.row.task}/{cell.row.split}: "
        f"{cell.row.value:.4f} (n={cell.row.n}) - {cell.zero.value:.4f} (n={cell.zero.n}) = {cell.delta:+.4f}",
    }


def recipe_trace(record: AdapterRecord, pointer: str, value: float, source: str = "recipe") -> dict[str, AttrValue]:
    return {
        "class": "num",
        "data-source": source,
        "data-adapter-id": record.id,
        "data-pointer": pointer,
        "data-value": repr(value),
        "title": f"{record.name} ({record.id}): recipe {pointer}",
    }


def kind_badge(kind: str) -> str:
    return el("span", esc(kind), {"class": "kind", "style": f"background:{KIND_COLOURS.get(kind, '#888')}"})


def name_cell(record: AdapterRecord) -> Cell:
    values = {"data-adapter-id": record.id, "title": f"{record.name} ({record.id})\nbase {record.base_model}"}
    return Cell(esc(record.name), record.name, values, header=True)
