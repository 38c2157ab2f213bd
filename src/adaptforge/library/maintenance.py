"""Keeping a library sound: ``verify`` (every adapter's files against the catalog, every cached generator
against its checksum), ``leftovers`` (what crashed or abandoned work left behind) and ``gc`` (removing it)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from adaptforge.durable import TMP_PREFIX, is_locked, remove_inside
from adaptforge.library.catalog import logger
from adaptforge.library.files import read_provenance, verify_files
from adaptforge.library.generators import (
    generator_folders,
    generator_temp_folders,
    inspect_generator,
    unused_generators,
)
from adaptforge.library.queries import Queries
from adaptforge.library.records import EXPORT_RECORD_FILE, LOCKS_DIR, AdapterRecord, CorruptAdapterError, LibraryError


@dataclass(frozen=True)
class Leftovers:
    """Files that crashed or abandoned work left in a library (reported by verify, removed by gc)."""

    orphans: tuple[Path, ...]  # adapter folders with no catalog row (a crash between rename and commit)
    stale_temp: tuple[Path, ...]  # temp folders older than the age limit (adds, checkpoint swaps, generators)
    runs: tuple[Path, ...]  # resumable checkpoints of runs that did not finish (kept by gc)
    missing: tuple[str, ...]  # catalog rows whose folder is gone
    live: tuple[Path, ...] = ()  # runs a live train holds the lock of: neither leftovers nor unfinished
    generators: tuple[Path, ...] = ()  # cached generators nothing needs any more (removed by gc; not damage)

    def messages(self) -> list[str]:
        return [
            *(f"orphan adapter folder {p} (no catalog row; `library gc` removes it)" for p in self.orphans),
            *(f"stale temp folder {p} (`library gc` removes it)" for p in self.stale_temp),
            *(f"adapter {i} is in the catalog but its folder is missing" for i in self.missing),
        ]


class Maintenance(Queries):
    """Integrity checks and garbage collection."""

    def check(self, record: AdapterRecord) -> list[str]:
        """Every integrity problem of one stored adapter: files present, checksums, a readable and finite PEFT
        config and tensors that agree with each other and with the record, and its provenance file."""
        from adaptforge.adapters import AdapterFormatError, read_adapter

        try:
            verify_files(record)
        except CorruptAdapterError as err:
            return [str(err)]
        problems = []
        try:
            delta, _ = read_adapter(record.path)
        except AdapterFormatError as err:
            return [f"adapter {record.name!r} ({record.id}): {err}"]
        if tuple(delta.targets) != record.targets or max(delta.ranks.values()) != record.rank:
            problems.append(
                f"adapter {record.name!r} ({record.id}): its files hold modules {delta.targets[:3]}... of rank "
                f"{max(delta.ranks.values())}, the catalog records {list(record.targets[:3])}... of rank {record.rank}"
            )
        try:
            stored = read_provenance(record.path)
        except LibraryError as err:
            problems.append(f"adapter {record.name!r} ({record.id}): {err}")
        else:
            if (stored.id, stored.checksum, stored.config_checksum) != (
                record.id,
                record.checksum,
                record.config_checksum,
            ):
                problems.append(
                    f"adapter {record.name!r} ({record.id}): {record.path / EXPORT_RECORD_FILE} disagrees with "
                    "the catalog (id or checksums)"
                )
        return problems

    def verify(self, name_or_id: str | None = None) -> list[str]:
        """Check one or all adapters (:meth:`check`), and with all of them every cached generator; returns one
        message per problem (empty: all good)."""
        if name_or_id is not None:
            return self.check(self.get(name_or_id))
        problems = [problem for record in self.list() for problem in self.check(record)]
        generators = [inspect_generator(folder) for folder in generator_folders(self.generators_dir)]
        return problems + [g.problem for g in generators if g.problem is not None]

    def _referenced_generators(self) -> set[str]:
        with self._connect() as conn:
            rows = conn.execute("SELECT params FROM adapters WHERE kind = 'generate'").fetchall()
        ids = set()
        for (params,) in rows:
            value = json.loads(params).get("generator_id")
            if isinstance(value, str):
                ids.add(value)
        return ids

    def leftovers(self, min_age: float = 3600.0) -> Leftovers:
        """What crashed or abandoned work left behind, without removing anything (see :meth:`gc`)."""
        now = time.time()

        def stale(entry: Path) -> bool:
            try:
                return now - entry.stat().st_mtime >= min_age
            except FileNotFoundError:
                return False

        temp = [e for e in sorted(self.adapters_dir.glob(f"{TMP_PREFIX}*")) if e.is_dir()]
        temp += generator_temp_folders(self.generators_dir)
        runs: list[Path] = []
        live: set[str] = set()
        if self.runs_dir.is_dir():
            locks = self.runs_dir / LOCKS_DIR
            live = {f.name for f in locks.iterdir() if is_locked(f)} if locks.is_dir() else set()

            def in_use(entry: Path) -> bool:  # a live run's folder, its .old twin or its checkpoint being staged
                staged = entry.name[len(TMP_PREFIX) :].rsplit("-", 1)[0] if entry.name.startswith(TMP_PREFIX) else None
                return entry.name.removesuffix(".old") in live or staged in live

            temp += [e for e in sorted(self.runs_dir.glob(f"{TMP_PREFIX}*")) if e.is_dir() and not in_use(e)]
            runs = [
                e
                for e in sorted(self.runs_dir.iterdir())
                if e.is_dir() and not e.name.startswith(".") and not in_use(e)
            ]
        with self._connect() as conn:
            known = dict(conn.execute("SELECT id, name FROM adapters").fetchall())
        folders = self.adapter_folders()
        generators = [inspect_generator(folder) for folder in generator_folders(self.generators_dir)]
        return Leftovers(
            orphans=tuple(p for p in folders if p.name not in known),
            stale_temp=tuple(p for p in temp if stale(p)),
            runs=tuple(runs),
            missing=tuple(sorted(i for i in known if not (self.adapters_dir / i).is_dir())),
            live=tuple(self.runs_dir / n for n in sorted(live)),
            generators=tuple(unused_generators(generators, set(known.values()), self._referenced_generators())),
        )

    def gc(self, min_age: float = 3600.0) -> list[Path]:
        """Remove temp folders (adapters, runs, generators) older than ``min_age`` seconds, adapter folders with
        no row, and cached generators nothing needs (:mod:`adaptforge.library.generators`).

        Holds the write lock while scanning, so no other process can be between rename and commit. Temp
        folders younger than ``min_age`` may belong to a write still in progress and are kept; so are resumable
        run checkpoints (``runs/<name>``) and anything not named like an adapter id or a temp folder.
        """
        removed: list[Path] = []
        with self._transaction():
            found = self.leftovers(min_age)
            for entry in (*found.stale_temp, *found.orphans, *found.generators):
                remove_inside(entry, entry.parent)
                removed.append(entry)
                logger.info("gc: removed %s", entry)
        for ident in found.missing:
            logger.warning("gc: adapter %s has a catalog row but no folder in %s", ident, self.adapters_dir)
        return removed
