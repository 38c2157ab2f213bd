"""``adaptforge library ...``: list, show, verify, gc, rebuild, import, export, rm."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from adaptforge.cli.app import (
    DescriptionOpt,
    JsonOpt,
    LibraryOpt,
    ModelOpt,
    OverwriteOpt,
    cli_errors,
    library_app,
    library_folder,
    one_description,
)
from adaptforge.cli.render import (
    adapter_summary,
    console,
    out,
    print_json,
)


@library_app.command("list")
def library_list(
    library: LibraryOpt,
    task: Annotated[str | None, typer.Option()] = None,
    as_json: JsonOpt = False,
    with_embeddings: Annotated[
        bool, typer.Option("--with-embeddings", help="Include description embeddings (JSON).", metavar="")
    ] = False,
) -> None:
    """List adapters (embeddings only with --with-embeddings: they are most of the catalog's bytes)."""
    from adaptforge.library import Library

    with cli_errors():
        records = Library(library, create=False).list(task=task)
    if as_json:
        rows = []
        for r in records:
            row = r.to_json()
            if not with_embeddings:
                row["embedding"] = None if r.embedding is None else f"<{r.embedding.size} floats>"
            rows.append(row)
        print_json({"adapters": rows})
        return
    columns = ("name", "kind", "method", "task", "rank", "modules", "parents")
    rows = [
        (r.name, r.kind, r.method, r.task or "-", str(r.rank), str(len(r.targets)), str(len(r.parents)))
        for r in records
    ]
    title = f"{library} ({len(records)} adapters)"
    if len(rows) > RICH_TABLE_ROWS:
        out.file.write(plain_table(title, columns, rows))
        return
    table = Table(title=title)
    for col in columns:
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*row)
    out.print(table)


RICH_TABLE_ROWS = 500  # rich lays out every cell (seconds for 10,000 rows); longer listings print plain columns


def plain_table(title: str, columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    """Left-aligned columns separated by two spaces, under a title and a header line."""
    widths = [max([len(c), *(len(r[i]) for r in rows)]) for i, c in enumerate(columns)]
    lines = [title, "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    return "\n".join(lines) + "\n"


@library_app.command("show")
def library_show(
    name: str,
    library: LibraryOpt,
    as_json: JsonOpt = False,
    with_embeddings: Annotated[
        bool, typer.Option("--with-embeddings", help="Include the description embedding (JSON).", metavar="")
    ] = False,
) -> None:
    """One adapter: task, base, rank, targets, lineage, metrics, files and integrity (exit 1 if damaged).

    Example: adaptforge library show sst2-a --library lib        (add --json for the full record)
    """
    from adaptforge.library import Library

    with cli_errors():
        lib = Library(library, create=False)
        rec = lib.get(name)
        info = rec.to_json()
        if not with_embeddings:
            info["embedding"] = None if rec.embedding is None else f"<{rec.embedding.size} floats>"
        info["lineage"] = [{"id": p.id, "name": p.name, "kind": p.kind, "method": p.method} for p in lib.lineage(name)]
        info["children"] = [c.name for c in lib.children(name)]
        info["metrics"] = [
            {"task": m.task, "split": m.split, "metric": m.metric, "value": m.value, "n": m.n}
            for m in lib.metrics(name)
        ]
        info["files"] = {p.name: p.stat().st_size for p in sorted(rec.path.iterdir()) if p.is_file()}
        problems = lib.check(rec)
        info["integrity"] = {"ok": not problems, "problems": problems}
        snaps = None if problems else lib.snapshots(rec.name)
        info["snapshots"] = None if snaps is None else {"count": len(snaps), "steps": snaps.steps}
    if as_json:
        print_json(info)
    else:
        out.print(adapter_summary(info))
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
    """Check integrity: files present, checksums, configs consistent, provenance, cached generators; report
    crash leftovers.

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
    unused = [str(p) for p in found.generators] if found is not None else []
    if as_json:
        print_json(
            {"adapters": count, "problems": problems, "leftovers": leftovers, "runs": runs, "unused_generators": unused}
        )
    else:
        for line in problems:
            out.print(Text.assemble(("damaged:", "red"), " ", line))
        for line in leftovers:
            out.print(Text.assemble(("leftover:", "yellow"), " ", line))
        for run in runs:
            out.print(f"unfinished run (resume with train --resume, or delete it): {run}")
        for run in found.live if found is not None else ():
            out.print(f"run in progress (a live train holds its lock; leave it): {run}")
        for folder in unused:
            out.print(f"unused generator (no adapter needs it; `library gc` removes it): {folder}")
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
    """Remove crash leftovers (temp folders older than --min-age, adapter folders with no catalog row) and cached
    generators no adapter needs."""
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
    description: DescriptionOpt = None,
    overwrite: OverwriteOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Import a PEFT LoRA adapter after checking it fits the base model (an adaptforge export: with its task,
    labels, description, metrics and lineage)."""
    from adaptforge.adapters import read_adapter
    from adaptforge.backbone import Backbone
    from adaptforge.embedded import SMOLLM2
    from adaptforge.library import Library, validate_name
    from adaptforge.pipelines.importing import import_peft_folder, read_export_record
    from adaptforge.tasks import load_task

    with cli_errors(), library_folder(library):
        validate_name(name)
        text = one_description(description, 1 if task_dir else 0, "--task TASK")
        task = load_task(task_dir, description=text) if task_dir else None
        read_adapter(folder)  # a folder that is no adapter is refused before the model loads
        exported = read_export_record(folder)
        if model is None and exported is not None and exported.base_model == SMOLLM2:
            model = SMOLLM2  # an export of the embedded LLM's adapter goes back onto it
        lib = Library(library)
        lib.check_free(name, overwrite)
        rec = import_peft_folder(folder, Backbone.load(model), lib, name, task, overwrite=overwrite)
    if as_json:
        print_json(rec.to_json())
    else:
        out.print(f"imported {rec.name} ({rec.id})")


@library_app.command("export")
def library_export(
    name: str,
    library: LibraryOpt,
    dest: Annotated[Path, typer.Option("--out", "-o", help="Destination folder (peft) or new file (gguf).")],
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            help="peft: a PEFT folder (PeftModel.from_pretrained); gguf: a llama.cpp LoRA file (llama-cli --lora; "
            "LLaMA-family bases).",
        ),
    ] = "peft",
) -> None:
    """Copy an adapter out as a PEFT folder (loadable by PeftModel.from_pretrained) or a llama.cpp GGUF file."""
    from adaptforge.errors import AdaptforgeError
    from adaptforge.library import Library
    from adaptforge.pipelines.exporting import export_adapter, export_gguf

    with cli_errors():
        if fmt not in ("peft", "gguf"):
            raise AdaptforgeError(f"--format must be peft or gguf, got {fmt!r}")
        lib = Library(library, create=False)
        path = export_gguf(lib, name, dest) if fmt == "gguf" else export_adapter(lib, name, dest)
    out.print(f"exported {name} to {path}")


@library_app.command("rm")
def library_rm(
    name: str,
    library: LibraryOpt,
    force: Annotated[
        bool, typer.Option("--force", help="Remove even if other adapters list it as a parent.", metavar="")
    ] = False,
) -> None:
    """Remove an adapter (its files and catalog row)."""
    from adaptforge.library import Library

    with cli_errors():
        Library(library, create=False).remove(name, force=force)
    out.print(f"removed {name}")
