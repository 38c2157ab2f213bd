"""``adaptforge generate``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from adaptforge.cli.app import (
    JsonOpt,
    LabelColOpt,
    LibraryOpt,
    LimitOpt,
    ModelOpt,
    OverwriteOpt,
    TextColOpt,
    app,
    cli_errors,
    one_description,
    parse_options,
)
from adaptforge.cli.render import (
    notify,
    print_new_task,
)
from adaptforge.errors import AdaptforgeError

EXAMPLES = r"""
Examples ($TASKS: the shipped tasks, src/adaptforge/data/tasks in a clone):

  adaptforge generate -l lib --description "Is this tweet offensive?" --labels "not offensive,offensive" --out gen \
    --eval $TASKS/tweet_offensive
  adaptforge generate -l lib --method icm --examples $TASKS/tweet_offensive --shots 16 --out gen-icm \
    --description "Is this tweet offensive?" --labels "not offensive,offensive"
  adaptforge generate --list     (icm learns from adapters trained with --snapshots N)
"""


@app.command("generate", epilog=EXAMPLES)
def generate_cmd(
    library: LibraryOpt,
    out_name: Annotated[str, typer.Option("--out", "-o", help="Name of the generated adapter.")],
    description: Annotated[
        str, typer.Option(help="The new task's description (instruction); also the --eval task's, over its own.")
    ],
    labels: Annotated[str, typer.Option(help="Comma-separated label strings, in order.")],
    task_name: Annotated[str | None, typer.Option("--task", help="Task name recorded (default: --out).")] = None,
    seed: Annotated[int | None, typer.Option(help="Sample the generator with this seed (default: its mean).")] = None,
    method: Annotated[
        str, typer.Option("--method", help="Generator: span (description, library adapters) or icm (snapshots).")
    ] = "span",
    shots: Annotated[
        int | None, typer.Option("--shots", min=0, help="icm: demonstrations k (default 16); 0: description only.")
    ] = None,
    examples: Annotated[
        Path | None,
        typer.Option("--examples", help="icm: labelled demonstrations (JSONL text/label, or a task folder)."),
    ] = None,
    param: Annotated[
        list[str] | None,
        typer.Option("--param", help="Generator parameter key=value (e.g. latent_dim=16 for icm)."),
    ] = None,
    model: ModelOpt = None,
    eval_dir: Annotated[Path | None, typer.Option("--eval", help="Task folder to compare with zero-shot.")] = None,
    split: Annotated[str, typer.Option(help="Split evaluated by --eval.")] = "test",
    limit: LimitOpt = None,
    text_col: TextColOpt = "text",
    label_col: LabelColOpt = "label",
    overwrite: OverwriteOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """An adapter for a task never trained on, from its description and labels (generator over the library)."""
    from adaptforge.generate.methods import GENERATORS
    from adaptforge.library import Library
    from adaptforge.pipelines.generate import generate_into_library, read_demonstrations
    from adaptforge.tasks import load_task

    with cli_errors():
        names = [x.strip() for x in labels.split(",")]
        if len(names) < 2 or any(not x for x in names):
            raise AdaptforgeError(f"--labels {labels!r}: expected at least two comma-separated non-empty labels")
        GENERATORS.get(method)  # an unknown name fails here, with suggestions
        if method != "icm" and (shots is not None or examples is not None):
            raise AdaptforgeError(f"--shots and --examples are for --method icm; --method {method} reads no examples")
        demos = read_demonstrations(examples, names) if examples is not None else None
        lib = Library(library, create=False)
        outcome = generate_into_library(
            description,
            names,
            lib,
            out_name,
            task_name=task_name,
            seed=seed,
            method=method,
            examples=demos,
            shots=shots,
            params=parse_options(param or []),
            model=model,
            eval_task=load_task(
                eval_dir, text_col=text_col, label_col=label_col, description=one_description(description, 1)
            )
            if eval_dir is not None
            else None,
            eval_split=split,
            limit=limit,
            overwrite=overwrite,
            notify=notify,
        )
    print_new_task(outcome, as_json)
