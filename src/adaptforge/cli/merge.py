"""``adaptforge merge``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from adaptforge.cli.app import (
    EvalDescriptionOpt,
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
)
from adaptforge.cli.render import (
    console,
    merge_table,
    notify,
    out,
    print_json,
    print_methods,
)
from adaptforge.errors import AdaptforgeError

REFACTOR_WARNING = 0.1  # relative Frobenius error above which a merge says what to do instead


EXAMPLES = r"""
Examples ($TASKS: the shipped tasks, src/adaptforge/data/tasks in a clone):

  adaptforge merge sst2-lora agnews-lora -l lib --method task_arithmetic --scaling 0.35 --out both
  adaptforge merge sst2-lora agnews-lora -l lib --method ties --density 0.2 --out both-ties \
    --eval $TASKS/sst2 --eval $TASKS/agnews
  adaptforge merge a b -l lib --out ab --eval a.csv:review:stars --eval b.csv:body:topic
  adaptforge merge --recipe merge.yaml -l lib
  adaptforge merge --list     (every method with its parameters and paper)
"""


@app.command("merge", epilog=EXAMPLES)
def merge_cmd(
    names: Annotated[list[str] | None, typer.Argument(help="Adapters to merge (names or ids), in order.")] = None,
    library: Annotated[Path | None, typer.Option("--library", "-l", help="Adapter library folder.")] = None,
    out_name: Annotated[str | None, typer.Option("--out", "-o", help="Name of the merged adapter.")] = None,
    recipe_file: Annotated[
        Path | None, typer.Option("--recipe", help="YAML recipe: method, adapters, params, out, data.")
    ] = None,
    method: Annotated[str | None, typer.Option(help="Merge method (default task_arithmetic); see --list.")] = None,
    weights: Annotated[str | None, typer.Option(help="Comma-separated weights, one per adapter.")] = None,
    density: Annotated[float | None, typer.Option(help="Fraction kept (TIES, DARE), in (0, 1].")] = None,
    scaling: Annotated[float | None, typer.Option(help="Global factor on the merged delta.")] = None,
    rank: Annotated[int | None, typer.Option(help="Output rank (SVD re-factoring, error reported).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of random methods (DARE) and data sampling.")] = None,
    param: Annotated[list[str] | None, typer.Option("--param", help="Other method parameter key=value.")] = None,
    data: Annotated[
        list[Path] | None, typer.Option("--data", help="Task folder a data-driven method fits on; repeatable.")
    ] = None,
    retain: Annotated[
        list[Path] | None, typer.Option("--retain", help="base_interp: task whose base accuracy is kept.")
    ] = None,
    model: ModelOpt = None,
    eval_dirs: Annotated[
        list[Path] | None,
        typer.Option(
            "--eval",
            help="Evaluate on this task; repeatable. TASK:TEXT_COL:LABEL_COL gives one task its own columns "
            "(the others use --text-col/--label-col).",
        ),
    ] = None,
    split: Annotated[str, typer.Option(help="Split evaluated by --eval.")] = "test",
    limit: LimitOpt = None,
    text_col: TextColOpt = "text",
    label_col: LabelColOpt = "label",
    description: EvalDescriptionOpt = None,
    dense_out: Annotated[
        Path | None, typer.Option("--dense-out", help="Also write base + merged delta as a full HF model here.")
    ] = None,
    keep_mask: Annotated[
        bool,
        typer.Option(
            "--keep-mask/--no-keep-mask",
            metavar="",
            help="--dense-out on a base adaptforge pruned: its zero weights stay zero (default), or merge plainly.",
        ),
    ] = True,
    overwrite: OverwriteOpt = False,
    list_methods: Annotated[bool, typer.Option("--list", help="List merge methods and exit.", metavar="")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Merge adapters into one (with lineage), optionally evaluate it and write a dense model."""
    from adaptforge.library import Library
    from adaptforge.merge import MERGE_METHODS
    from adaptforge.pipelines.merge import MergeRecipe, RecipeError, merge_into_library
    from adaptforge.tasks import load_tasks

    if list_methods:
        print_methods("merge method", MERGE_METHODS.items())
        return
    with cli_errors():
        flags = {"density": density, "scaling": scaling, "rank": rank, "seed": seed}
        if recipe_file is not None:
            given = [f"--{k}" for k, v in {"method": method, "weights": weights, **flags}.items() if v is not None]
            given += ["NAME..."] * bool(names) + ["--param"] * bool(param) + ["--data"] * bool(data)
            given += ["--retain"] * bool(retain)
            if given:
                raise RecipeError(
                    f"--recipe holds method, adapters, params and data; drop {', '.join(given)} "
                    "(runtime options such as --library, --eval, --dense-out stay on the command line)"
                )
            recipe = MergeRecipe.from_yaml(recipe_file)
            if out_name is not None and out_name != recipe.out:
                raise RecipeError(f"{recipe_file}: key 'out' is {recipe.out!r} but --out says {out_name!r}; give one")
        else:
            recipe = MergeRecipe.from_flags(
                adapters=names or [],
                out=out_name,
                method=method,
                weights=weights,
                density=density,
                scaling=scaling,
                rank=rank,
                seed=seed,
                params=parse_options(param or []),
                data=data or [],
                retain=retain or [],
            )
        text = one_description(description, len(eval_dirs or []), "--eval TASK")
        if library is None:
            raise AdaptforgeError("--library LIB is required: the library holding the adapters")
        lib = Library(library, create=False)
        eval_tasks = (
            load_tasks(eval_dirs, text_col=text_col, label_col=label_col, description=text) if eval_dirs else []
        )
        outcome = merge_into_library(
            recipe,
            lib,
            model=model,
            eval_tasks=eval_tasks,
            split=split,
            limit=limit,
            dense_out=dense_out,
            keep_mask=keep_mask,
            overwrite=overwrite,
            notify=notify,
        )
    summary = outcome.to_json()
    err = summary["reconstruction_error"]
    if err is not None and err["max"] > REFACTOR_WARNING:
        console.print(
            Text.assemble(
                ("warning:", "yellow"),
                f" re-factoring to rank {outcome.record.rank} loses up to {err['max']:.1%} of a module's delta "
                "(relative Frobenius norm); raise --rank, merge exactly (task_arithmetic/linear without --rank "
                "concatenate ranks), or keep the full merge with --dense-out",
            )
        )
    if as_json:
        print_json(summary)
        return
    exact = (
        "exact (rank concatenation)"
        if err is None
        else f"SVD re-factoring error (relative Frobenius norm) max {err['max']:.3g}, mean {err['mean']:.3g}"
    )
    out.print(
        f"merged {', '.join(recipe.adapters)} with {recipe.method} into {outcome.record.name} ({outcome.record.id}); "
        f"rank {outcome.record.rank}, {exact}, {summary['seconds']:.1f}s"
    )
    if outcome.dense_path is not None:
        out.print(f"dense model written to {outcome.dense_path}")
    if outcome.report is not None:
        out.print(merge_table(outcome.report, title=f"{outcome.record.name} on {split}"))
