"""Charts as inline SVG drawn by matplotlib, and the heatmap's colour scale.

Why matplotlib: it is the plotting library the Python ML world already has installed, it writes SVG that
needs no JavaScript and no network (an offline page embeds the markup itself, and it prints sharply), and
the same colour maps colour the HTML heatmap, so charts and tables read alike. Figures are built from
:class:`matplotlib.figure.Figure` directly (no pyplot: no global figure state) inside an ``rc_context``, with
text kept as SVG text (small, searchable) and a per-chart salt so element ids are stable and never collide
when several SVGs share one page.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from adaptforge.report.views import MergeView, NewTaskRow, TrainingRun

TASK_COLOURS = "tab10"
ACCURACY_MAP = "viridis"
DELTA_MAP = "RdBu"
MAX_POINTS = 1000  # per plotted line; scatter markers are one SVG element each, so fewer of them
MAX_MARKERS = 2000  # per scatter panel, over all tasks
TEXT_SIZE = 8.5  # points: every label, tick and title
LEGEND_FONT = 8.0  # points: legends, never smaller (they sit outside the axes, so they need no shrinking)
_STRIP = (
    re.compile(r"<\?xml[^>]*\?>\s*"),
    re.compile(r"<!DOCTYPE[^>]*>\s*", re.IGNORECASE),
    re.compile(r"<!--.*?-->\s*", re.DOTALL),
    re.compile(r"<metadata>.*?</metadata>\s*", re.DOTALL),
    re.compile(r'\s+xmlns(:\w+)?="[^"]*"'),
)


def inline_svg(text: str, label: str) -> str:
    """matplotlib's SVG file made fit to sit inside HTML: no XML prolog, DOCTYPE, comments or metadata, and
    no namespace declarations (the HTML parser puts ``<svg>`` in the SVG namespace itself), so the page holds
    no URL at all; ``role="img"`` and an ``aria-label`` for screen readers."""
    for pattern in _STRIP:
        text = pattern.sub("", text)
    label = label.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")
    return text.replace("<svg ", f'<svg role="img" aria-label="{label}" ', 1).strip()


@contextmanager
def _figure(salt: str, width: float, height: float, constrained: bool = True) -> Iterator[tuple[Figure, io.StringIO]]:
    """A figure in the report's style whose SVG lands in the yielded buffer when the block ends. Constrained
    layout fits long tick labels but costs ~0.2 s a figure; the per-adapter training charts, one per adapter,
    use fixed margins instead."""
    import matplotlib
    from matplotlib.figure import Figure

    style = {
        "svg.fonttype": "none",
        "svg.hashsalt": salt,
        "font.size": TEXT_SIZE,
        "legend.fontsize": LEGEND_FONT,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.grid": True,
        "grid.alpha": 0.3,
        "font.family": "sans-serif",
    }
    buffer = io.StringIO()
    with matplotlib.rc_context(style):
        fig = Figure(figsize=(width, height), layout="constrained" if constrained else None)
        if not constrained:
            # margins in inches (axis labels, titles), whatever the figure's size
            fig.subplots_adjust(
                left=0.6 / width,
                right=1 - 0.15 / width,
                bottom=0.5 / height,
                top=1 - 0.3 / height,
                wspace=0.3,
                hspace=0.6,
            )
        yield fig, buffer
        fig.savefig(buffer, format="svg", metadata={"Date": None})


def _task_colour(i: int) -> tuple[float, float, float, float]:
    import matplotlib

    return matplotlib.colormaps[TASK_COLOURS](i % 10)


def colour(value: float, low: float, high: float, diverging: bool = False) -> tuple[str, str]:
    """Background and readable text colour (hex) of ``value`` on the accuracy scale (``low``..``high``,
    viridis) or, ``diverging``, on the delta scale (``-high``..``+high`` around 0, red to blue)."""
    import matplotlib
    from matplotlib.colors import to_hex

    if diverging:
        span = max(abs(low), abs(high), 1e-9)
        t = 0.5 + 0.5 * max(-1.0, min(1.0, value / span))
        rgba = matplotlib.colormaps[DELTA_MAP](0.1 + 0.8 * t)  # the palest ends of RdBu are too close to white
    else:
        t = 0.5 if high - low < 1e-12 else (value - low) / (high - low)
        rgba = matplotlib.colormaps[ACCURACY_MAP](0.15 + 0.8 * max(0.0, min(1.0, t)))
    r, g, b = rgba[:3]
    luminance = 0.2126 * r + 0.7152 * g + 0.0722 * b
    return to_hex(rgba), "#000000" if luminance > 0.45 else "#ffffff"


def _smooth(values: Sequence[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def training_chart(run: TrainingRun) -> str:
    """Batch loss (and dev loss), dev accuracy per task and, for several tasks, batches drawn per task over
    time and the tail (CVaR) and worst of the dev accuracies at each check."""
    panels = ["loss"] + (["dev"] if any(run.curves.values()) else [])
    if run.multitask:
        panels += ["draws"] + (["tail"] if run.tail else [])
    cols = 2 if len(panels) > 1 else 1
    rows = math.ceil(len(panels) / cols)
    width, height = 4.4 * cols, 2.7 * rows
    with _figure(f"train-{run.adapter.id}", width, height, constrained=False) as (fig, buffer):
        axes = fig.subplots(rows, cols, squeeze=False).ravel()
        for ax in axes[len(panels) :]:
            ax.set_visible(False)
        for ax, panel in zip(axes, panels, strict=False):
            {"loss": _loss_panel, "dev": _dev_panel, "draws": _draws_panel, "tail": _tail_panel}[panel](ax, run)
        _legend_below(fig, axes[: len(panels)], width, height)
    return inline_svg(buffer.getvalue(), f"training curves of {run.adapter.name}")


def _thin(points: Sequence[tuple[float, float]], limit: int = MAX_POINTS) -> list[tuple[float, float]]:
    """At most about ``limit`` evenly spaced points (the last kept): a 20k-step run stays a small SVG."""
    stride = math.ceil(len(points) / limit) if points else 1
    kept = list(points[::stride])
    if points and kept[-1] != points[-1]:
        kept.append(points[-1])
    return kept


def _entry_inches(labels: Sequence[str]) -> float:
    """Width of the widest legend entry (handle, gap and text) at :data:`LEGEND_FONT`."""
    return 0.55 + max((len(label) for label in labels), default=0) * LEGEND_FONT * 0.55 / 72


def _legend_below(fig: Figure, axes: Sequence[Axes], width: float, height: float) -> None:
    """One legend for the whole figure, below its panels, each label once: the figure grows by the legend's
    height and the panels keep their size, so no entry sits over the data (fixed-margin figures)."""
    handles, labels = [], []
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    if not labels:
        return
    cols = max(1, min(len(labels), int((width - 0.3) // _entry_inches(labels))))
    legend = (math.ceil(len(labels) / cols) * LEGEND_FONT * 1.6 + 8) / 72  # rows of text, and a margin
    total = height + legend
    fig.set_size_inches(width, total)
    fig.subplots_adjust(bottom=(0.5 + legend) / total, top=1 - 0.3 / total)
    fig.legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, 0.0), ncols=cols, frameon=False)


def _legend_outside(fig: Figure, width: float, entries: Sequence[str]) -> None:
    """The figure's legend below the axes, in as many columns as fit: constrained layout makes room for it."""
    cols = max(1, min(len(entries), int((width - 0.3) // _entry_inches(entries))))
    fig.legend(loc="outside lower center", ncols=cols, frameon=False)


def _loss_panel(ax: Axes, run: TrainingRun) -> None:
    """Batch losses (one colour per task when several: the figure's legend names each task's colour once), their
    running mean, and dev losses dashed."""
    steps = [h[0] + 1 for h in run.history]
    losses = [h[2] for h in run.history]
    if run.multitask:
        for i in range(len(run.tasks)):
            mine = [(s, v) for (s, v, h) in zip(steps, losses, run.history, strict=True) if h[1] == i]
            pts = _thin(mine, max(50, MAX_MARKERS // len(run.tasks)))
            if pts:
                label = "batch loss (colour: task)" if i == 0 else None
                ax.scatter(*zip(*pts, strict=True), s=6, alpha=0.45, color=_task_colour(i), label=label)
    else:
        line = _thin(list(zip(steps, losses, strict=True)))
        ax.plot(*zip(*line, strict=True), color="#999999", linewidth=0.8, alpha=0.7, label="batch loss")
    window = max(1, len(losses) // 20)
    if window > 1:
        smooth = _thin(list(zip(steps, _smooth(losses, window), strict=True)))
        ax.plot(*zip(*smooth, strict=True), color="#222222", linewidth=1.4, label=f"mean of {window} steps")
    for i, task in enumerate(run.tasks):
        curve = run.curves.get(task) or ()
        if curve:
            xs, ys = [p[0] for p in curve], [p[1] for p in curve]
            label = "dev loss" if i == 0 else None
            ax.plot(xs, ys, "--o", markersize=3, color=_task_colour(i), linewidth=1, label=label)
    ax.set(title="training loss", xlabel="step", ylabel="loss")


def _dev_panel(ax: Axes, run: TrainingRun) -> None:
    for i, task in enumerate(run.tasks):
        curve = run.curves.get(task) or ()
        if curve:
            ax.plot([p[0] for p in curve], [p[2] for p in curve], "-o", markersize=3, color=_task_colour(i), label=task)
    ax.set(title="dev accuracy", xlabel="step", ylabel="accuracy")


def _draws_panel(ax: Axes, run: TrainingRun) -> None:
    for i, (task, (steps, counts)) in enumerate(run.draws_over_time().items()):
        xs, ys = zip(*_thin(list(zip(steps, counts, strict=True))), strict=True)
        ax.step(xs, ys, where="post", color=_task_colour(i), label=task)
    ax.set(title="batches drawn per task", xlabel="step", ylabel="batches")


def _tail_panel(ax: Axes, run: TrainingRun) -> None:
    steps = [p[0] for p in run.tail]
    ax.plot(steps, [p[1] for p in run.tail], "-o", markersize=3, color="#b2182b", label="CVaR20 (mean of worst 20%)")
    ax.plot(steps, [p[2] for p in run.tail], "--", color="#555555", linewidth=1, label="worst task")
    ax.set(title="tail of dev accuracy over tasks", xlabel="step", ylabel="accuracy")


def merge_chart(views: Sequence[MergeView]) -> str:
    """Normalized accuracy (merged / the task's own adapter) per task, one bar per merged adapter and split;
    accuracy where a task has no reference."""
    tasks = sorted({s.task for v in views for s in v.scores})
    width = 0.8 / max(1, len(views))
    wide = min(11.0, max(5.5, 2.2 + 0.45 * len(tasks) * max(1, len(views)) ** 0.5))
    with _figure("merges", wide, 3.2) as (fig, buffer):
        ax = fig.subplots()
        for j, view in enumerate(views):
            by_task = {s.task: s for s in view.scores}
            xs, ys = [], []
            for i, task in enumerate(tasks):
                score = by_task.get(task)
                if score is not None:
                    xs.append(i - 0.4 + width * (j + 0.5))
                    ys.append(score.normalized if score.normalized is not None else score.accuracy.value)
            label = f"{view.adapter.name} ({view.adapter.method}, {view.split})"
            ax.bar(xs, ys, width=width * 0.95, color=_task_colour(j), label=label)
        ax.axhline(1.0, color="#333333", linewidth=0.8, linestyle="--")
        ax.set_xticks(range(len(tasks)), tasks, rotation=20, ha="right")
        ax.set(title="merged adapters: normalized accuracy per task", ylabel="merged / own adapter")
        _legend_outside(fig, wide, [f"{v.adapter.name} ({v.adapter.method}, {v.split})" for v in views])
    return inline_svg(buffer.getvalue(), "normalized accuracy of merged adapters per task")


def new_task_chart(rows: Sequence[NewTaskRow]) -> str:
    """Composed and generated adapters against zero-shot on the same task and split."""
    labels = [f"{r.adapter.name} on {r.cell.row.task}/{r.cell.row.split}" for r in rows]
    with _figure("new-tasks", 7.5, 0.9 + 0.42 * len(rows)) as (fig, buffer):
        ax = fig.subplots()
        ys = range(len(rows))
        zero = [r.cell.zero.value if r.cell.zero is not None else 0.0 for r in rows]
        ax.barh([y + 0.2 for y in ys], zero, height=0.38, color="#bbbbbb", label="zero-shot")
        colours = ["#1b9e77" if r.adapter.kind == "compose" else "#7570b3" for r in rows]
        ax.barh(
            [y - 0.2 for y in ys],
            [r.cell.row.value for r in rows],
            height=0.38,
            color=colours,
            label="adapter (green: composed, purple: generated)",
        )
        ax.set_yticks(list(ys), labels)
        ax.invert_yaxis()
        ax.set(title="new-task adapters vs zero-shot", xlabel="accuracy", xlim=(0, 1))
        _legend_outside(fig, 7.5, ["zero-shot", "adapter (green: composed, purple: generated)"])
    return inline_svg(buffer.getvalue(), "composed and generated adapters against zero-shot")
