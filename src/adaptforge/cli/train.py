"""``adaptforge train``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from adaptforge.cli.app import (
    DescriptionOpt,
    JsonOpt,
    LabelColOpt,
    LibraryOpt,
    ModelOpt,
    OverwriteOpt,
    TextColOpt,
    app,
    cli_errors,
    library_folder,
    one_description,
    parse_options,
)
from adaptforge.cli.render import (
    console,
    notify,
    out,
    print_json,
    progress_bar,
)
from adaptforge.errors import AdaptforgeError

if TYPE_CHECKING:  # --help must not import torch
    from adaptforge.library import Library

EXAMPLES = r"""
Examples ($TASKS: the shipped tasks, src/adaptforge/data/tasks in a clone):

  adaptforge train $TASKS/sst2 --library lib --name sst2-lora
  adaptforge train reviews.csv --text-col review --label-col sentiment -l lib --name reviews \
    --description "Is the review positive?"     (or write it to reviews.description.txt)
  adaptforge train $TASKS/sst2 $TASKS/agnews --multitask --sampler temperature -l lib --name both
  adaptforge train $TASKS/country_capital --model smollm2 -l lib-llm --name capitals --epochs 2
  adaptforge train $TASKS/sst2 -l lib --name sst2-lora --resume     (continue a stopped run of that name)
"""


@contextmanager
def interrupted_note(lib: Library, name: str) -> Iterator[None]:
    """Ctrl-C during training: say where the last checkpoint is and how to continue from it, then exit 130."""
    try:
        yield
    except KeyboardInterrupt:
        from adaptforge.train.checkpoint import load_checkpoint

        left = load_checkpoint(lib.run_dir(name))
        where = (
            f"the last checkpoint (step {left.step}) is in {lib.run_dir(name)}; continue with the same command "
            "and --resume, or start over with --overwrite"
            if left is not None
            else "no checkpoint was written yet (one every --checkpoint-every steps); run the command again"
        )
        console.print(f"interrupted: {where}")
        raise typer.Exit(130) from None


@app.command("train", epilog=EXAMPLES)
def train_cmd(
    task_dirs: Annotated[list[Path], typer.Argument(help="Task folder(s), SNI .json or .csv.")],
    library: LibraryOpt,
    name: Annotated[str, typer.Option("--name", help="Adapter name in the library.")],
    model: ModelOpt = None,
    epochs: Annotated[int, typer.Option()] = 3,
    max_train: Annotated[int | None, typer.Option("--max-train", help="Cap on training examples.")] = None,
    rank: Annotated[int, typer.Option()] = 8,
    alpha: Annotated[float, typer.Option()] = 16.0,
    lr: Annotated[float | None, typer.Option(help="Default 1e-3 (encoder) / 3e-4 (causal LM).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 32,
    max_length: Annotated[int | None, typer.Option("--max-length")] = None,
    precision: Annotated[
        str | None,
        typer.Option(
            help="fp32, or bf16: the forward pass under bfloat16 autocast (LoRA weights stay fp32). Default bf16 "
            "for causal LMs, fp32 for encoders."
        ),
    ] = None,
    targets: Annotated[str | None, typer.Option(help="Comma-separated module names (default per model).")] = None,
    seed: Annotated[int, typer.Option()] = 0,
    checkpoint_every: Annotated[int, typer.Option("--checkpoint-every")] = 50,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue a killed run of the same name.", metavar="")
    ] = False,
    overwrite: OverwriteOpt = False,
    text_col: TextColOpt = "text",
    label_col: LabelColOpt = "label",
    description: DescriptionOpt = None,
    multitask: Annotated[bool, typer.Option("--multitask", help="One adapter on all given tasks.", metavar="")] = False,
    sampler: Annotated[
        str, typer.Option(help="Task sampler: uniform, proportional, temperature, group_dro, drm, mpts.")
    ] = "uniform",
    sampler_opt: Annotated[
        list[str] | None, typer.Option("--sampler-opt", help="Sampler option key=value; repeatable.")
    ] = None,
    tasks_per_step: Annotated[
        int,
        typer.Option(
            "--tasks-per-step",
            help="B: tasks mixed in each step's batch (splits --batch-size); drm and mpts choose them among "
            "B-hat = 2 B candidates unless --sampler-opt candidates=N.",
        ),
    ] = 1,
    steps: Annotated[int | None, typer.Option(help="Total steps (default: epochs over all data).")] = None,
    eval_every: Annotated[int, typer.Option("--eval-every", help="Steps between dev checks (curves).")] = 0,
    snapshots: Annotated[
        int, typer.Option("--snapshots", help="Keep N evenly spaced snapshots of the LoRA weights (generate icm).")
    ] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Train a LoRA adapter on one task (or, with --multitask, on several) and add it to the library."""
    from adaptforge.backbone import Backbone
    from adaptforge.library import Library, validate_name
    from adaptforge.pipelines.train import check_train_request, train_into_library
    from adaptforge.tasks import load_task
    from adaptforge.train.config import TrainConfig

    with cli_errors(), library_folder(library):
        validate_name(name)
        if len(task_dirs) > 1 and not multitask:
            raise AdaptforgeError("several tasks given: pass --multitask to train one adapter on all of them")
        text = one_description(description, len(task_dirs), "TASK_DIRS")
        tasks = [load_task(d, text_col=text_col, label_col=label_col, description=text) for d in task_dirs]
        cfg = TrainConfig(
            rank=rank,
            alpha=alpha,
            lr=lr,
            epochs=epochs,
            batch_size=batch_size,
            max_length=max_length,
            precision=precision,
            max_train=max_train,
            seed=seed,
            checkpoint_every=checkpoint_every,
            targets=tuple(t.strip() for t in targets.split(",")) if targets else None,
            sampler=sampler,
            sampler_options=parse_options(sampler_opt or []),
            tasks_per_step=tasks_per_step,
            steps=steps,
            eval_every=eval_every,
            snapshots=snapshots,
        )
        lib = Library(library)  # created here when new; removed again if the run fails before it lands
        check_train_request(lib, name, cfg, resume=resume, overwrite=overwrite)  # before the model loads
        notify(f"loading base model {model or 'embedded MiniLM (all-MiniLM-L6-v2)'}")
        backbone = Backbone.load(model)
        with progress_bar(f"train {name}") as bar, interrupted_note(lib, name):

            def step(done: int, total: int, loss: float, tokens_per_second: float) -> None:
                bar.update(0, completed=done, total=total, info=f"loss {loss:.3f}, {tokens_per_second:.0f} tok/s")

            trained = train_into_library(
                tasks, backbone, lib, name, cfg, resume=resume, progress=step, overwrite=overwrite
            )
    summary = {
        "adapter": trained.record.name,
        "id": trained.record.id,
        "tasks": [t.name for t in tasks],
        "n_train": trained.result.n_train,
        "examples_per_second": round(trained.result.examples_per_second, 1),
        "tokens_per_second": round(trained.result.tokens_per_second, 1),
        "eval": [e.to_json() for e in trained.evals],
        "zero_shot": [e.to_json() for e in trained.zero_shot],
        "snapshots": 0 if trained.result.snapshots is None else len(trained.result.snapshots),
    }
    if as_json:
        print_json(summary)
    else:
        for z, e in zip(trained.zero_shot, trained.evals, strict=True):
            out.print(
                f"{e.task}/{e.split} (n={e.n}): zero-shot {z.primary:.3f} -> {name} {e.primary:.3f} "
                f"({e.primary - z.primary:+.3f}); "
                + (
                    f"macro-F1 {z.macro_f1:.3f} -> {e.macro_f1:.3f}"
                    if e.primary_metric == "accuracy"
                    else f"exact match, ROUGE-L {z.rouge_l:.3f} -> {e.rouge_l:.3f}"
                )
            )
        out.print(f"added {trained.record.name} ({trained.record.id}) to {lib.root}")
