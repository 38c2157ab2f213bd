"""``adaptforge serve``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import typer

from adaptforge.cli.app import ModelOpt, app, cli_errors, parse_options, required
from adaptforge.cli.render import notify, out

EXAMPLES = r"""
Examples:

  adaptforge serve -l lib --port 8000
  adaptforge serve -l lib --host 0.0.0.0 --api-key SECRET --pin sst2-lora --max-loaded 8
  curl -s localhost:8000/v1/classify -H 'content-type: application/json' \
    -d '{"adapter": "sst2-lora", "texts": \["a fine film"]}'

The API reference, offline: http://127.0.0.1:8000/docs once it runs (JSON: /openapi.json).
One access-log line per request on stderr (--no-access-log: none).
"""


@app.command("serve", epilog=EXAMPLES)
def serve_cmd(
    library: Annotated[Path | None, typer.Option("--library", "-l", help="Adapter library folder.")] = None,
    host: Annotated[str | None, typer.Option(help="Interface to bind (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="TCP port (default 8000; 0: any free port).")] = None,
    model: ModelOpt = None,
    max_loaded: Annotated[int | None, typer.Option(help="Adapters kept in memory (default 32).")] = None,
    pin: Annotated[list[str] | None, typer.Option("--pin", help="Adapter never evicted; repeatable.")] = None,
    max_batch: Annotated[int | None, typer.Option(help="Texts per forward pass (default 32).")] = None,
    max_wait_ms: Annotated[float | None, typer.Option(help="Batching wait after a first request (default 5).")] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar="ADAPTFORGE_API_KEY",
            show_envvar=True,
            help="Require this key on every call; prefer the environment variable: a flag shows in `ps`.",
        ),
    ] = None,
    threads: Annotated[int | None, typer.Option(help="Torch intra-op threads.")] = None,
    limit: Annotated[
        list[str] | None, typer.Option("--limit", help="A request limit key=value (see --list); repeatable.")
    ] = None,
    access_log: Annotated[
        bool,
        typer.Option(
            "--access-log/--no-access-log",
            help="One line per request on stderr: time, client, method and path, adapter or model, status, latency.",
        ),
    ] = True,
    list_settings: Annotated[bool, typer.Option("--list", help="List the server settings and limits.")] = False,
) -> None:
    """Serve the library's adapters over HTTP: classify, embeddings, chat and completions (causal LM), models,
    health, metrics."""
    from adaptforge.core import AdaptforgeError
    from adaptforge.library import Library
    from adaptforge.pipelines.serve import serve_library
    from adaptforge.serve import ServeConfig, ServeLimits

    if list_settings:
        for cls in (ServeConfig, ServeLimits):
            out.print(cls.owner(), style="bold")
            for row in cls.help_rows():
                out.print(f"    {row.name} ({row.type}, default {row.default!r}): {row.help}")
        return
    with cli_errors():
        given: dict[str, Any] = {
            "host": host,
            "port": port,
            "max_loaded": max_loaded,
            "pins": pin or None,
            "max_batch": max_batch,
            "max_wait_ms": max_wait_ms,
            "api_key": api_key,
            "threads": threads,
            "access_log": access_log,
        }
        config = ServeConfig.from_dict({k: v for k, v in given.items() if v is not None})
        limits = ServeLimits.from_dict(parse_options(limit or []))
        lib = Library(required(library, "--library LIB"), create=False)
        if len(lib) == 0:
            raise AdaptforgeError(f"library {lib.root} holds no adapters to serve; train or import some first")
        verbose = logging.getLogger().getEffectiveLevel() <= logging.INFO
        serve_library(lib, config, limits, model=model, notify=notify, log_level="info" if verbose else "warning")
