"""``adaptforge predict``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from adaptforge.cli.app import LibraryOpt, MaxNewTokensOpt, ModelOpt, app, cli_errors, one_description
from adaptforge.cli.render import notify, out


@app.command("predict")
def predict_cmd(
    inputs: Annotated[
        Path,
        typer.Argument(
            help="Task folder/.json/.csv (its --split), .jsonl with 'text', or .txt; a generation task or a .jsonl "
            "with 'prompt' is answered (the prompt as the user turn, exactly as given unless --description)."
        ),
    ],
    library: LibraryOpt,
    adapter: Annotated[str, typer.Option("--adapter", "-a", help="Adapter name or id.")],
    out_file: Annotated[Path | None, typer.Option("--out", "-o", help="JSONL file (default: stdout).")] = None,
    split: Annotated[str, typer.Option(help="Split of a task input.")] = "test",
    labels: Annotated[
        str | None, typer.Option(help="Comma-separated labels (default: the task's or adapter's).")
    ] = None,
    description: Annotated[
        str | None,
        typer.Option(help="Task instruction; wins over a task input's own (default: the task's or adapter's)."),
    ] = None,
    model: ModelOpt = None,
    max_new_tokens: MaxNewTokensOpt = 64,
) -> None:
    """One prediction per input (label and scores) as JSON lines, with an adapter from the library; on a generation
    task or prompts, one greedy answer ({"prompt", "output"}, plus "gold" for a task).

    Example: adaptforge predict reviews.jsonl --library lib --adapter sst2-a --out predictions.jsonl
    """
    from adaptforge.durable import check_out_file
    from adaptforge.library import Library
    from adaptforge.pipelines.predict import predict, write_predictions

    with cli_errors():
        if out_file is not None:
            out_file = check_out_file(out_file, (inputs,))
        names = [x.strip() for x in labels.split(",")] if labels else None
        rows = predict(
            inputs,
            Library(library, create=False),
            adapter,
            split=split,
            labels=names,
            description=one_description(description, 1),
            model=model,
            notify=notify,
            max_new_tokens=max_new_tokens,
        )
        if out_file is None:
            for row in rows:
                out.print(json.dumps(row.to_json(), ensure_ascii=False), markup=False, highlight=False, soft_wrap=True)
            return
        count, correct = write_predictions(rows, out_file)
    gold = (
        f"; accuracy (answers: exact match) against the task's gold {correct / count:.3f}" if count and correct else ""
    )
    notify(f"wrote {count} predictions to {out_file}{gold}")
