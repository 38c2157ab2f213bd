"""``adaptforge tta``."""

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
from adaptforge.cli.render import documents_table, notify, out, print_json, print_methods, tta_table


@app.command("tta")
def tta_cmd(
    task_dir: Annotated[
        Path | None,
        typer.Argument(
            help="The task whose inputs are adapted on (folder, SNI .json or .csv), or documents (.txt, .jsonl of "
            '{"text"}) whose suffix a causal --model scores after adapting on the prefix.'
        ),
    ] = None,
    library: Annotated[Path | None, typer.Option("--library", "-l", help="Adapter library folder.")] = None,
    adapter: Annotated[str | None, typer.Option("--adapter", "-a", help="The adapter to adapt (name or id).")] = None,
    method: Annotated[
        str | None,
        typer.Option(help="input-lora, tent, eata, sar, pseudo, ttt-nn, atlas-unsup, em-prior (see --list)."),
    ] = None,
    granularity: Annotated[
        str | None, typer.Option(help="input, batch or stream (default: the method's own, see --list).")
    ] = None,
    steps: Annotated[int | None, typer.Option(help="Gradient steps per input, batch or stream batch.")] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate of what the method updates.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Inputs per batch (batch and stream).")] = 16,
    param: Annotated[list[str] | None, typer.Option("--param", help="Other method parameter key=value.")] = None,
    pool: Annotated[
        list[Path] | None,
        typer.Option(
            "--pool",
            help="ttt-nn: task whose train split neighbours come from; em-prior: the adapter's task; repeatable.",
        ),
    ] = None,
    split: Annotated[str, typer.Option(help="Split whose inputs are adapted on and scored.")] = "test",
    prefix_fraction: Annotated[
        float, typer.Option("--prefix-fraction", help="Documents: the known share of each document (0 to 1).")
    ] = 0.5,
    max_tokens: Annotated[
        int, typer.Option("--max-tokens", help="Documents: each is cut to its first this many tokens.")
    ] = 512,
    limit: LimitOpt = None,
    save: Annotated[
        str | None, typer.Option("--save", help="Store the stream-adapted adapter under this name (with lineage).")
    ] = None,
    model: ModelOpt = None,
    text_col: TextColOpt = "text",
    label_col: LabelColOpt = "label",
    description: DescriptionOpt = None,
    overwrite: OverwriteOpt = False,
    list_methods: Annotated[bool, typer.Option("--list", help="List test-time methods and exit.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Adapt an adapter to a task's unlabelled inputs at test time; accuracy before and after, cost, resets.

    Example: adaptforge tta tasks/customer_review --library lib --adapter movie_review --method tent

    On documents (input-lora, dynamic-eval): adaptforge tta docs.jsonl --model smollm2 --method input-lora
    """
    from adaptforge.core import AdaptforgeError
    from adaptforge.library import Library
    from adaptforge.pipelines.tta import tta_on_task
    from adaptforge.pipelines.tta_documents import tta_on_documents
    from adaptforge.tasks import is_text_file, load_task, load_tasks
    from adaptforge.tta import TTA_METHODS

    if list_methods:
        from adaptforge.tta.document import DOCUMENT_METHODS

        print_methods("tta method", TTA_METHODS.items())
        out.print("on documents (a .txt or .jsonl of texts, causal --model):", style="bold")
        print_methods("document method", DOCUMENT_METHODS.items())
        return
    if task_dir is not None and is_text_file(task_dir):
        with cli_errors():
            for flag, given in (("--library", library), ("--adapter", adapter), ("--save", save), ("--pool", pool)):
                if given:
                    raise AdaptforgeError(f"{flag}: tta on documents adapts the base model (--model) alone")
            if granularity not in (None, "input"):
                raise AdaptforgeError("--granularity: tta on documents adapts on each document alone ('input')")
            documents = tta_on_documents(
                task_dir,
                method=required(method, "--method"),
                params=parse_options(param or []),
                steps=steps,
                lr=lr,
                prefix_fraction=prefix_fraction,
                max_tokens=max_tokens,
                limit=limit,
                model=model,
                notify=notify,
            )
        if as_json:
            print_json(documents.to_json())
            return
        out.print(documents_table(documents))
        return
    with cli_errors():
        task_dir, library, adapter, method = (
            required(task_dir, "TASK_DIR"),
            required(library, "--library"),
            required(adapter, "--adapter"),
            required(method, "--method"),
        )
        task = load_task(task_dir, text_col=text_col, label_col=label_col, description=one_description(description, 1))
        outcome = tta_on_task(
            task,
            Library(library, create=False),
            adapter,
            method=method,
            params=parse_options(param or []),
            granularity=granularity,
            steps=steps,
            lr=lr,
            batch_size=batch_size,
            split=split,
            limit=limit,
            pool=load_tasks(pool) if pool else (),
            save=save,
            overwrite=overwrite,
            model=model,
            notify=notify,
        )
    if as_json:
        print_json(outcome.to_json())
        return
    out.print(tta_table(outcome))
