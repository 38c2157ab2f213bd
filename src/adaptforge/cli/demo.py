"""``adaptforge demo``: runs :mod:`adaptforge.pipelines.demo` and renders what it shows (lines, one table per
step, a transient progress bar per training run on a terminal)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from adaptforge.cli.app import (
    app,
    cli_errors,
)
from adaptforge.cli.render import (
    out,
    sweep_table,
)

if TYPE_CHECKING:
    from adaptforge.pipelines.demo import TrainProgress


def _f(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def accuracy_table(data: Mapping[str, Any]) -> Table:
    table = Table(title="test accuracy: zero-shot vs LoRA")
    for col in ("task", "train n", "zero-shot", "LoRA", "gain"):
        table.add_column(col, justify="right" if col != "task" else "left")
    for r in data["rows"]:
        gain = r["lora_accuracy"] - r["zero_shot_accuracy"]
        table.add_row(r["task"], str(r["n_train"]), _f(r["zero_shot_accuracy"]), _f(r["lora_accuracy"]), f"{gain:+.3f}")
    mean_zero, mean_lora = data["average"]["zero_shot_accuracy"], data["average"]["lora_accuracy"]
    table.add_row("average", "", _f(mean_zero), _f(mean_lora), f"{mean_lora - mean_zero:+.3f}")
    return table


def merge_table(data: Mapping[str, Any]) -> Table:
    table = Table(title="merged adapter, test accuracy normalized by each task's own adapter")
    table.add_column("method")
    for task in data["tasks"]:
        table.add_column(task, justify="right")
    for col in ("avg acc", "avg norm", "worst"):
        table.add_column(col, justify="right")
    for row in data["rows"]:
        norms = {r["task"]: r["normalized_accuracy"] for r in row["tasks"]}
        table.add_row(
            row["method"],
            *[_f(norms.get(t)) for t in data["tasks"]],
            f"{row['average_accuracy']:.3f}",
            f"{row['average_normalized_accuracy']:.3f}",
            f"{row['worst_task']} {row['worst_normalized_accuracy']:.3f}",
        )
    return table


def new_task_table(data: Mapping[str, Any]) -> Table:
    table = Table(title=f"new task {data['task']} (not in the library), test accuracy")
    for col in ("adapter", "from", "accuracy", "macro-F1", "seconds"):
        table.add_column(col, justify="left" if col in ("adapter", "from") else "right")
    for r in data["rows"]:
        table.add_row(r["adapter"], r["from"] or "-", _f(r["accuracy"]), _f(r["macro_f1"]), _f(r["seconds"], ".0f"))
    return table


def prune_table(data: Mapping[str, Any]) -> Table:
    title = (
        f"{data['method']} {data['sparsity']:.0%} pruned for {data['domain']}: zero-shot dev accuracy, dense vs pruned"
    )
    table = Table(title=title)
    for col in ("task", "dense", "pruned", "kept"):
        table.add_column(col, justify="left" if col == "task" else "right")
    for r in data["rows"]:
        table.add_row(r["task"], _f(r["dense"]), _f(r["pruned"]), _f(r["kept"] or None))
    return table


def llm_table(data: Mapping[str, Any]) -> Table:
    table = Table(
        title=f"test exact match / ROUGE-L (n={data['n']} per task): base vs adapter vs {data['method']} merge"
    )
    for col in ("task", "base", "adapter", "merged"):
        table.add_column(col, justify="left" if col == "task" else "right")
    for name, row in data["rows"].items():
        cells = [f"{row[k]['exact_match']:.3f} / {row[k]['rouge_l']:.3f}" for k in ("base", "adapter", "merged")]
        table.add_row(name, *cells)
    return table


TABLES = {
    "accuracy": accuracy_table,
    "merge": merge_table,
    "sweep": lambda data: sweep_table(data["rows"], data["title"]),
    "new_task": new_task_table,
    "prune": prune_table,
    "llm": llm_table,
}


class RichView:
    """The demo on a rich console: lines as they come, each step's table, a transient bar per training run (off a
    terminal, where a live bar prints nothing, the trainer's progress lines instead)."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def say(self, text: str) -> None:
        self.console.print(text)

    def show(self, step: str, data: Mapping[str, Any]) -> None:
        self.console.print(TABLES[step](data))

    @contextmanager
    def training(self, task: str) -> Iterator[TrainProgress | None]:
        if not self.console.is_terminal:
            yield None
            return
        with Progress(*Progress.get_default_columns(), console=self.console, transient=True) as bar:
            bar_id = bar.add_task(f"train {task}", total=None)

            def step(done: int, total: int, loss: float, tokens_per_second: float) -> None:
                bar.update(bar_id, completed=done, total=total)

            yield step


@app.command("demo")
def demo_cmd(
    out_dir: Annotated[Path, typer.Option("--out", help="Where the library and summary go.")] = Path("out/demo"),
    max_train: Annotated[
        int | None,
        typer.Option(
            "--max-train",
            min=1,
            help="Training examples per task (default: all 400; the LLM demo: 128). Smaller is faster: "
            "--max-train 64 --epochs 1 is a quick look.",
        ),
    ] = None,
    epochs: Annotated[
        int | None, typer.Option(min=1, help="Training epochs per task (default 3; the LLM demo: 2).")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            help="A causal LM (smollm2: the embedded SmolLM2-135M-Instruct) runs the LLM demo: SFT on two "
            "generation tasks, base vs adapter, a merge, greedy answers. Default: the encoder demo on MiniLM.",
        ),
    ] = None,
) -> None:
    """End to end on the embedded model: zero-shot vs LoRA on the shipped tasks (--model smollm2: the LLM demo)."""
    from dataclasses import replace

    from adaptforge.pipelines.demo import LlmDemoSizes, run_demo, run_llm_demo

    view = RichView(out)
    with cli_errors():
        if model is None:
            summary = run_demo(out_dir, view, max_train=max_train, epochs=epochs)
        else:
            sizes = LlmDemoSizes()
            sizes = replace(sizes, max_train=max_train or sizes.max_train, epochs=epochs or sizes.epochs)
            summary = run_llm_demo(out_dir, view, model=model, sizes=sizes)
    out.print(f"summary written to {summary}")
