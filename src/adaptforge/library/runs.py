"""Training runs in progress: each keeps resumable checkpoints in ``runs/<name>`` under an exclusive lock, and
clears them once its adapter has landed in the catalog."""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path

from adaptforge.durable import exclusive_lock, remove_inside
from adaptforge.library.catalog import Catalog
from adaptforge.library.records import LOCKS_DIR, validate_name


class Runs(Catalog):
    """Where a training run of a name keeps its checkpoints, and its lock."""

    def run_dir(self, name: str) -> Path:
        """The checkpoint folder of a training run of ``name`` (validated: always strictly inside ``runs/``)."""
        return self.runs_dir / validate_name(name)

    def run_lock(self, name: str) -> AbstractContextManager[None]:
        """Exclusive lock on the run of ``name``: a second ``train`` of the same name refuses at once."""
        return exclusive_lock(self.runs_dir / LOCKS_DIR / validate_name(name), f"training run {name!r}")

    def clear_run(self, name: str) -> None:
        """Delete a run's checkpoints (``runs/<name>`` and its ``.old`` twin) once its adapter has landed."""
        folder = self.run_dir(name)
        for path in (folder, folder.with_name(f"{folder.name}.old")):
            remove_inside(path, self.runs_dir)
