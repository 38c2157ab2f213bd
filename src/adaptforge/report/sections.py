"""The sections built on metric rows: the adapters x tasks heatmaps, the best adapter per task, merges, and
composed and generated adapters against zero-shot (how each number is traced: :mod:`~adaptforge.report.traces`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from adaptforge.report import charts
from adaptforge.report.markup import AttrValue, Cell, el, esc, fmt, table
from adaptforge.report.traces import delta_trace, kind_badge, metric_span, metric_trace, name_cell, recipe_trace
from adaptforge.report.views import BestRow, Grid, MergeScore, MergeView, NewTaskRow


def _legend(low: float, high: float, diverging: bool) -> str:
    stops = [charts.colour(low + (high - low) * i / 6, low, high, diverging)[0] for i in range(7)]
    bar = el("span", "", {"class": "legend-bar", "style": f"background:linear-gradient(to right,{','.join(stops)})"})
    return el("p", f"{esc(fmt(low))}{bar}{esc(fmt(high))}", {"class": "legend"})


# ------------------------------------------------------------------------------------------------ grid


def grid_section(grid: Grid) -> str:
    """Two heatmaps on one split: accuracy (zero-shot pinned on top) and accuracy minus zero-shot."""
    values = [c.row.value for c in grid.cells.values()] + [r.value for r in grid.zero.values()]
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    deltas = [c.delta for c in grid.cells.values() if c.delta is not None]
    span = max((abs(d) for d in deltas), default=0.0) or 0.05
    column_n = grid.column_n
    columns = [
        "adapter",
        "kind",
        *((t, f"{t}: most cells scored on n={column_n.get(t, '-')} examples") for t in grid.tasks),
        ("mean", "mean over the tasks this row has"),
        ("worst", "lowest task"),
    ]
    odd: set[str] = set()

    def heat(value: float, diverging: bool, trace: dict[str, AttrValue], text: str) -> Cell:
        bg, fg = charts.colour(value, -span if diverging else low, span if diverging else high, diverging)
        values = {**trace, "class": "num cell", "style": f"background:{bg};color:{fg}"}
        task, n = str(trace["data-task"]), int(trace["data-n"])  # type: ignore[arg-type]
        if n != column_n[task]:  # scored on other examples than the rest of its column: marked, and says so
            odd.add(task)
            values["class"] = "num cell n-differs"
            values["title"] = (
                f"{trace['title']}; NOT comparable with the column: most of its cells have n={column_n[task]}"
            )
        return Cell(esc(text), value, values)

    def summary(record_id: str, name: str, vals: list[float], source: str) -> list[Cell]:
        out = []
        for how, fn in (("mean", lambda v: sum(v) / len(v)), ("min", min)):
            if not vals:
                out.append(Cell("-", None))
                continue
            value = fn(vals)
            trace: dict[str, AttrValue] = {
                "class": "num",
                "data-source": how,
                "data-of": source,
                "data-adapter-id": record_id,
                "data-split": grid.split,
                "data-value": repr(value),
                "title": f"{how} of {len(vals)} {source} cell(s) of {name} on {grid.split}",
            }
            out.append(Cell(esc(fmt(value, signed=source == "delta")), value, trace))
        return out

    pinned = []
    many_bases = len(grid.bases) > 1
    for base in grid.bases:
        label = f"(zero-shot, base {base[:8]})" if many_bases else "(zero-shot)"
        row = [Cell(esc(label), "", {"data-adapter-id": "", "data-base": base}, header=True), Cell.text("base")]
        vals = []
        for task in grid.tasks:
            z = grid.zero.get((base, task))
            if z is None:
                row.append(Cell("-", None, {"class": "missing"}))
            else:
                vals.append(z.value)
                row.append(heat(z.value, False, metric_trace(z, "zero-shot"), fmt(z.value)))
        pinned.append(row + summary("", "zero-shot", vals, "metric"))
    acc_rows, delta_rows = [], []
    for record in grid.adapters:
        acc = [name_cell(record), Cell(kind_badge(record.kind), record.kind)]
        dl = [name_cell(record), Cell(kind_badge(record.kind), record.kind)]
        acc_vals, delta_vals = [], []
        for task in grid.tasks:
            cell = grid.cells.get((record.id, task))
            if cell is None:
                acc.append(Cell("-", None, {"class": "missing"}))
                dl.append(Cell("-", None, {"class": "missing"}))
                continue
            acc_vals.append(cell.row.value)
            acc.append(heat(cell.row.value, False, metric_trace(cell.row, record.name), fmt(cell.row.value)))
            if cell.delta is None:
                dl.append(
                    Cell("-", None, {"class": "missing", "title": "no zero-shot row on this base, task and split"})
                )
            else:
                delta_vals.append(cell.delta)
                dl.append(heat(cell.delta, True, delta_trace(cell), fmt(cell.delta, signed=True)))
        acc_rows.append(acc + summary(record.id, record.name, acc_vals, "metric"))
        delta_rows.append(dl + summary(record.id, record.name, delta_vals, "delta"))
    split_id = esc(grid.split)
    sizes = ", ".join(f"{t} {column_n.get(t, '-')}" for t in grid.tasks)  # '-': only removed adapters' rows
    mark = "; &#8224; a cell scored on another number of examples (its tooltip says which)" if odd else ""
    n_note = el("p", esc(f"Examples per cell (n): {sizes}") + mark, {"class": "note n-note"})
    parts = [
        el("h3", f"accuracy on <code>{split_id}</code>"),
        _legend(low, high, False),
        el(
            "div",
            table(
                columns,
                acc_rows,
                {"id": f"heatmap-{grid.split}", "class": "heatmap", "data-split": grid.split},
                pinned=pinned,
            ),
            {"class": "scroll"},
        ),
        n_note,
        el("h3", f"accuracy minus zero-shot on <code>{split_id}</code>"),
        _legend(-span, span, True),
        el(
            "div",
            table(
                columns, delta_rows, {"id": f"delta-{grid.split}", "class": "heatmap delta", "data-split": grid.split}
            ),
            {"class": "scroll"},
        ),
    ]
    if grid.unevaluated:
        names = ", ".join(r.name for r in grid.unevaluated)
        parts.append(
            el(
                "p",
                esc(f"Not evaluated on {grid.split}: {names} (adaptforge eval ... --all-adapters)"),
                {"class": "note"},
            )
        )
    return "\n".join(parts)


def best_section(rows: Sequence[BestRow]) -> str:
    body = []
    for r in rows:
        best = r.best
        name = best.adapter.name if best else "-"
        delta = (
            el("span", esc(fmt(best.delta, signed=True)), delta_trace(best))
            if best is not None and best.delta is not None
            else "-"
        )
        body.append(
            [
                Cell.text(r.split),
                Cell(esc(r.task), r.task, header=True),
                Cell(esc(name), name, {"data-adapter-id": best.adapter.id} if best else {}),
                Cell(kind_badge(best.adapter.kind) if best else "-", best.adapter.kind if best else ""),
                Cell(metric_span(best.row if best else None, name), best.row.value if best else None),
                Cell(metric_span(r.zero, "zero-shot"), r.zero.value if r.zero else None),
                Cell(delta, best.delta if best else None),
                Cell(
                    str(r.evaluated), float(r.evaluated), {"title": "adapters with an accuracy on this task and split"}
                ),
            ]
        )
    columns = ["split", "task", "best adapter", "kind", "accuracy", "zero-shot", "Δ vs zero-shot", "evaluated"]
    return table(columns, body, {"id": "best-per-task"})


# ------------------------------------------------------------------------------------------------ merges


def _normalized_span(view: MergeView, score: MergeScore) -> str:
    if score.normalized_row is not None:
        return el("span", esc(fmt(score.normalized)), metric_trace(score.normalized_row, view.adapter.name))
    if score.normalized is None or score.reference is None or score.reference_row is None:
        return "-"
    trace = {
        **metric_trace(score.accuracy, view.adapter.name),
        "data-source": "ratio",
        "data-ref-id": score.reference.id,
        "data-value": repr(score.normalized),
        "title": f"{view.adapter.name} accuracy {score.accuracy.value:.4f} / own adapter {score.reference.name} "
        f"({score.reference.id}) {score.reference_row.value:.4f} on {score.task}/{score.split}, n={score.accuracy.n}",
    }
    return el("span", esc(fmt(score.normalized)), trace)


def merges_section(views: Sequence[MergeView], names: Mapping[str, str]) -> str:
    if not views:
        return el(
            "p", "No merged adapter has been evaluated yet (adaptforge merge ... --eval TASK_DIR).", {"class": "note"}
        )
    tasks = sorted({s.task for v in views for s in v.scores})
    body = []
    for view in views:
        rec = view.adapter
        by_task = {s.task: s for s in view.scores}
        cells = [name_cell(rec), Cell.text(rec.method), Cell.text(view.split)]
        parents = ", ".join(names.get(p, p) for p in rec.parents)
        cells.append(Cell(esc(parents), parents, {"class": "text"}))
        for task in tasks:
            s = by_task.get(task)
            if s is None:
                cells.append(Cell("-", None, {"class": "missing"}))
            else:
                acc = metric_span(s.accuracy, rec.name)
                cells.append(Cell(f"{_normalized_span(view, s)} <small>({acc})</small>", s.normalized))
        avg = view.average_normalized
        avg_trace: dict[str, AttrValue] = {
            "class": "num",
            "data-source": "mean",
            "data-of": "normalized",
            "data-adapter-id": rec.id,
            "data-split": view.split,
            "data-value": repr(avg),
            "title": "mean normalized accuracy over tasks",
        }
        cells.append(Cell(el("span", esc(fmt(avg)), avg_trace) if avg is not None else "-", avg))
        worst = view.worst
        cells.append(Cell.text(worst.task if worst else "-"))
        err = (rec.recipe.get("reconstruction_error") or {}).get("max")
        cells.append(
            Cell(el("span", esc(f"{err:.3g}"), recipe_trace(rec, "/reconstruction_error/max", float(err))), float(err))
            if isinstance(err, (int, float))
            else Cell("-", None)
        )
        body.append(cells)
    columns = [
        "merged adapter",
        "method",
        "split",
        "parents",
        *[(t, "normalized accuracy (accuracy in brackets)") for t in tasks],
        ("mean norm.", "mean normalized accuracy"),
        ("worst task", "lowest normalized accuracy"),
        ("SVD error", "largest relative re-factoring error over modules"),
    ]
    chart = el("figure", charts.merge_chart(views), {"class": "chart", "id": "merge-chart"})
    return el("div", table(columns, body, {"id": "merges-table"}), {"class": "scroll"}) + chart


def new_tasks_section(rows: Sequence[NewTaskRow]) -> str:
    if not rows:
        return el(
            "p",
            "No composed or generated adapter has been evaluated yet (adaptforge compose / generate ... --eval).",
            {"class": "note"},
        )
    body = []
    for r in rows:
        cell = r.cell
        delta = el("span", esc(fmt(cell.delta, signed=True)), delta_trace(cell)) if cell.delta is not None else "-"
        body.append(
            [
                name_cell(r.adapter),
                Cell(kind_badge(r.adapter.kind), r.adapter.kind),
                Cell.text(r.adapter.method),
                Cell.text(cell.row.task),
                Cell.text(cell.row.split),
                Cell(metric_span(cell.zero, "zero-shot"), cell.zero.value if cell.zero else None),
                Cell(metric_span(cell.row, r.adapter.name), cell.row.value),
                Cell(delta, cell.delta),
                Cell(esc(r.detail), r.detail, {"class": "text"}),
            ]
        )
    columns = ["adapter", "kind", "method", "task", "split", "zero-shot", "adapter acc.", "Δ", "how it was made"]
    chart = el("figure", charts.new_task_chart(rows), {"class": "chart", "id": "new-task-chart"})
    return el("div", table(columns, body, {"id": "new-tasks-table"}), {"class": "scroll"}) + chart
