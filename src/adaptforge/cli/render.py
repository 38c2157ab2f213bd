"""What the command line shows: consoles, progress bars, tables and summaries (no parsing, no work)."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from adaptforge.progress import ThrottledProgress, progress_line

if TYPE_CHECKING:  # the CLI imports this module for --help; torch and the pipelines load only when used
    from adaptforge.evaluate import EvalResult
    from adaptforge.methods import Method
    from adaptforge.pipelines.common import NewTaskOutcome
    from adaptforge.pipelines.evaluate import CorpusPerplexity
    from adaptforge.pipelines.merge import MergeReport
    from adaptforge.pipelines.prune import PruneOutcome
    from adaptforge.pipelines.tta import TtaOutcome
    from adaptforge.pipelines.tta_documents import DocumentsOutcome


def plain_console(stderr: bool = False) -> Console:
    """A console that never reads markup: names, labels and error messages are user text, and a name like
    ``[red]x`` or a value list like ``[nan, 1.0]`` must print literally. Styles are passed as ``style=``."""
    return wide_when_piped(Console(stderr=stderr, markup=False))


def wide_when_piped(c: Console) -> Console:
    """Off a terminal rich assumes 80 columns and truncates the wide merge and eval tables; pipes and
    logs get 160 unless ``COLUMNS`` says otherwise."""
    if not c.is_terminal and "COLUMNS" not in os.environ:
        c.width = 160
    return c


console = plain_console(stderr=True)  # progress, notes and errors
out = plain_console()  # results


class LineProgress:
    """Progress for a log or a pipe: a line with done/total, rate and ETA at most every ``every`` seconds (and
    at the end), where a live bar would print nothing until it finishes."""

    def __init__(self, description: str, total: int | None, every: float = 5.0) -> None:
        self.description, self.total, self.every = description, total, every
        self.done, self.info = 0, ""
        self.start = self.last = time.monotonic()

    def update(
        self,
        task_id: int,
        completed: int | None = None,
        total: int | None = None,
        advance: int = 0,
        info: str = "",
    ) -> None:
        self.done = completed if completed is not None else self.done + advance
        self.total = total if total is not None else self.total
        self.info = info or self.info
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            console.print(self.line(now), highlight=False)

    def line(self, now: float) -> str:
        rate = self.done / max(now - self.start, 1e-9)
        return progress_line(self.description, self.done, self.total, rate, self.info)


@contextmanager
def progress_bar(description: str, total: int | None = None) -> Iterator[Progress | LineProgress]:
    """A live bar with known total, rate and ETA on a terminal; :class:`LineProgress` lines elsewhere."""
    if not console.is_terminal:
        lines = LineProgress(description, total)
        yield lines
        console.print(lines.line(time.monotonic()), highlight=False)
        return
    cols = [
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}", markup=False),
    ]
    with Progress(*cols, console=console, transient=False) as bar:
        bar.add_task(description, total=total, info="")
        yield bar


def notify(msg: str) -> None:
    console.print(msg, style="dim")


def show_progress(every: float) -> None:
    """Print the ``adaptforge.progress`` lines of long steps (search, fitting, pruning, evaluation) on stderr, one
    per ``every`` seconds per step (0: every step); replaces a handler an earlier command in this process set."""
    logger = logging.getLogger("adaptforge.progress")
    for old in [h for h in logger.handlers if isinstance(h, ThrottledProgress)]:
        logger.removeHandler(old)
    logger.addHandler(ThrottledProgress(lambda line: console.print(line, highlight=False), every))
    logger.setLevel(logging.DEBUG)
    logger.propagate = False


def finite_json(value: object, pointer: str = "") -> tuple[object, list[str]]:
    """``value`` with every non-finite float (NaN, infinity) replaced by ``None``, and the JSON pointers of
    those replaced: NaN is not JSON, and a parser that accepts it would read a broken metric as a number."""
    if isinstance(value, float) and not math.isfinite(value):
        return None, [f"{pointer or '/'} ({value})"]
    if isinstance(value, dict):
        pairs = [(k, finite_json(v, f"{pointer}/{k}")) for k, v in value.items()]
        return {k: v for k, (v, _) in pairs}, [p for _, (_, ps) in pairs for p in ps]
    if isinstance(value, (list, tuple)):
        items = [finite_json(v, f"{pointer}/{i}") for i, v in enumerate(value)]
        return [v for v, _ in items], [p for _, ps in items for p in ps]
    return value, []


def print_json(value: object) -> None:
    """The one way a verb prints ``--json``: strict JSON on stdout; a non-finite number prints as ``null``
    with a warning on stderr naming where it was (see :func:`finite_json`). Plain text, not rich's highlighted
    JSON, which took 14 s for a thousand adapters."""
    clean, replaced = finite_json(value)
    if replaced:
        console.print(f"warning: not a finite number, printed as null: {', '.join(replaced)}", style="yellow")
    out.file.write(json.dumps(clean, default=str, allow_nan=False, indent=2) + "\n")


def perplexity_table(rows: list[CorpusPerplexity]) -> Table:
    """``eval --metric perplexity``: one row per corpus."""
    table = Table(title=f"perplexity (windows of {rows[0].context} tokens, stride {rows[0].stride})")
    for column in ("corpus", "model", "perplexity", "tokens", "texts"):
        table.add_column(column, justify="left" if column in ("corpus", "model") else "right")
    for r in rows:
        table.add_row(r.corpus, r.model, f"{r.result.value:.3f}", str(r.result.tokens), str(r.result.texts))
    return table


def grid_table(results: list[EvalResult], title: str) -> Table:
    """Adapters as rows, tasks as columns, with average, worst-task and CVaR(20%) columns of each cell's primary
    metric (accuracy; exact match on a generation task); a cell shows accuracy / macro-F1 or EM / ROUGE-L."""
    from adaptforge.evaluate import cvar, worst

    tasks = list(dict.fromkeys(r.task for r in results))
    rows = list(dict.fromkeys(r.adapter for r in results))
    table = Table(title=title)
    table.add_column("adapter")
    sizes = {t: {r.n for r in results if r.task == t} for t in tasks}
    for t in tasks:  # the examples each cell counts; a column whose cells differ shows n in each cell
        table.add_column(
            f"{t} (n={next(iter(sizes[t]))})" if len(sizes[t]) == 1 else f"{t} (n differs)", justify="right"
        )
    primary = {r.primary_metric for r in results}
    for col in ("avg acc" if primary == {"accuracy"} else "avg", "worst", "CVaR20"):
        table.add_column(col, justify="right")
    cells = {(r.adapter, r.task): r for r in results}
    for a in rows:
        accs = [cells[(a, t)].primary for t in tasks if (a, t) in cells]
        row = [
            "-"
            if (a, t) not in cells
            else cells[(a, t)].cell_text() + (f" n={cells[(a, t)].n}" if len(sizes[t]) > 1 else "")
            for t in tasks
        ]
        table.add_row(
            a or "(zero-shot)", *row, f"{sum(accs) / len(accs):.3f}", f"{worst(accs):.3f}", f"{cvar(accs):.3f}"
        )
    return table


def print_new_task(outcome: NewTaskOutcome, as_json: bool) -> None:
    """Compose and generate: the stored adapter, its candidates and zero-shot vs new adapter."""
    if as_json:
        print_json(outcome.to_json())
        return
    record = outcome.record
    made = outcome.method + (f" ({record.method})" if record.method != outcome.method else "")  # generate (span)
    out.print(f"{made}: added {record.name} ({record.id}), rank {record.rank}, {outcome.seconds:.1f}s")
    if outcome.candidates:
        weights = outcome.info.get("weights", {})
        table = Table(title="candidates")
        for col in ("adapter", "task", "similarity", "shot loss", "weight"):
            table.add_column(col, justify="left" if col in ("adapter", "task") else "right")
        for c in outcome.candidates:
            table.add_row(
                c.name,
                c.task or "-",
                "-" if c.similarity is None else f"{c.similarity:.3f}",
                "-" if c.shot_loss is None else f"{c.shot_loss:.3f}",
                f"{weights.get(c.name, 0.0):+.3f}",
            )
        out.print(table)
    if outcome.evals:
        zero, new = outcome.evals["zero_shot"], outcome.evals["adapter"]
        metric = new.primary_metric.replace("_", " ")  # accuracy, or exact match on a generation task
        second = (
            f"macro-F1 {zero.macro_f1:.3f} -> {new.macro_f1:.3f}"
            if new.primary_metric == "accuracy"
            else f"ROUGE-L {zero.rouge_l:.3f} -> {new.rouge_l:.3f}"
        )
        out.print(
            f"{new.task} ({new.split}, n={new.n}): zero-shot {metric} {zero.primary:.3f} -> {record.name} "
            f"{new.primary:.3f} ({new.primary - zero.primary:+.3f}); {second}"
        )


def merge_table(report: MergeReport, title: str) -> Table:
    """Per task: merged accuracy, the task's own adapter, normalized accuracy; then average and worst."""
    table = Table(title=title)
    for col in ("task", "n", "accuracy", "own adapter", "normalized"):
        table.add_column(col, justify="left" if col == "task" else "right")
    for r in report.rows:
        own = f"{r.reference_accuracy:.3f} ({r.reference})" if r.reference_accuracy is not None else "-"
        norm = f"{r.normalized:.3f}" if r.normalized is not None else "-"
        table.add_row(r.task + (" (routed)" if r.routed else ""), str(r.n), f"{r.accuracy:.3f}", own, norm)
    avg_norm = report.average_normalized
    table.add_row("average", "", f"{report.average_accuracy:.3f}", "", "-" if avg_norm is None else f"{avg_norm:.3f}")
    low = report.worst_task
    if low is not None:
        norm = "-" if low.normalized is None else f"{low.normalized:.3f}"
        table.add_row(f"worst normalized: {low.task}", "", f"{low.accuracy:.3f}", "", norm)
    return table


def print_methods(kind: str, methods: dict[str, type[Method]]) -> None:
    """``--list``: every registered method with its paper, requirements and typed params (defaults, help)."""
    for name, cls in methods.items():
        info = cls.help()
        notes = f"  ({'; '.join(info.notes)})" if info.notes else ""
        out.print(f"{name}{notes}  {info.reference_url}", style="bold")
        if info.summary:
            out.print(f"  {info.summary}")
        for row in info.params:
            default = json.dumps(row.default)
            out.print(f"    {row.name} ({row.type}, default {default}): {row.help}")
    out.print(f"{len(methods)} {kind}(s)")


def prune_table(outcome: PruneOutcome) -> Table:
    """Sparsity, sizes and zero-shot accuracy dense vs pruned per task (with retention)."""
    dense_p, pruned_p = outcome.parameters
    dense_b, pruned_b, packed_b = outcome.file_bytes
    size = f"{pruned_b / 1e6:.1f} MB" + (f" of {dense_b / 1e6:.1f} MB" if dense_b else "")
    if packed_b is not None:
        size += f" (packed {packed_b / 1e6:.1f} MB, {packed_b / pruned_b:.2f}x)"
    count = (
        f"parameters {pruned_p:,} of {dense_p:,}"
        if pruned_p != dense_p
        else f"{dense_p:,} parameters as before (pruned weights are zeros; --compact stores them packed)"
    )
    title = (
        f"{outcome.record.prune_method} ({outcome.record.pattern}): sparsity {outcome.report.sparsity:.3f} "
        f"of the pruned layers, {count}, weights {size}, {outcome.seconds:.1f}s -> {outcome.path}"
    )
    table = Table(title=title)
    for col in ("task", "split", "n", "dense acc", "pruned acc", "retention"):
        table.add_column(col, justify="left" if col in ("task", "split") else "right")
    for task, pair in outcome.evals.items():
        d, p = pair["dense"], pair["pruned"]
        kept = outcome.retention(task)
        table.add_row(
            task, d.split, str(d.n), f"{d.accuracy:.3f}", f"{p.accuracy:.3f}", "-" if kept is None else f"{kept:.3f}"
        )
    lines = [
        f"{key} perplexity {pair.dense.value:.2f} -> {pair.pruned.value:.2f} "
        f"({pair.pruned.value / pair.dense.value:.3f}x; {pair.dense.texts} held-out texts, {pair.text.source})"
        for key, pair in outcome.perplexity.items()
        if pair.pruned is not None
    ]
    if lines:
        table.caption = "\n".join(lines)
    return table


def adapter_summary(info: dict) -> Table:
    """``library show``: the record as a two-column table a person can read (``--json`` has everything)."""
    table = Table(title=f"{info['name']} ({info['id']})", show_header=False, box=None, padding=(0, 2))
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    add = table.add_row
    add("kind", f"{info['kind']} ({info['method']})")
    add("task", info["task"] or "-")
    if info.get("description"):
        add("description", info["description"])
    add("base", f"{info['base_model']} (fingerprint {info['base_fingerprint'][:12]})")
    kinds = ", ".join(sorted({t.rsplit(".", 1)[-1] for t in info["targets"]}))
    add("rank", f"{info['rank']} on {len(info['targets'])} modules ({kinds})")
    if info["lineage"]:
        add("made from", ", ".join(f"{p['name']} ({p['kind']})" for p in info["lineage"]))
    origin = (info.get("recipe") or {}).get("origin")
    if isinstance(origin, dict):  # an adaptforge export imported here: how it was made where it came from
        parents = ", ".join(str(p.get("name")) for p in origin.get("lineage") or [] if isinstance(p, dict))
        made = f"{origin.get('name')} ({origin.get('kind')}, {origin.get('method')})"
        add("imported from", made + (f", made from {parents}" if parents else ""))
    if info["children"]:
        add("used by", ", ".join(info["children"]))
    params = {k: v for k, v in (info.get("params") or {}).items() if k != "labels"}
    if params:
        add("params", json.dumps(params, default=str)[:200])
    for m in info["metrics"]:
        value = "nan" if m["value"] is None else f"{m['value']:.4f}"
        add("metric", f"{m['task']}/{m['split']} {m['metric']} {value} (n={m['n']})")
    for name, size in info["files"].items():
        add("file", f"{name} {size / 1024:.1f} KiB")
    if info.get("snapshots"):
        steps = info["snapshots"]["steps"]
        add("snapshots", f"{info['snapshots']['count']} (steps {steps[0]}..{steps[-1]}), not separate adapters")
    add("checksum", info["checksum"][:16])
    add("integrity", "ok" if info["integrity"]["ok"] else "DAMAGED")
    return table


def tta_table(outcome: TtaOutcome) -> Table:
    """``adaptforge tta``: accuracy and macro-F1 before (the adapter) and after (the method) on the same inputs,
    with the cost per input of each and, below, resets, updates and the saved adapter."""
    after, ratio = outcome.after, outcome.cost_ratio
    title = (
        f"{outcome.method} on {after.task}/{after.split} (n={after.n}, {outcome.granularity}"
        f"{'' if outcome.granularity == 'input' else f', batch {outcome.batch_size}'}), adapter {outcome.adapter}"
    )
    table = Table(title=title, min_width=len(title))
    for col in ("", "accuracy", "macro-F1", "ms / input"):
        table.add_column(col, justify="left" if not col else "right")
    table.add_row(
        "before",
        f"{outcome.before.accuracy:.3f}",
        f"{outcome.before.macro_f1:.3f}",
        f"{outcome.plain_ms_per_input:.1f}",
    )
    table.add_row("after", f"{after.accuracy:.3f}", f"{after.macro_f1:.3f}", f"{outcome.tta_ms_per_input:.1f}")
    table.add_row(
        "change",
        f"{after.accuracy - outcome.before.accuracy:+.3f}",
        f"{after.macro_f1 - outcome.before.macro_f1:+.3f}",
        "-" if ratio is None else f"x{ratio:.2f}",
    )
    resets = f"resets: {outcome.run.resets}" + (f" ({outcome.run.drifts} by drift)" if outcome.run.drifts else "")
    notes = [resets, f"inputs that updated: {outcome.run.updated} of {after.n}"]
    if outcome.candidates:
        notes.append(f"mixed with: {', '.join(outcome.candidates)}")
    if outcome.pool:
        notes.append(f"neighbours from: {', '.join(outcome.pool)}")
    if outcome.record is not None:
        notes.append(f"saved {outcome.record.name} ({outcome.record.id})")
    table.caption = "; ".join(notes)
    return table


def documents_table(outcome: DocumentsOutcome) -> Table:
    """``adaptforge tta DOCUMENTS``: per document, suffix perplexity unadapted and after the method, the change,
    and the method's cost as a multiple of one plain pass over the document; the means below."""
    title = f"{outcome.method} on {outcome.corpus} (n={len(outcome.rows)}, prefix {outcome.prefix_fraction:g})"
    table = Table(title=title, min_width=len(title))
    for col in ("line", "prefix", "suffix", "plain ppl", "adapted ppl", "change", "cost"):
        table.add_column(col, justify="right")
    for r in outcome.rows:
        ratio = r.cost_ratio
        table.add_row(
            str(r.line),
            str(r.prefix_tokens),
            str(r.suffix_tokens),
            f"{r.plain_perplexity:.3f}",
            f"{r.perplexity:.3f}",
            f"{r.perplexity / r.plain_perplexity - 1:+.1%}",
            "-" if ratio is None else f"x{ratio:.1f}",
        )
    ratio = outcome.mean_cost_ratio
    table.caption = f"mean change {outcome.mean_change:+.1%}, mean cost " + ("-" if ratio is None else f"x{ratio:.1f}")
    return table


def sweep_table(rows: list[dict], title: str) -> Table:
    """One row per sweep cell (``SweepOutcome.to_json()["cells"]``): stage, what it ran, status, accuracy."""
    table = Table(title=title)
    for col in ("stage", "cell", "adapter", "status", "accuracy", "seconds", "worker"):
        table.add_column(col, justify="right" if col in ("accuracy", "seconds") else "left")
    for r in rows:
        acc = "-" if r["accuracy"] is None else f"{r['accuracy']:.3f} ({r['split']})"
        status = r["status"] if r["error"] is None else f"failed: {r['error']}"
        style = "red" if r["status"] == "failed" else ("dim" if r["status"] == "skipped" else None)
        table.add_row(
            r["stage"], r["label"], r["adapter"], status, acc, f"{r['seconds']:.1f}", r["worker"], style=style
        )
    return table
