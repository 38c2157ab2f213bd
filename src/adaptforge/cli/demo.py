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
    max_train: Annotated[
        int | None,
        typer.Option(
            "--max-train",
            min=1,
            help="Training examples per task (default: all 400; the LLM demo: 128). Smaller is faster: "
            "--max-train 64 --epochs 1 is a quick look.",
        ),
    ] = None,
    epochs: Annotated[
        int | None, typer.Option(min=1, help="Training epochs per task (default 3; the LLM demo: 2).")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            help="A causal LM (smollm2: the embedded SmolLM2-135M-Instruct) runs the LLM demo: SFT on two "
            "generation tasks, base vs adapter, a merge, greedy answers. Default: the encoder demo on MiniLM.",
        ),
    ] = None,
) -> None:
    """End to end on the embedded model: zero-shot vs LoRA on the shipped tasks (--model smollm2: the LLM demo)."""
    from dataclasses import replace

    from adaptforge.demo import LlmDemoSizes, run_demo, run_llm_demo

    with cli_errors():
        if model is None:
            summary = run_demo(out_dir, console=out, max_train=max_train, epochs=epochs)
        else:
            sizes = LlmDemoSizes()
            sizes = replace(sizes, max_train=max_train or sizes.max_train, epochs=epochs or sizes.epochs)
            summary = run_llm_demo(out_dir, console=out, model=model, sizes=sizes)
    out.print(f"summary written to {summary}")
