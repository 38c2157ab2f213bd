"""``adaptforge sweep``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.text import Text

from adaptforge.cli.app import (
    BackendOpt,
    JsonOpt,
    LibraryOpt,
    RayAddressOpt,
    ThreadsOpt,
    WorkersOpt,
    app,
    backend_from_flags,
    cli_errors,
    library_folder,
)
from adaptforge.cli.render import console, notify, out, print_json, sweep_table

# Typer renders the epilog with rich markup: "[" is escaped so the YAML lists print.
EXAMPLES = r"""
Examples (from the repository root; the spec ships with the package, its task folders relative to it):

  adaptforge sweep src/adaptforge/data/sweeps/example.yaml --library lib
  adaptforge sweep src/adaptforge/data/sweeps/example.yaml --library lib --backend ray --workers 2
  adaptforge sweep grid.yaml --library /shared/lib --backend ray --ray-address 10.0.0.5:6379 --workers 8

example.yaml (4 cells: tasks x seeds; one rank and epoch count, options fixed):

  name: example
  train:
    tasks: \[../tasks/sst2, ../tasks/agnews]
    rank: \[4]
    seeds: \[0, 1]
    epochs: \[1]
    options: {max_train: 32, batch_size: 16, targets: \[query, value]}
    eval: {split: dev, limit: 32}

Merge and compose grids (in the same file or their own; an axis is a list, one value counts as a list of one):

  merge:                              # merges x methods x params
    merges: \[\[sst2-a, agnews-a]]      # adapters already in the library
    methods: \[task_arithmetic, ties]
    params: {ties: {density: \[0.3, 0.6]}}
    eval: {tasks: \[../tasks/sst2], split: dev}
  compose:                            # tasks x k x seeds x methods
    tasks: \[../tasks/trec_question_type]
    k: \[8, 16]
    seeds: \[0, 1]
    methods: \[lorahub]
    options: {candidates: 5}
    eval: {split: dev, limit: 64}

A re-run after a crash skips the cells already in the library. Top-level keys: name, model, train, merge, compose;
train also takes lr; merge also takes data (task folders a data-driven method fits on); compose also takes params
and options.exclude_tasks. An unknown key is an error naming its line and the closest known key.
"""


@app.command("sweep", epilog=EXAMPLES)
def sweep_cmd(
    spec: Annotated[Path, typer.Argument(help="Sweep spec (YAML): the grid of train, merge and compose cells.")],
    library: LibraryOpt,
    backend: BackendOpt = "local",
    ray_address: RayAddressOpt = None,
    workers: WorkersOpt = None,
    threads_per_worker: ThreadsOpt = None,
    as_json: JsonOpt = False,
    max_cells: Annotated[
        int | None,
        typer.Option(
            "--max-cells",
            min=1,
            help="Refuse a spec whose grid expands to more cells than this, checked before any cell is built "
            "(default 10000).",
        ),
    ] = None,
) -> None:
    """Run a grid of trainings, merges or compositions (in this process or on Ray); every cell lands in the library."""
    from adaptforge.library import Library
    from adaptforge.pipelines.sweep import SweepSpec, run_sweep

    with cli_errors():
        parsed = SweepSpec.from_yaml(spec) if max_cells is None else SweepSpec.from_yaml(spec, max_cells)
        runner = backend_from_flags(backend, ray_address, workers, threads_per_worker)
        with library_folder(library):
            lib = Library(library)

            def cell(row: Any) -> None:
                err = f": {row.error}" if row.error else ""
                notify(f"{row.stage} {row.label}: {row.status}{err}")

            notify(f"sweep {spec} on {runner.describe()}")
            outcome = run_sweep(parsed, lib, runner, on_cell=cell, notify=notify)
    summary = outcome.to_json()
    if as_json:
        print_json(summary)
    else:
        title = f"sweep {spec.name}: {summary['ran']} ran, {summary['skipped']} skipped, {summary['failed']} failed"
        out.print(sweep_table(summary["cells"], title))
    for row in outcome.failed:
        console.print(Text.assemble(("failed:", "red"), f" {row.stage} cell {row.label} ({row.key}): {row.error}"))
    if outcome.failed:
        raise typer.Exit(1)
