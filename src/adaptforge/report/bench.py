"""Benchmark result files (``benchmarks/results/*.json``) as tables.

Two shapes are understood, the two the benchmark scripts write: ``{"rows": [{...}, ...]}`` (one row per
run; nested mappings become dotted columns) and ``{"results": {name: {split: {task: number}}}}`` (one row per
method and split, one column per task). Anything else is skipped with a note naming the file and why, so a
new benchmark never breaks the report. Every cell keeps the JSON pointer it was read from.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

from adaptforge.errors import AdaptforgeError
from adaptforge.report.markup import json_pointer as _pointer
from adaptforge.report.model import BenchCell, BenchTable, BenchView
from adaptforge.structured import parse_json

MAX_COLUMNS = 24
MAX_ROWS = 500  # per table: a 9 MB result file would otherwise become a page of tens of MB


def _cell(value: Any, pointer: str) -> BenchCell | None:
    if isinstance(value, bool) or value is None:
        return BenchCell(str(value).lower() if value is not None else "-", None, pointer)
    if isinstance(value, (int, float)):
        number = float(value)
        if math.isnan(number):
            return BenchCell("nan", None, pointer)
        text = f"{number:.4g}" if not isinstance(value, int) else str(value)
        return BenchCell(text, number, pointer)
    if isinstance(value, str):
        return BenchCell(value, None, pointer)
    return None


def _flatten(row: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    flat: dict[tuple[str, ...], Any] = {}
    for key, value in row.items():
        path = (*prefix, str(key))
        if isinstance(value, Mapping):
            flat.update(_flatten(value, path))
        elif not isinstance(value, (list, tuple)):
            flat[path] = value
    return flat


def _rows_table(name: str, data: Mapping[str, Any]) -> BenchTable | None:
    rows = data["rows"]
    if not isinstance(rows, list) or not rows or not all(isinstance(r, Mapping) for r in rows):
        return None
    flats = [_flatten(r) for r in rows]
    columns = list(dict.fromkeys(path for flat in flats for path in flat))[:MAX_COLUMNS]
    body = tuple(
        tuple(_cell(flat.get(path), _pointer("rows", i, *path)) if path in flat else None for path in columns)
        for i, flat in enumerate(flats)
    )
    title = str(data.get("setting") or "")
    return BenchTable(name, title, tuple(".".join(c) for c in columns), body)


def _params_text(entry: Mapping[str, Any]) -> str:
    params = entry.get("params")
    if not isinstance(params, Mapping):
        return ""
    return ", ".join(f"{k}={v}" for k, v in params.items() if isinstance(v, (int, float, str)))


def _results_table(name: str, data: Mapping[str, Any]) -> BenchTable | None:
    """One row per (method, score mapping): the mappings of numbers named like the most common one
    (``test``) and any other whose keys are mostly the same tasks (``routing_accuracy``); ``params`` is text."""
    results = data["results"]
    if not isinstance(results, Mapping) or not results:
        return None
    numeric = [
        (str(method), str(key), scores)
        for method, entry in results.items()
        if isinstance(entry, Mapping)
        for key, scores in entry.items()
        if key != "params"
        and isinstance(scores, Mapping)
        and scores
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in scores.values())
    ]
    if not numeric:
        return None
    keys = [key for _, key, _ in numeric]
    common = max(dict.fromkeys(keys), key=keys.count)
    tasks = list(dict.fromkeys(t for _, key, scores in numeric if key == common for t in scores))[:MAX_COLUMNS]
    lines = [(m, k, s) for m, k, s in numeric if len(set(s) & set(tasks)) * 2 >= len(s)]
    body = tuple(
        (
            BenchCell(method, None, _pointer("results", method)),
            BenchCell(key, None, _pointer("results", method, key)),
            *(_cell(scores[t], _pointer("results", method, key, t)) if t in scores else None for t in tasks),
            BenchCell(_params_text(results[method]), None, _pointer("results", method, "params")),
        )
        for method, key, scores in lines
    )
    config = data.get("config")
    title = (
        ", ".join(f"{k}: {v}" for k, v in config.items() if isinstance(v, (int, float, str)))
        if isinstance(config, Mapping)
        else ""
    )
    return BenchTable(name, title, ("method", "scores", *tasks, "params"), body)


def read_bench(folder: str, files: Sequence[tuple[str, str | None]]) -> BenchView:
    """``files`` are (file name, text or ``None`` when unreadable), in the order to show them."""
    tables, notes = [], []
    for name, text in files:
        if text is None:
            notes.append(f"{name}: could not be read; skipped")
            continue
        if not name.endswith(".json"):
            notes.append(f"{name}: not a JSON result file; skipped")
            continue
        try:
            data = parse_json(text, name)
            table = None
            if isinstance(data, Mapping) and "rows" in data:
                table = _rows_table(name, data)
            elif isinstance(data, Mapping) and "results" in data:
                table = _results_table(name, data)
        except AdaptforgeError as err:
            notes.append(f"{err}; skipped")
            continue
        except RecursionError:  # parsed, but nested too deeply for the tables' walk
            notes.append(f"{name}: nested too deeply to read as a table; skipped")
            continue
        if table is None:
            keys = ", ".join(map(str, list(data)[:6])) if isinstance(data, Mapping) else type(data).__name__
            notes.append(f"{name}: layout not recognised (top level: {keys}); expected 'rows' or 'results'; skipped")
            continue
        if len(table.rows) > MAX_ROWS:
            notes.append(f"{name}: showing the first {MAX_ROWS} of {len(table.rows)} rows (the rest are in the file)")
            table = dataclasses.replace(table, rows=table.rows[:MAX_ROWS])
        tables.append(table)
    return BenchView(folder, tuple(tables), tuple(notes))
