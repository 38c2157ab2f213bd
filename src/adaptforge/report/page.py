"""The whole report as one HTML document: header, sections, inline CSS and script, and a content security
policy that forbids every fetch, so the file shows the same offline, from a mail attachment or a USB stick."""

from __future__ import annotations

import math
from pathlib import Path

from adaptforge.report import inventory, sections, traces
from adaptforge.report.assets import CONTENT_SECURITY_POLICY, CSS, JS
from adaptforge.report.lineage import lineage_svg
from adaptforge.report.markup import el, esc
from adaptforge.report.model import ReportInput, Tail
from adaptforge.report.views import (
    MetricIndex,
    best_per_task,
    grids,
    merges,
    new_tasks,
    task_names,
    training_run,
)

SECTIONS = (
    ("grid", "Adapters × tasks"),
    ("best", "Best per task"),
    ("merges", "Merges"),
    ("new-tasks", "Composed and generated"),
    ("training", "Training"),
    ("lineage", "Lineage"),
    ("adapters", "Sizes and checksums"),
    ("bench", "Benchmarks"),
    ("notes", "Notes"),
)


def _section(ident: str, body: str) -> str:
    title = dict(SECTIONS)[ident]
    return el("section", el("h2", esc(title)) + "\n" + body, {"id": ident})


def _lineage(data: ReportInput) -> str:
    svg, graph = lineage_svg(data.adapters)
    if not svg:
        return el(
            "p",
            "No adapter was made from others yet (merge, compose and generate record their parents).",
            {"class": "note"},
        )
    kinds = sorted({n.record.kind for n in graph.nodes.values() if n.record is not None})
    legend = " ".join(traces.kind_badge(k) for k in kinds)
    if any(n.record is None for n in graph.nodes.values()):
        legend += " dashed: a parent removed from the library since"
    isolated = (
        el(
            "p",
            esc(f"Not drawn (no parents, no children): {', '.join(r.name for r in graph.isolated)}"),
            {"class": "note"},
        )
        if graph.isolated
        else ""
    )
    intro = el(
        "p",
        "Columns left to right: each adapter sits right of its parents; the edge colour is the "
        "child's kind, and each box names its method. " + legend,
        {"class": "legend"},
    )
    return intro + el("div", svg, {"class": "scroll", "id": "lineage-box"}) + isolated


def render(data: ReportInput, tail: Tail) -> str:
    """The report for ``data``; ``tail`` is the tail statistic of dev accuracies over tasks for the CVaR curve
    (the pipeline passes :func:`adaptforge.evaluate.cvar`, the one definition)."""
    index = MetricIndex(data.metrics)
    notes = list(data.notes)
    names = {r.id: r.name for r in data.adapters}
    grid_list = grids(data, index)
    tasks = sorted({t for r in data.adapters for t in task_names(r)} | {m.task for m in data.metrics})
    undefined = sum(1 for m in data.metrics if math.isnan(m.value))
    if undefined:
        notes.append(f"{undefined} metric row(s) hold no number (NaN, e.g. macro-F1 of an empty split); not shown")
    # a model folder (a pruned base, a user's model) by its folder name: the full path is this machine's detail
    bases = sorted({Path(b).name if Path(b).is_absolute() else b for b in (r.base_model for r in data.adapters)})
    header = [
        el("h1", "adaptforge report"),
        el(
            "p",
            esc(
                f"library {data.library} · {len(data.adapters)} adapter(s) · {len(tasks)} task(s) · base "
                f"{', '.join(bases) or '-'} · generated {traces.when(data.generated)}"
            ),
            {"class": "meta"},
        ),
    ]
    if tasks:
        header.append(
            el(
                "p",
                "tasks: " + ", ".join(el("span", esc(t), {"class": "task", "data-task": t}) for t in tasks),
                {"class": "meta"},
            )
        )
    shown = [s for s in SECTIONS if s[0] != "bench" or data.bench is not None]
    header.append(el("nav", " ".join(el("a", esc(title), {"href": f"#{ident}"}) for ident, title in shown)))
    body = [el("header", "\n".join(header))]
    if not data.adapters:
        body.append(
            el(
                "p",
                esc(
                    f"The library at {data.library} holds no adapters yet: train or import some "
                    "(adaptforge train TASK_DIR --library LIB --name NAME), then evaluate them "
                    "(adaptforge eval TASK_DIR... --library LIB --all-adapters --zero-shot)."
                ),
                {"class": "empty", "id": "empty-library"},
            )
        )
    if grid_list:
        grid_html = "\n".join(sections.grid_section(g) for g in grid_list)
        best_html = sections.best_section([row for g in grid_list for row in best_per_task(g)])
    else:
        grid_html = el(
            "p",
            "No metrics are recorded yet: run adaptforge eval TASK_DIR... --library LIB --all-adapters --zero-shot.",
            {"class": "note", "id": "no-metrics"},
        )
        best_html = el("p", "Nothing evaluated yet.", {"class": "note"})
    runs = [run for r in data.adapters if (run := training_run(r, tail, notes)) is not None]
    body += [
        _section("grid", grid_html),
        _section("best", best_html),
        _section("merges", sections.merges_section(merges(data, index), names)),
        _section("new-tasks", sections.new_tasks_section(new_tasks(grid_list))),
        _section("training", inventory.training_section(runs)),
        _section("lineage", _lineage(data)),
        _section("adapters", inventory.adapters_section(data.adapters, data.files, names)),
    ]
    if data.bench is not None:
        body.append(_section("bench", inventory.bench_section(data.bench)))
    body.append(
        _section(
            "notes",
            el("ul", "".join(el("li", esc(n)) for n in notes), {"class": "notes"})
            if notes
            else el("p", "Nothing was skipped.", {"class": "note"}),
        )
    )
    head = (
        '<meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{esc(CONTENT_SECURITY_POLICY)}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(f'adaptforge report: {data.library}')}</title>"
        f"<style>{CSS}</style>"
    )
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>{head}</head>\n<body>\n'
        + "\n".join(body)
        + f"\n<script>{JS}</script>\n</body>\n</html>\n"
    )
