"""``adaptforge report``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from adaptforge.cli.app import (
    JsonOpt,
    LibraryOpt,
    app,
    cli_errors,
)
from adaptforge.cli.render import (
    notify,
    out,
    print_json,
)


@app.command("report")
def report_cmd(
    library: LibraryOpt,
    out_path: Annotated[
        Path, typer.Option("--out", "-o", help="HTML file to write (replaced atomically; its folder must exist).")
    ],
    bench: Annotated[
        Path | None, typer.Option("--bench", help="Folder of benchmark result JSON files to include.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """One self-contained HTML page of what the library knows: the adapters x tasks heatmap, merges, composed
    and generated adapters, training curves, lineage, sizes and checksums. Opens offline.

    Example: adaptforge report --library lib --bench benchmarks/results --out report.html
    """
    from adaptforge.pipelines.report import ReportConfig, write_report

    with cli_errors():
        outcome = write_report(ReportConfig(library=library, out=out_path, bench=bench), notify=notify)
    if as_json:
        summary = {
            "path": str(outcome.path),
            "adapters": outcome.adapters,
            "metrics": outcome.metrics,
            "bytes": outcome.size,
            "notes": list(outcome.notes),
        }
        print_json(summary)
        return
    for note in outcome.notes:
        notify(f"note: {note}")
    out.print(
        f"wrote {outcome.path} ({outcome.size / 1024:.0f} KiB): {outcome.adapters} adapter(s), "
        f"{outcome.metrics} metric row(s)"
    )
