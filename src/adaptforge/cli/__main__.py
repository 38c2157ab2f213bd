"""``python -m adaptforge.cli`` runs the command line (as the ``adaptforge`` script does)."""

from adaptforge.cli import app

app()
