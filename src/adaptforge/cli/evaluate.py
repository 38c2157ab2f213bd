"""``adaptforge eval``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from adaptforge.cli.app import (
    BackendOpt,
    DescriptionOpt,
    JsonOpt,
    LabelColOpt,
    LimitOpt,
    MaxNewTokensOpt,
    ModelOpt,
    RayAddressOpt,
    TextColOpt,
    ThreadsOpt,
    WorkersOpt,
    app,
    backend_from_flags,
    cli_errors,
    one_description,
)
from adaptforge.cli.render import (
    console,
    grid_table,
    notify,
    out,
    perplexity_table,
    print_json,
    progress_bar,
)
from adaptforge.errors import AdaptforgeError

EXAMPLES = r"""
Examples ($TASKS: the shipped tasks, src/adaptforge/data/tasks in a clone):

  adaptforge eval $TASKS/sst2 $TASKS/agnews -l lib --all-adapters --zero-shot
  adaptforge eval $TASKS/sst2 -l lib -a sst2-lora -a merged --limit 100 --json
  adaptforge eval reviews.csv --text-col review --label-col sentiment -l lib -a reviews --split test
"""


@app.command("eval", epilog=EXAMPLES)
def eval_cmd(
    task_dirs: Annotated[
        list[Path],
        typer.Argument(
            help="Task folders (or .json/.csv files; TASK:TEXT_COL:LABEL_COL gives one its own columns); with "
            "--metric perplexity, .txt / .jsonl corpora."
        ),
    ],
    library: Annotated[Path | None, typer.Option("--library", "-l")] = None,
    adapter: Annotated[list[str] | None, typer.Option("--adapter", "-a", help="Adapter name; repeatable.")] = None,
    all_adapters: Annotated[
        bool, typer.Option("--all-adapters", help="Every adapter in the library.", metavar="")
    ] = False,
    zero_shot: Annotated[
        bool, typer.Option("--zero-shot", help="Also the base model without adapter.", metavar="")
    ] = False,
    split: Annotated[str, typer.Option()] = "test",
    limit: LimitOpt = None,
    model: ModelOpt = None,
    text_col: TextColOpt = "text",
    label_col: LabelColOpt = "label",
    description: DescriptionOpt = None,
    as_json: JsonOpt = False,
    backend: BackendOpt = "local",
    ray_address: RayAddressOpt = None,
    workers: WorkersOpt = None,
    threads_per_worker: ThreadsOpt = None,
    max_new_tokens: MaxNewTokensOpt = 64,
    metric: Annotated[
        str,
        typer.Option(
            "--metric",
            help="task: each task's own metrics; perplexity: a causal model's perplexity on plain-text corpora.",
        ),
    ] = "task",
    context: Annotated[int, typer.Option(min=2, help="perplexity: tokens per window.")] = 256,
    stride: Annotated[int, typer.Option(min=1, help="perplexity: tokens between window starts (< --context).")] = 128,
) -> None:
    """Evaluate adapters and/or zero-shot on tasks: accuracy and macro-F1 per cell; on a generation task, greedy
    answers scored by exact match and ROUGE-L, and the response loss (mean NLL per token).

    With --backend ray the cells run as Ray tasks on actors that each load the base model once (the same numbers
    as in this process); the driver records the results in the library.

    With --metric perplexity the arguments are corpora (a .txt, one text a line, or a .jsonl of {"text": ...}) and
    --model any causal model (smollm2, a pruned folder): each text is read in windows of --context tokens that
    start every --stride tokens, every token after a text's first is predicted once, and the perplexity is exp of
    the mean negative log-likelihood over all of them. --limit: the first texts of each corpus.
    """
    from adaptforge.evaluate import check_request
    from adaptforge.library import Library
    from adaptforge.pipelines.evaluate import evaluate_adapters
    from adaptforge.tasks import load_tasks

    if metric not in ("task", "perplexity"):
        with cli_errors():
            raise AdaptforgeError(f"--metric {metric!r}: expected task or perplexity")
    if metric == "perplexity":
        _perplexity(task_dirs, model, context, stride, limit, as_json, bool(adapter or all_adapters or library))
        return
    with cli_errors():
        text = one_description(description, len(task_dirs), "TASK_DIRS")
        tasks = load_tasks(task_dirs, text_col=text_col, label_col=label_col, description=text)
        check_request(tasks, split, limit)
        runner = None
        if backend != "local" or ray_address is not None or workers is not None or threads_per_worker is not None:
            runner = backend_from_flags(backend, ray_address, workers, threads_per_worker)
        lib = Library(library, create=False) if library else None
        names = list(adapter or [])
        if all_adapters:
            if lib is None:
                raise AdaptforgeError("--all-adapters needs --library")
            names += [r.name for r in lib.list() if r.name not in names]
        if names and lib is None:
            raise AdaptforgeError("--adapter needs --library")
        if not names:
            zero_shot = True
        n_cells = len(tasks) * (len(names) + int(zero_shot))
        with progress_bar("eval", total=n_cells) as bar:

            def cell(task: str, name: str | None) -> None:
                bar.update(0, advance=1, info=f"{name or 'zero-shot'} on {task}")

            grid = evaluate_adapters(
                tasks,
                lib,
                names,
                zero_shot=zero_shot,
                model=model,
                split=split,
                limit=limit,
                on_cell=cell,
                backend=runner,
                max_new_tokens=max_new_tokens,
            )
    results = grid.results
    for line in grid.skipped:
        console.print(Text.assemble(("skipped:", "yellow"), " ", line))
    if not results:  # every adapter asked for was skipped and no zero-shot row was asked for
        with cli_errors():
            raise AdaptforgeError(
                "nothing was evaluated: every adapter asked for was skipped (above); evaluate them on the base "
                "they were made on (drop --model), or add --zero-shot for the base alone"
            )
    if as_json:
        rows = [{k: r.to_json()[k] for k in ("task", "adapter", "split", "n", *r.metric_values())} for r in results]
        print_json({"results": rows, "skipped": grid.skipped})
        return
    kinds = {r.primary_metric for r in results}
    what = " | ".join(
        name for metric, name in (("accuracy", "accuracy / macro-F1"), ("exact_match", "exact match / ROUGE-L"))
        if metric in kinds
    )  # fmt: skip
    out.print(grid_table(results, title=f"{split} {what}"))


def _perplexity(
    corpora: list[Path], model: str | None, context: int, stride: int, limit: int | None, as_json: bool, adapters: bool
) -> None:
    from adaptforge.pipelines.evaluate import evaluate_corpora

    with cli_errors():
        if adapters:
            raise AdaptforgeError(
                "--metric perplexity scores a model (--model, e.g. a pruned folder), not library adapters"
            )
        rows = evaluate_corpora(corpora, model=model, context=context, stride=stride, limit=limit, notify=notify)
    if as_json:
        print_json({"results": [r.to_json() for r in rows]})
        return
    out.print(perplexity_table(rows))
