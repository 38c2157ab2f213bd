"""``adaptforge demo``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from adaptforge.cli.app import (
    app,
    cli_errors,
)
from adaptforge.cli.render import (
    out,
)


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
