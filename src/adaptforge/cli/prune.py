"""``adaptforge prune``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from adaptforge.cli.app import (
    DomainDescriptionOpt,
    JsonOpt,
    LabelColOpt,
    LimitOpt,
    ModelOpt,
    TextColOpt,
    app,
    cli_errors,
    one_description,
    parse_options,
    required,
)
from adaptforge.cli.render import notify, out, print_json, print_methods, prune_table
from adaptforge.errors import AdaptforgeError


@app.command("prune")
def prune_cmd(
    method: Annotated[
        str | None, typer.Option(help="Prune method: magnitude, wanda, sparsegpt, dpruner (see --list).")
    ] = None,
    sparsity: Annotated[
        str | None, typer.Option(help="Fraction of weights removed, e.g. 0.5; or one value per block, comma-separated.")
    ] = None,
    pattern: Annotated[str | None, typer.Option(help="unstructured, 2:4, 4:8 or ffn (whole neurons).")] = None,
    domain_dir: Annotated[
        Path | None,
        typer.Option(
            "--domain",
            help="The domain: a task folder (calibration: train) or, for a causal LM, a .txt / .jsonl text corpus.",
        ),
    ] = None,
    general: Annotated[
        list[Path] | None,
        typer.Option(
            "--general", help="General calibration: task folder, .txt or .jsonl; repeatable (default: shipped)."
        ),
    ] = None,
    calibration_size: Annotated[
        int | None, typer.Option("--calibration-size", min=1, help="Calibration texts.")
    ] = None,
    param: Annotated[list[str] | None, typer.Option("--param", help="Other method parameter key=value.")] = None,
    model: ModelOpt = None,
    eval_dirs: Annotated[
        list[Path] | None,
        typer.Option("--eval", help="Also compare zero-shot dense vs pruned on this task; repeatable."),
    ] = None,
    split: Annotated[str, typer.Option(help="Split of the zero-shot comparison.")] = "dev",
    limit: LimitOpt = None,
    text_col: TextColOpt = "text",
    label_col: LabelColOpt = "label",
    description: DomainDescriptionOpt = None,
    out_dir: Annotated[Path | None, typer.Option("--out", "-o", help="New folder for the pruned model.")] = None,
    compact: Annotated[
        bool,
        typer.Option(
            "--compact",
            help="Also write model.packed.safetensors (non-zero values + bitmask), smaller on disk; "
            "adaptforge loads a folder holding only it.",
            metavar="",
        ),
    ] = False,
    list_methods: Annotated[bool, typer.Option("--list", help="List prune methods and exit.", metavar="")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Prune the base model for a domain; writes a Hugging Face folder any --model option accepts.

    Example: adaptforge prune --method wanda --sparsity 0.5 --domain tasks/sst2 --out pruned/sst2-wanda
    """
    from adaptforge.pipelines.prune import prune_model
    from adaptforge.prune import PRUNE_METHODS
    from adaptforge.prune.calibration import read_corpus_text
    from adaptforge.tasks import is_text_file, load_task, load_tasks

    if list_methods:
        print_methods("prune method", PRUNE_METHODS.items())
        return
    with cli_errors():
        domain_path = required(domain_dir, "--domain")
        if is_text_file(domain_path):
            domain = read_corpus_text(domain_path)
        else:
            domain = load_task(
                domain_path,
                text_col=text_col,
                label_col=label_col,
                description=one_description(description, 1, "--domain TASK"),
            )
        params: dict[str, object] = parse_options(param or [])
        if sparsity is not None:
            try:
                values = [float(v) for v in sparsity.split(",")]
            except ValueError:
                raise AdaptforgeError(
                    f"--sparsity {sparsity!r}: expected a number or comma-separated numbers"
                ) from None
            params["sparsity"] = values[0] if len(values) == 1 else values
        if pattern is not None:
            params["pattern"] = pattern
        if calibration_size is not None:
            params["calibration_size"] = calibration_size
        outcome = prune_model(
            required(method, "--method"),
            domain,
            required(out_dir, "--out"),
            params=params,
            general=general or [],
            model=model,
            eval_tasks=load_tasks(eval_dirs, text_col=text_col, label_col=label_col) if eval_dirs else [],
            split=split,
            limit=limit,
            compact=compact,
            notify=notify,
        )
    if as_json:
        print_json(outcome.to_json())
        return
    out.print(prune_table(outcome))
