"""Metric rows in the catalog: one value of one adapter (or of the bare base model) on a task split, keyed by
the task's content and the examples scored, so a ``--limit`` run never mixes with a full one."""

from __future__ import annotations

import math
import sqlite3
import time
from collections.abc import Mapping, Sequence

from adaptforge.library.catalog import Catalog
from adaptforge.library.records import LibraryError, MetricRow, check_metric_row


def insert_metrics(conn: sqlite3.Connection, rows: Sequence[tuple[str | None, MetricRow]]) -> None:
    """Insert (adapter id, row) pairs; a non-finite value is no number: stored as NULL (SQLite has no NaN),
    read back as NaN."""
    conn.executemany(
        "INSERT INTO metrics (adapter_id, base_fingerprint, task, split, metric, value, n, created, subset, "
        "task_fingerprint) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (
                ident,
                m.base_fingerprint,
                m.task,
                m.split,
                m.metric,
                float(m.value) if math.isfinite(float(m.value)) else None,
                int(m.n),
                float(m.created),
                m.subset,
                m.task_fingerprint,
            )
            for ident, m in rows
        ],
    )


def shown_row(rows: Sequence[MetricRow]) -> MetricRow | None:
    """Which of several evaluations of one adapter (or of the base) on one task split stands for its score: the one
    on the most examples of the task's current data (the newest row's task fingerprint), the newest among equals.

    A side-effect evaluation on a sample (``merge --eval --limit 16``, compose's and generate's own checks) never
    replaces one on more examples, however much newer; a re-evaluation on as many examples does. NaN rows (no
    number) are never shown.
    """
    numbers = [r for r in rows if not math.isnan(r.value)]
    if not numbers:
        return None
    newest = max(numbers, key=lambda r: r.created)
    current = [r for r in numbers if r.task_fingerprint in (newest.task_fingerprint, None)]
    return max(current, key=lambda r: (r.n, r.created))


class Metrics(Catalog):
    """Recording and reading metric rows."""

    def record_metrics(
        self,
        adapter: str | None,
        base_fingerprint: str,
        task: str,
        split: str,
        metrics: Mapping[str, float],
        n: int,
        *,
        subset: str = "all",
        task_fingerprint: str | None = None,
    ) -> None:
        """Store one row per metric; ``adapter=None`` records the bare base model (zero-shot). ``subset`` says
        which examples of the split were scored (an :class:`~adaptforge.evaluate.EvalResult`'s ``subset``)."""
        if not metrics:
            raise LibraryError("record_metrics: no metrics given")
        created = time.time()
        rows = [
            check_metric_row(
                MetricRow(None, base_fingerprint, task, split, str(k), v, n, created, subset, task_fingerprint)
            )
            for k, v in metrics.items()
        ]
        with self._transaction() as conn:
            ident = None if adapter is None else self._resolve(conn, adapter)
            insert_metrics(conn, [(ident, m) for m in rows])

    def metrics(
        self,
        name_or_id: str | None = None,
        base_fingerprint: str | None = None,
        *,
        task: str | None = None,
        split: str | None = None,
        zero_shot: bool = False,
        subset: str | None = None,
    ) -> list[MetricRow]:
        """Metric rows, oldest first: of one adapter, or all (``zero_shot=True``: only adapter-less rows);
        ``subset`` keeps only rows scored on those examples (``"all"``: the whole split)."""
        clauses, args = [], []
        with self._connect() as conn:
            if name_or_id is not None:
                clauses.append("adapter_id = ?")
                args.append(self._resolve(conn, name_or_id))
            elif zero_shot:
                clauses.append("adapter_id IS NULL")
            filters = (("base_fingerprint", base_fingerprint), ("task", task), ("split", split), ("subset", subset))
            for column, value in filters:
                if value is not None:
                    clauses.append(f"{column} = ?")
                    args.append(value)
            where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
            rows = conn.execute(
                "SELECT adapter_id, base_fingerprint, task, split, metric, value, n, created, subset, task_fingerprint "
                f"FROM metrics {where} ORDER BY created, rowid",
                args,
            ).fetchall()
        return [
            MetricRow(a, fp, t, s, m, float("nan") if v is None else float(v), int(n), float(c), sub, tfp)
            for a, fp, t, s, m, v, n, c, sub, tfp in rows
        ]
