"""``adaptforge`` command line: each verb parses its flags, calls its pipeline (:mod:`adaptforge.pipelines`) and
renders the result (:mod:`adaptforge.cli.render`); no work is done here."""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, TypeVar

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the network behind the user's back

import typer  # noqa: E402
from rich.table import Table  # noqa: E402
from rich.text import Text  # noqa: E402

from adaptforge.cli.render import (  # noqa: E402
    console,
    grid_table,
    merge_table,
    notify,
    out,
    print_methods,
    print_new_task,
    progress_bar,
)
from adaptforge.core import AdaptforgeError  # noqa: E402

app = typer.Typer(help="Adapt one foundation model to many tasks and manage the adapters.", no_args_is_help=True)
library_app = typer.Typer(help="List, show, import, export and remove adapters.", no_args_is_help=True)
app.add_typer(library_app, name="library")


T = TypeVar("T")

LibraryOpt = Annotated[Path, typer.Option("--library", "-l", help="Adapter library folder.")]
ModelOpt = Annotated[
    str | None, typer.Option("--model", "-m", help="HF model path or name (default: embedded MiniLM).")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")]
TextColOpt = Annotated[str, typer.Option("--text-col", help="Field (task folder) or column (CSV) holding the text.")]
LabelColOpt = Annotated[str, typer.Option("--label-col", help="Field (task folder) or column (CSV) holding the label.")]
LimitOpt = Annotated[int | None, typer.Option(min=1, help="Evaluate at most this many examples per task.")]


def _fail(err: Exception) -> None:
    console.print(Text.assemble(("error:", "red"), " ", str(err)))
    raise typer.Exit(2)


def required(value: T | None, flag: str) -> T:
    """Options that ``--list`` lets a command run without are checked here instead of by typer."""
    if value is None:
        raise AdaptforgeError(f"{flag} is required")
    return value


@contextmanager
def cli_errors() -> Iterator[None]:
    try:
        yield
    except AdaptforgeError as err:
        _fail(err)


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    # PEFT calls a transformers method that transformers deprecates; the warning is for PEFT's authors.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )


@app.command("train")
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
    targets: Annotated[str | None, typer.Option(help="Comma-separated module names (default per model).")] = None,
    seed: Annotated[int, typer.Option()] = 0,
    checkpoint_every: Annotated[int, typer.Option("--checkpoint-every")] = 50,
    resume: Annotated[bool, typer.Option("--resume", help="Continue a killed run of the same name.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite")] = False,
    text_col: TextColOpt = "text",
    label_col: LabelColOpt = "label",
    multitask: Annotated[bool, typer.Option("--multitask", help="One adapter on all given tasks.")] = False,
    sampler: Annotated[str, typer.Option(help="Task sampler: uniform, proportional, temperature, group_dro, mpts.")] = (
        "uniform"
    ),
    sampler_opt: Annotated[
        list[str] | None, typer.Option("--sampler-opt", help="Sampler option key=value; repeatable.")
    ] = None,
    steps: Annotated[int | None, typer.Option(help="Total steps (default: epochs over all data).")] = None,
    eval_every: Annotated[int, typer.Option("--eval-every", help="Steps between dev checks (curves).")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Train a LoRA adapter on one task (or, with --multitask, on several) and add it to the library."""
    from adaptforge.backbone import Backbone
    from adaptforge.library import Library, validate_name
    from adaptforge.pipelines.train import train_into_library
    from adaptforge.tasks import load_task
    from adaptforge.train.config import TrainConfig

    with cli_errors():
        validate_name(name)
        if len(task_dirs) > 1 and not multitask:
            raise AdaptforgeError("several tasks given: pass --multitask to train one adapter on all of them")
        tasks = [load_task(d, text_col=text_col, label_col=label_col) for d in task_dirs]
        cfg = TrainConfig(
            rank=rank,
            alpha=alpha,
            lr=lr,
            epochs=epochs,
            batch_size=batch_size,
            max_length=max_length,
            max_train=max_train,
            seed=seed,
            checkpoint_every=checkpoint_every,
            targets=tuple(t.strip() for t in targets.split(",")) if targets else None,
            sampler=sampler,
            sampler_options=parse_options(sampler_opt or []),
            steps=steps,
            eval_every=eval_every,
        )
        lib = Library(library)
        backbone = Backbone.load(model)
        with progress_bar(f"train {name}") as bar:

            def step(done: int, total: int, loss: float) -> None:
                bar.update(0, completed=done, total=total, info=f"loss {loss:.3f}")

            trained = train_into_library(
                tasks, backbone, lib, name, cfg, resume=resume, progress=step, overwrite=overwrite
            )
    summary = {
        "adapter": trained.record.name,
        "id": trained.record.id,
        "tasks": [t.name for t in tasks],
        "n_train": trained.result.n_train,
        "examples_per_second": round(trained.result.examples_per_second, 1),
        "eval": [e.to_json() for e in trained.evals],
    }
    if as_json:
        out.print_json(json.dumps(summary))
    else:
        for e in trained.evals:
            out.print(f"{name} on {e.task}/{e.split}: accuracy {e.accuracy:.3f}  macro-F1 {e.macro_f1:.3f}  (n={e.n})")
        out.print(f"added {trained.record.name} ({trained.record.id}) to {lib.root}")


def parse_options(pairs: list[str]) -> dict[str, object]:
    """``key=value`` strings to a dict; values parsed as JSON where they can be (numbers, true, lists)."""
    options: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise AdaptforgeError(f"option {pair!r}: expected key=value")
        try:
            options[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip()] = value
    return options


@app.command("eval")
def eval_cmd(
    task_dirs: Annotated[list[Path], typer.Argument(help="Task folders (or .json/.csv files).")],
    library: Annotated[Path | None, typer.Option("--library", "-l")] = None,
    adapter: Annotated[list[str] | None, typer.Option("--adapter", "-a", help="Adapter name; repeatable.")] = None,
    all_adapters: Annotated[bool, typer.Option("--all-adapters", help="Every adapter in the library.")] = False,
    zero_shot: Annotated[bool, typer.Option("--zero-shot", help="Also the base model without adapter.")] = False,
    split: Annotated[str, typer.Option()] = "test",
    limit: LimitOpt = None,
    model: ModelOpt = None,
    text_col: TextColOpt = "text",
    label_col: LabelColOpt = "label",
    as_json: JsonOpt = False,
) -> None:
    """Evaluate adapters and/or zero-shot on tasks: accuracy and macro-F1 per cell."""
    from adaptforge.backbone import Backbone
    from adaptforge.evaluate import check_request
    from adaptforge.library import Library
    from adaptforge.pipelines.evaluate import evaluate_grid
    from adaptforge.tasks import load_tasks

    with cli_errors():
        tasks = load_tasks(task_dirs, text_col=text_col, label_col=label_col)
        check_request(tasks, split, limit)
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
        if model is None and names:
            model = lib.get(names[0]).base_model  # adapters know their base
        backbone = Backbone.load(model)
        n_cells = len(tasks) * (len(names) + int(zero_shot))
        with progress_bar("eval", total=n_cells) as bar:

            def cell(task: str, name: str | None) -> None:
                bar.update(0, advance=1, info=f"{name or 'zero-shot'} on {task}")

            results = evaluate_grid(
                tasks, backbone, lib, names, zero_shot=zero_shot, split=split, limit=limit, on_cell=cell
            )
    if as_json:
        keys = ("task", "adapter", "accuracy", "macro_f1", "n")
        out.print_json(json.dumps({"results": [{k: r.to_json()[k] for k in keys} for r in results]}))
        return
    out.print(grid_table(results, title=f"{split} accuracy / macro-F1"))


@library_app.command("list")
def library_list(
    library: LibraryOpt, task: Annotated[str | None, typer.Option()] = None, as_json: JsonOpt = False
) -> None:
    """List adapters."""
    from adaptforge.library import Library

    with cli_errors():
        records = Library(library, create=False).list(task=task)
    if as_json:
        out.print_json(json.dumps({"adapters": [r.to_json() for r in records]}))
        return
    table = Table(title=str(library))
    for col in ("name", "id", "task", "method", "rank", "modules", "parents"):
        table.add_column(col)
    for r in records:
        table.add_row(r.name, r.id, r.task or "-", r.method, str(r.rank), str(len(r.targets)), str(len(r.parents)))
    out.print(table)


@library_app.command("show")
def library_show(name: str, library: LibraryOpt, as_json: JsonOpt = False) -> None:
    """One adapter's record, lineage, metrics and integrity (a damaged adapter says so and exits 1)."""
    from adaptforge.library import Library

    with cli_errors():
        lib = Library(library, create=False)
        rec = lib.get(name)
        info = rec.to_json()
        info["lineage"] = [p.name for p in lib.lineage(name)]
        info["metrics"] = [
            {"task": m.task, "split": m.split, "metric": m.metric, "value": m.value, "n": m.n}
            for m in lib.metrics(name)
        ]
        problems = lib.check(rec)
        info["integrity"] = {"ok": not problems, "problems": problems}
    if as_json:
        out.print_json(json.dumps(info))
    else:
        info.get("recipe", {}).pop("history", None)
        out.print_json(json.dumps(info))
        for problem in problems:
            console.print(Text.assemble(("damaged:", "red"), " ", problem))
    if problems:
        raise typer.Exit(1)


@library_app.command("verify")
def library_verify(
    library: LibraryOpt,
    name: Annotated[str | None, typer.Argument(help="One adapter (default: all, plus crash leftovers).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Check integrity: files present, checksums, configs consistent, provenance; report crash leftovers.

    Exits 1 when anything is damaged. Example: adaptforge library verify --library lib
    """
    from adaptforge.library import Library

    with cli_errors():
        lib = Library(library, create=False)
        problems = lib.verify(name)
        found = lib.leftovers() if name is None else None
        count = 1 if name is not None else len(lib)
    leftovers = found.messages() if found is not None else []
    runs = [str(p) for p in found.runs] if found is not None else []
    if as_json:
        out.print_json(json.dumps({"adapters": count, "problems": problems, "leftovers": leftovers, "runs": runs}))
    else:
        for line in problems:
            out.print(Text.assemble(("damaged:", "red"), " ", line))
        for line in leftovers:
            out.print(Text.assemble(("leftover:", "yellow"), " ", line))
        for run in runs:
            out.print(f"unfinished run (resume with train --resume, or delete it): {run}")
        out.print(f"{count} adapter(s) checked, {len(problems)} problem(s), {len(leftovers)} leftover(s)")
    if problems or leftovers:
        raise typer.Exit(1)


@library_app.command("gc")
def library_gc(
    library: LibraryOpt,
    min_age: Annotated[
        float, typer.Option("--min-age", min=0, help="Seconds; younger temp folders may be a write in progress.")
    ] = 3600.0,
) -> None:
    """Remove crash leftovers: temp folders older than --min-age and adapter folders with no catalog row."""
    from adaptforge.library import Library

    with cli_errors():
        removed = Library(library, create=False).gc(min_age=min_age)
    for path in removed:
        out.print(f"removed {path}")
    out.print(f"{len(removed)} leftover(s) removed")


@library_app.command("rebuild")
def library_rebuild(library: LibraryOpt) -> None:
    """Re-create a missing or damaged catalog from the adapter folders (the damaged file is kept aside)."""
    from adaptforge.library import rebuild_catalog

    with cli_errors():
        report = rebuild_catalog(library)
    for path in report.moved_aside:
        out.print(f"kept the damaged catalog file as {path}")
    for line in report.skipped:
        out.print(Text.assemble(("not recovered:", "yellow"), " ", line))
    out.print(
        f"rebuilt the catalog with {len(report.recovered)} adapter(s); metrics are not recovered (run eval again)"
    )


@library_app.command("import")
def library_import(
    folder: Annotated[Path, typer.Argument(help="PEFT LoRA folder (adapter_config.json + safetensors).")],
    library: LibraryOpt,
    name: Annotated[str, typer.Option("--name")],
    model: ModelOpt = None,
    task_dir: Annotated[Path | None, typer.Option("--task", help="Task the adapter was trained for.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an adapter of the same name.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Import a PEFT LoRA adapter after checking it fits the base model."""
    from adaptforge.backbone import Backbone
    from adaptforge.library import Library, validate_name
    from adaptforge.pipelines.importing import import_peft_folder
    from adaptforge.tasks import load_task

    with cli_errors():
        validate_name(name)
        task = load_task(task_dir) if task_dir else None
        rec = import_peft_folder(folder, Backbone.load(model), Library(library), name, task, overwrite=overwrite)
    if as_json:
        out.print_json(json.dumps(rec.to_json()))
    else:
        out.print(f"imported {rec.name} ({rec.id})")


@library_app.command("export")
def library_export(
    name: str, library: LibraryOpt, dest: Annotated[Path, typer.Option("--out", "-o", help="Destination folder.")]
) -> None:
    """Copy an adapter out as a PEFT folder (loadable by PeftModel.from_pretrained)."""
    from adaptforge.library import Library

    with cli_errors():
        path = Library(library, create=False).export(name, dest)
    out.print(f"exported {name} to {path}")


@library_app.command("rm")
def library_rm(
    name: str,
    library: LibraryOpt,
    force: Annotated[bool, typer.Option("--force", help="Remove even if other adapters list it as a parent.")] = False,
) -> None:
    """Remove an adapter (its files and catalog row)."""
    from adaptforge.library import Library

    with cli_errors():
        Library(library, create=False).remove(name, force=force)
    out.print(f"removed {name}")


@app.command("demo")
def demo_cmd(
    out_dir: Annotated[Path, typer.Option("--out", help="Where the library and summary go.")] = Path("out/demo"),
    max_train: Annotated[int | None, typer.Option("--max-train")] = None,
    epochs: Annotated[int | None, typer.Option()] = None,
) -> None:
    """End to end on the embedded model: zero-shot vs LoRA on the shipped tasks."""
    from adaptforge.demo import run_demo

    with cli_errors():
        summary = run_demo(out_dir, console=out, max_train=max_train, epochs=epochs)
    out.print(f"summary written to {summary}")


@app.command("merge")
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
    eval_dirs: Annotated[list[Path] | None, typer.Option("--eval", help="Evaluate on this task; repeatable.")] = None,
    split: Annotated[str, typer.Option(help="Split evaluated by --eval.")] = "test",
    limit: LimitOpt = None,
    text_col: TextColOpt = "text",
    label_col: LabelColOpt = "label",
    dense_out: Annotated[
        Path | None, typer.Option("--dense-out", help="Also write base + merged delta as a full HF model here.")
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite")] = False,
    list_methods: Annotated[bool, typer.Option("--list", help="List merge methods and exit.")] = False,
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
        if library is None:
            raise AdaptforgeError("--library LIB is required: the library holding the adapters")
        lib = Library(library, create=False)
        eval_tasks = load_tasks(eval_dirs, text_col=text_col, label_col=label_col) if eval_dirs else []
        outcome = merge_into_library(
            recipe,
            lib,
            model=model,
            eval_tasks=eval_tasks,
            split=split,
            limit=limit,
            dense_out=dense_out,
            overwrite=overwrite,
            notify=notify,
        )
    summary = outcome.to_json()
    if as_json:
        out.print_json(json.dumps(summary, default=str))
        return
    err = summary["reconstruction_error"]
    exact = "exact" if err is None else f"SVD re-factoring error max {err['max']:.3g}, mean {err['mean']:.3g}"
    out.print(
        f"merged {', '.join(recipe.adapters)} with {recipe.method} into {outcome.record.name} ({outcome.record.id}); "
        f"rank {outcome.record.rank}, {exact}, {summary['seconds']:.1f}s"
    )
    if outcome.dense_path is not None:
        out.print(f"dense model written to {outcome.dense_path}")
    if outcome.report is not None:
        out.print(merge_table(outcome.report, title=f"{outcome.record.name} on {split}"))


@app.command("compose")
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
    no_eval: Annotated[bool, typer.Option("--no-eval", help="Skip the zero-shot vs composed evaluation.")] = False,
    limit: LimitOpt = None,
    text_col: TextColOpt = "text",
    label_col: LabelColOpt = "label",
    overwrite: Annotated[bool, typer.Option("--overwrite")] = False,
    list_methods: Annotated[bool, typer.Option("--list", help="List compose methods and exit.")] = False,
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
        task = load_task(task_dir, text_col=text_col, label_col=label_col)
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


@app.command("generate")
def generate_cmd(
    library: LibraryOpt,
    out_name: Annotated[str, typer.Option("--out", "-o", help="Name of the generated adapter.")],
    description: Annotated[str, typer.Option(help="The new task's description (instruction).")],
    labels: Annotated[str, typer.Option(help="Comma-separated label strings, in order.")],
    task_name: Annotated[str | None, typer.Option("--task", help="Task name recorded (default: --out).")] = None,
    seed: Annotated[int | None, typer.Option(help="Sample the generator with this seed (default: its mean).")] = None,
    model: ModelOpt = None,
    eval_dir: Annotated[Path | None, typer.Option("--eval", help="Task folder to compare with zero-shot.")] = None,
    split: Annotated[str, typer.Option(help="Split evaluated by --eval.")] = "test",
    limit: LimitOpt = None,
    text_col: TextColOpt = "text",
    label_col: LabelColOpt = "label",
    overwrite: Annotated[bool, typer.Option("--overwrite")] = False,
    as_json: JsonOpt = False,
) -> None:
    """An adapter for a task never trained on, from its description and labels (generator over the library)."""
    from adaptforge.library import Library
    from adaptforge.pipelines.generate import generate_into_library
    from adaptforge.tasks import load_task

    with cli_errors():
        names = [x.strip() for x in labels.split(",")]
        if len(names) < 2 or any(not x for x in names):
            raise AdaptforgeError(f"--labels {labels!r}: expected at least two comma-separated non-empty labels")
        lib = Library(library, create=False)
        outcome = generate_into_library(
            description,
            names,
            lib,
            out_name,
            task_name=task_name,
            seed=seed,
            model=model,
            eval_task=load_task(eval_dir, text_col=text_col, label_col=label_col) if eval_dir is not None else None,
            eval_split=split,
            limit=limit,
            overwrite=overwrite,
            notify=notify,
        )
    print_new_task(outcome, as_json)
