"""``adaptforge compose``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from adaptforge.cli.app import (
    DescriptionOpt,
    JsonOpt,
    LabelColOpt,
    LimitOpt,
    ModelOpt,
    OverwriteOpt,
    TextColOpt,
    app,
    cli_errors,
    one_description,
    parse_options,
    required,
)
from adaptforge.cli.render import (
    notify,
    print_methods,
    print_new_task,
)

EXAMPLES = r"""
Examples ($TASKS: the shipped tasks, src/adaptforge/data/tasks in a clone):

  adaptforge compose $TASKS/tweet_offensive -l lib --shots 16 --method tuned --out offensive
  adaptforge compose reviews.csv --text-col review --label-col sentiment -l lib -k 16 --method lorahub --out reviews-hub
  adaptforge compose $TASKS/tweet_offensive -l lib --shots 0 --method retrieval --out offensive-nearest
  adaptforge compose --list
"""


@app.command("compose", epilog=EXAMPLES)
def compose_cmd(
    task_dir: Annotated[
        Path | None, typer.Argument(help="The new task: folder, SNI .json or .csv (description, labels, shots).")
    ] = None,
    library: Annotated[Path | None, typer.Option("--library", "-l", help="Adapter library folder.")] = None,
    out_name: Annotated[str | None, typer.Option("--out", "-o", help="Name of the composed adapter.")] = None,
    method: Annotated[str, typer.Option(help="lorahub | atlas | tuned | arrow | retrieval (see --list).")] = "lorahub",
    shots: Annotated[int, typer.Option("--shots", "-k", help="Labelled train examples used (0: none).")] = 16,
    candidates: Annotated[int, typer.Option(help="Library adapters retrieved as candidates.")] = 20,
    seed: Annotated[int, typer.Option(help="Seed of the shot sample and the method.")] = 0,
    param: Annotated[list[str] | None, typer.Option("--param", help="Method parameter key=value.")] = None,
    model: ModelOpt = None,
    split: Annotated[str, typer.Option(help="Split on which zero-shot and the result are compared.")] = "test",
    no_eval: Annotated[
        bool, typer.Option("--no-eval", help="Skip the zero-shot vs composed evaluation.", metavar="")
    ] = False,
    limit: LimitOpt = None,
    text_col: TextColOpt = "text",
    label_col: LabelColOpt = "label",
    description: DescriptionOpt = None,
    overwrite: OverwriteOpt = False,
    list_methods: Annotated[bool, typer.Option("--list", help="List compose methods and exit.", metavar="")] = False,
    as_json: JsonOpt = False,
) -> None:
    """An adapter for a new task from k labelled examples and the library's adapters (with lineage)."""
    from adaptforge.compose import COMPOSERS
    from adaptforge.library import Library
    from adaptforge.pipelines.compose import compose_into_library
    from adaptforge.tasks import load_task

    if list_methods:
        print_methods("composer", COMPOSERS.items())
        return
    with cli_errors():
        task_dir, library, out_name = (
            required(task_dir, "TASK_DIR"),
            required(library, "--library"),
            required(out_name, "--out"),
        )
        task = load_task(task_dir, text_col=text_col, label_col=label_col, description=one_description(description, 1))
        lib = Library(library, create=False)
        outcome = compose_into_library(
            task,
            lib,
            out_name,
            method=method,
            shots=shots,
            candidates=candidates,
            seed=seed,
            params=parse_options(param or []),
            model=model,
            eval_split=None if no_eval else split,
            limit=limit,
            overwrite=overwrite,
            notify=notify,
        )
    print_new_task(outcome, as_json)
