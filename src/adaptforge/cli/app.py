"""The Typer apps, the options every verb shares, and how a command reports a bad input (exit 2)."""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the network behind the user's back
# Hugging Face's own bars ("Loading weights", "Writing model shards") on every command are noise next to ours;
# read when transformers is imported, so set before any command imports it (export it as 0 to see them).
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import typer  # noqa: E402
from rich.text import Text  # noqa: E402

from adaptforge.cli.render import (  # noqa: E402
    console,
    out,
    show_progress,
)
from adaptforge.errors import AdaptforgeError  # noqa: E402

if TYPE_CHECKING:  # importing the backends loads torch; --help must not
    from adaptforge.backends import Backend

app = typer.Typer(help="Adapt one foundation model to many tasks and manage the adapters.", no_args_is_help=True)
LIBRARY_EXAMPLES = """
Examples:

  adaptforge library list -l lib
  adaptforge library show sst2-lora -l lib     (task, base, lineage, metrics, files, integrity)
  adaptforge library export sst2-lora -l lib --out sst2-peft     (a PEFT folder; its README scores in 10 lines)
  adaptforge library import sst2-peft -l other --name sst2-lora     (an adaptforge export keeps its record)
  adaptforge library import peft-folder -l lib --name mine --task $TASKS/sst2
  adaptforge library verify -l lib
"""
library_app = typer.Typer(
    help="List, show, import, export and remove adapters.", no_args_is_help=True, epilog=LIBRARY_EXAMPLES
)
app.add_typer(library_app, name="library")


T = TypeVar("T")

LibraryOpt = Annotated[Path, typer.Option("--library", "-l", help="Adapter library folder.")]
ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        help="HF model folder or hub name, or smollm2 (the embedded SmolLM2-135M-Instruct; default: embedded MiniLM).",
    ),
]
MaxNewTokensOpt = Annotated[
    int,
    typer.Option(
        "--max-new-tokens",
        help="Generation tasks: most tokens per greedy answer (> 0, below the model's context; a prompt longer "
        "than the context left is cut from the left, with a warning).",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.", metavar="")]
TextColOpt = Annotated[str, typer.Option("--text-col", help="Field (task folder) or column (CSV) holding the text.")]
LabelColOpt = Annotated[str, typer.Option("--label-col", help="Field (task folder) or column (CSV) holding the label.")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace an adapter of the same name.", metavar="")]
_DESCRIPTION_HELP = (
    "Instruction of {}; wins over its task.json description and a CSV's <name>.description.txt (one task only)."
)
DescriptionOpt = Annotated[str | None, typer.Option("--description", help=_DESCRIPTION_HELP.format("the task"))]
EvalDescriptionOpt = Annotated[
    str | None, typer.Option("--description", help=_DESCRIPTION_HELP.format("the --eval task"))
]
DomainDescriptionOpt = Annotated[
    str | None, typer.Option("--description", help=_DESCRIPTION_HELP.format("the --domain task"))
]
LimitOpt = Annotated[int | None, typer.Option(min=1, help="Evaluate at most this many examples per task.")]
# Where sweep and eval cells run (adaptforge.backends); the Ray flags only with --backend ray.
BackendOpt = Annotated[str, typer.Option("--backend", help="Where cells run: local (this process) or ray.")]
RayAddressOpt = Annotated[
    str | None,
    typer.Option(
        "--ray-address", help="Ray cluster to join (host:port, ray://host:port, auto); default: start one here."
    ),
]
WorkersOpt = Annotated[int | None, typer.Option("--workers", min=1, help="Ray actors (each loads the model once).")]
ThreadsOpt = Annotated[
    int | None, typer.Option("--threads-per-worker", min=1, help="torch threads per worker (ray) or in this process.")
]


def _fail(err: Exception) -> None:
    console.print(Text.assemble(("error:", "red"), " ", str(err)), soft_wrap=True)  # one line, however wide
    raise typer.Exit(2)


def required(value: T | None, flag: str) -> T:
    """Options that ``--list`` lets a command run without are checked here instead of by typer."""
    if value is None:
        raise AdaptforgeError(f"{flag} is required")
    return value


def one_description(description: str | None, tasks: int, what: str = "TASK") -> str | None:
    """``--description`` checked: it is one task's instruction (``what`` names the argument it applies to), so
    it is refused for several tasks (each CSV can carry its own side file), without a task, and when blank;
    returned stripped (``None``: the tasks' own)."""
    if description is None:
        return None
    if not description.strip():
        raise AdaptforgeError(
            "--description is empty; give the task's instruction, or leave it out to use the task's own"
        )
    if tasks == 0:
        raise AdaptforgeError(f"--description is the instruction of {what}, and no {what} was given")
    if tasks > 1:
        raise AdaptforgeError(
            f"--description sets one task's instruction but {tasks} tasks were given ({what}); "
            "for several CSV tasks put a <name>.description.txt beside each file"
        )
    return description.strip()


@contextmanager
def cli_errors() -> Iterator[None]:
    try:
        yield
    except AdaptforgeError as err:
        _fail(err)


def _version(show: bool) -> None:
    if show:
        from importlib.metadata import version

        out.print(f"adaptforge {version('adaptforge')}")
        raise typer.Exit()


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", metavar="")] = False,
    progress_every: Annotated[
        float,
        typer.Option(
            "--progress-every",
            min=0,
            help="Seconds between progress lines (done/total, rate, ETA) of a long step; 0: one line per step.",
        ),
    ] = 5.0,
    show_version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.", metavar=""),
    ] = False,
) -> None:
    # PEFT calls a transformers method that transformers deprecates; the warning is for PEFT's authors.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    show_progress(progress_every)


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


def backend_from_flags(backend: str, address: str | None, workers: int | None, threads: int | None) -> Backend:
    """The registered backend with its typed params from the flags; a flag the backend does not take is an error."""
    from adaptforge.backends import BACKENDS

    cls = BACKENDS.get(backend)
    if backend == "local":
        extra = [f for f, v in (("--ray-address", address), ("--workers", workers)) if v is not None]
        if extra:
            raise AdaptforgeError(f"{', '.join(extra)}: only with --backend ray")
        return cls({"threads": threads})
    params: dict[str, Any] = {"address": address}
    if workers is not None:
        params["workers"] = workers
    if threads is not None:
        params["threads_per_worker"] = threads
    return cls(params)


@contextmanager
def library_folder(path: Path) -> Iterator[Path]:
    """For commands that may create a library: if this one created the folder and fails before any adapter
    landed, the empty library is removed again, so a typo in a flag leaves nothing behind."""
    existed = Path(path).exists()
    try:
        yield path
    except BaseException:
        if not existed and Path(path).is_dir():
            from adaptforge.durable import remove_inside
            from adaptforge.library import Library

            try:
                empty = len(Library(path, create=False)) == 0 and not any((Path(path) / "runs").glob("[!.]*"))
            except Exception:  # noqa: BLE001 - a half-made folder we created ourselves: still ours to remove
                empty = True
            if empty:
                remove_inside(Path(path), Path(path).resolve().parent)
        raise
