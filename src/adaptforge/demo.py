"""The main job: the adapter lifecycle end to end on the embedded model and the shipped tasks.

Zero-shot evaluation, one LoRA adapter per task trained into a fresh library, evaluation of each
adapter on its task, a table and a JSON summary. Later stages (merge, compose) extend this.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from adaptforge.backbone import Backbone
from adaptforge.evaluate import evaluate
from adaptforge.library import Library
from adaptforge.scorers import make_scorer
from adaptforge.tasks import Task, load_task
from adaptforge.train.config import TrainConfig
from adaptforge.workflows import metric_values, train_into_library

DEMO_TASKS = ("sst2", "agnews", "trec_question_type", "tweet_emotion", "dbpedia", "mnli", "subjectivity", "tweet_hate")


def shipped_tasks_dir() -> Path:
    return Path(__file__).resolve().parent / "data" / "tasks"


def shipped_tasks(names: tuple[str, ...] = DEMO_TASKS) -> list[Task]:
    return [load_task(shipped_tasks_dir() / name) for name in names]


def run_demo(
    out_dir: Path, console: Console | None = None, max_train: int | None = None, epochs: int | None = None
) -> Path:
    console = console or Console()
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    tasks = shipped_tasks()
    backbone = Backbone.load()
    scorer = make_scorer(backbone)
    library = Library(out_dir / "library")
    cfg = TrainConfig(epochs=epochs or 3, max_train=max_train)
    console.print(f"[bold]adaptforge demo[/bold]: {len(tasks)} tasks on {backbone.name} ({backbone.fingerprint[:12]})")
    rows = []
    for task in tasks:
        zero = evaluate(scorer, task, "test")
        trained = train_into_library(task, backbone, library, f"{task.name}-lora", cfg, eval_splits=(), overwrite=True)
        delta, _ = library.load(trained.record.id, expected_fingerprint=backbone.fingerprint)  # the stored copy
        tuned = evaluate(scorer, task, "test", delta, adapter=trained.record.name)
        for res, adapter_id in ((zero, None), (tuned, trained.record.id)):
            library.record_metrics(adapter_id, backbone.fingerprint, task.name, "test", metric_values(res), res.n)
        rows.append(
            {
                "task": task.name,
                "n_train": trained.result.n_train,
                "n_test": zero.n,
                "zero_shot_accuracy": zero.accuracy,
                "lora_accuracy": tuned.accuracy,
                "zero_shot_macro_f1": zero.macro_f1,
                "lora_macro_f1": tuned.macro_f1,
                "train_seconds": round(trained.result.seconds, 1),
            }
        )
        console.print(
            f"  {task.name}: zero-shot {zero.accuracy:.3f} -> LoRA {tuned.accuracy:.3f}"
            f"  ({trained.result.seconds:.0f}s training)"
        )
    table = Table(title="test accuracy: zero-shot vs LoRA")
    for col in ("task", "train n", "zero-shot", "LoRA", "gain"):
        table.add_column(col, justify="right" if col != "task" else "left")
    for r in rows:
        table.add_row(
            r["task"],
            str(r["n_train"]),
            f"{r['zero_shot_accuracy']:.3f}",
            f"{r['lora_accuracy']:.3f}",
            f"{r['lora_accuracy'] - r['zero_shot_accuracy']:+.3f}",
        )
    mean_zero = sum(r["zero_shot_accuracy"] for r in rows) / len(rows)
    mean_lora = sum(r["lora_accuracy"] for r in rows) / len(rows)
    table.add_row("average", "", f"{mean_zero:.3f}", f"{mean_lora:.3f}", f"{mean_lora - mean_zero:+.3f}")
    console.print(table)
    summary = {
        "model": backbone.name,
        "fingerprint": backbone.fingerprint,
        "library": str(library.root),
        "tasks": rows,
        "average": {"zero_shot_accuracy": mean_zero, "lora_accuracy": mean_lora},
        "seconds": round(time.perf_counter() - t0, 1),
    }
    path = out_dir / "summary.json"
    path.write_text(json.dumps(summary, indent=2))
    return path
