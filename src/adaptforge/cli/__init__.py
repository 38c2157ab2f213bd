"""``adaptforge`` command line: one module per verb, each parsing its flags, calling its pipeline
(:mod:`adaptforge.pipelines`) and rendering the result (:mod:`adaptforge.cli.render`); no work is done here.
The shared Typer apps and options are in :mod:`adaptforge.cli.app`."""

from adaptforge.cli import (
    compose,
    demo,
    evaluate,
    generate,
    library,
    merge,
    predict,
    prune,
    report,
    serve,
    sweep,
    train,
    tta,
)
from adaptforge.cli.app import app

# Each verb module adds its command to ``app`` when imported; this is the one list of them.
VERBS = (compose, demo, evaluate, generate, library, merge, predict, prune, report, serve, sweep, train, tta)

__all__ = ["VERBS", "app"]
