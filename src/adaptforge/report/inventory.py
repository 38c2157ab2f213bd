"""The sections built on records and files: training runs (curves, draws, CVaR), every adapter's files,
sizes and checksums, and the benchmark tables (how each number is traced: :mod:`~adaptforge.report.traces`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from adaptforge.report import charts
from adaptforge.report.markup import Cell, el, esc, fmt, json_pointer, size_text, table
from adaptforge.report.model import BenchView, FileInfo
from adaptforge.report.traces import kind_badge, name_cell, recipe_trace, when
from adaptforge.report.views import TrainingRun

if TYPE_CHECKING:
    from adaptforge.library import AdapterRecord

# ------------------------------------------------------------------------------------------------ training


def training_section(runs: Sequence[TrainingRun]) -> str:
    if not runs:
        return el("p", "No adapter in the library recorded a training history.", {"class": "note"})
    parts = []
    for run in runs:
        rec = run.adapter
        rows = []
        for task in run.tasks:
            curve = run.curves.get(task) or ()
            cells = [Cell(esc(task), task, header=True)]
            draws = run.draws.get(task)
            cells.append(
                Cell(el("span", str(draws), recipe_trace(rec, json_pointer("draws", task), float(draws))), float(draws))
                if draws is not None
                else Cell("-", None)
            )
            if curve:
                last = len(curve) - 1
                for col in (1, 2):  # dev loss, dev accuracy
                    value = curve[last][col]
                    trace = recipe_trace(rec, json_pointer("curves", task, last, col), value)
                    cells.append(Cell(el("span", esc(fmt(value)), trace), value))
            else:
                cells += [Cell("-", None), Cell("-", None)]
            rows.append(cells)
        table_html = table(
            ["task", "batches drawn", "last dev loss", "last dev accuracy"],
            rows,
            {"class": "training-summary", "data-adapter-id": rec.id},
        )
        extra = ""
        if run.tail:
            step, value, _ = run.tail[-1]
            trace = {
                **recipe_trace(rec, "/curves", value, "derived"),
                "data-how": f"CVaR20 of the dev accuracies over tasks at step {step}",
            }
            extra = el(
                "p",
                f"CVaR20 of dev accuracy at the last check (step {step}): {el('span', esc(fmt(value)), trace)}",
                {"class": "note"},
            )
        steps = len(run.history)
        caption = (
            f"{esc(rec.name)} (<code>{esc(rec.id)}</code>): recipe <code>history</code> ({steps} steps), "
            f"<code>curves</code>{', <code>draws</code>' if run.multitask else ''}"
        )
        figure = el(
            "figure",
            charts.training_chart(run) + el("figcaption", caption),
            {"class": "chart", "data-adapter-id": rec.id},
        )
        title = f"{esc(rec.name)} <small>({esc(', '.join(run.tasks))}; {steps} steps)</small>"
        parts.append(
            el(
                "details",
                el("summary", title) + figure + table_html + extra,
                {"open": len(runs) <= 8, "class": "training-run", "data-adapter-id": rec.id},
            )
        )
    return "\n".join(parts)


# ------------------------------------------------------------------------------------------------ adapters


def adapters_section(
    records: Sequence[AdapterRecord], files: Mapping[str, tuple[FileInfo, ...]], names: Mapping[str, str]
) -> str:
    """Every adapter: what made it, its parents, its files' sizes and its recorded checksums."""
    file_names = sorted({f.name for fs in files.values() for f in fs})
    body = []
    total = 0
    for rec in records:
        by_name = {f.name: f for f in files.get(rec.id, ())}
        parents = ", ".join(names.get(p, f"{p} (removed)") for p in rec.parents) or "-"
        cells = [
            name_cell(rec),
            Cell(f"<code>{esc(rec.id)}</code>", rec.id),
            Cell(kind_badge(rec.kind), rec.kind),
            Cell.text(rec.method),
            Cell.text(rec.task or "-"),
            Cell(str(rec.rank), float(rec.rank), {"title": "LoRA rank (catalog column rank)"}),
            Cell(str(len(rec.targets)), float(len(rec.targets)), {"title": "\n".join(rec.targets)}),
            Cell(esc(parents), parents, {"class": "text"}),
        ]
        for name in file_names:
            info = by_name.get(name)
            size = info.size if info is not None else None
            if size is None:
                cells.append(Cell("missing", None, {"class": "missing"}))
                continue
            total += size
            trace = {
                "class": "num",
                "data-source": "file",
                "data-adapter-id": rec.id,
                "data-file": name,
                "data-value": size,
                "title": f"{rec.path}/{name}: {size} bytes",
            }
            cells.append(Cell(esc(size_text(size)), float(size), trace))
        cells.append(
            Cell(
                f"<code>{esc(rec.checksum[:12])}</code>",
                rec.checksum,
                {"data-checksum": rec.checksum, "title": f"sha256 of adapter_model.safetensors: {rec.checksum}"},
            )
        )
        cells.append(
            Cell(
                f"<code>{esc(rec.config_checksum[:12])}</code>",
                rec.config_checksum,
                {
                    "data-checksum": rec.config_checksum,
                    "title": f"sha256 of adapter_config.json: {rec.config_checksum}",
                },
            )
        )
        cells.append(Cell.text(when(rec.created)))
        body.append(cells)
    columns = [
        "name",
        "id",
        "kind",
        "method",
        "task",
        "rank",
        "modules",
        "parents",
        *file_names,
        ("weights sha256", "recorded when added; adaptforge library verify checks it"),
        ("config sha256", "recorded when added"),
        "created",
    ]
    note = el(
        "p",
        esc(
            f"{len(records)} adapter(s), {size_text(total)} on disk. Checksums are the catalog's; "
            "`adaptforge library verify` recomputes them."
        ),
        {"class": "note"},
    )
    return note + el("div", table(columns, body, {"id": "adapters-table"}), {"class": "scroll"})


def bench_section(view: BenchView) -> str:
    parts = [el("p", esc(f"From {view.folder}."), {"class": "note"})]
    for tab in view.tables:
        rows = []
        for line in tab.rows:
            cells = []
            for c in line:
                if c is None:
                    cells.append(Cell("-", None, {"class": "missing"}))
                elif c.value is None:
                    cells.append(Cell(esc(c.text), c.text, {"class": "text"}))
                else:
                    trace = {
                        "class": "num",
                        "data-source": "bench",
                        "data-file": tab.file,
                        "data-pointer": c.pointer,
                        "data-value": repr(c.value),
                        "title": f"{tab.file} {c.pointer}",
                    }
                    cells.append(Cell(esc(c.text), c.value, trace))
            rows.append(cells)
        parts.append(el("h3", f"<code>{esc(tab.file)}</code>"))
        if tab.title:
            parts.append(el("p", esc(tab.title), {"class": "note"}))
        parts.append(
            el("div", table(list(tab.columns), rows, {"class": "bench", "data-file": tab.file}), {"class": "scroll"})
        )
    if view.notes:
        parts.append(el("ul", "".join(el("li", esc(n)) for n in view.notes), {"class": "notes"}))
    if not view.tables and not view.notes:
        parts.append(el("p", "The folder holds no result files.", {"class": "note"}))
    return "\n".join(parts)
