"""Recovery: a missing or damaged ``catalog.sqlite`` re-created from the adapter folders' provenance files."""

from __future__ import annotations

import os
import sqlite3
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

from adaptforge.durable import TMP_PREFIX, fsync_dir
from adaptforge.library.catalog import Catalog, insert_record, logger
from adaptforge.library.files import read_provenance, verify_files
from adaptforge.library.records import (
    ADAPTERS_DIR,
    CATALOG_FILE,
    EXPORT_RECORD_FILE,
    ID_PATTERN,
    AdapterRecord,
    LibraryError,
)


@dataclass(frozen=True)
class RebuildReport:
    """What :func:`rebuild_catalog` recovered and what it left alone (nothing is ever deleted)."""

    recovered: tuple[str, ...]  # names
    skipped: tuple[str, ...]  # one message per folder not recovered
    moved_aside: tuple[Path, ...]  # the damaged catalog's files, renamed


def _catalog_is_usable(path: Path) -> bool:
    if not path.is_file() or path.stat().st_size == 0:
        return False
    try:
        uri = "file:" + urllib.request.pathname2url(str(path)) + "?mode=ro"
        conn = sqlite3.connect(uri, uri=True)
        try:
            conn.execute("SELECT COUNT(*) FROM adapters").fetchone()
            return conn.execute("PRAGMA quick_check").fetchone()[0] == "ok"
        finally:
            conn.close()
    except sqlite3.DatabaseError:
        return False


def rebuild_catalog(root: str | Path) -> RebuildReport:
    """Re-create a missing or damaged ``catalog.sqlite`` from the adapter folders on disk.

    Each ``adapters/<id>/`` whose provenance file (:func:`~adaptforge.library.files.write_provenance`) agrees
    with its files' checksums becomes a catalog row again, with its lineage; metrics were only in the catalog and
    are not recovered (re-run ``eval``). A damaged catalog is renamed aside, never deleted; a usable one is
    refused. The new catalog is built in a temp file and renamed into place, so a crash leaves the old state.
    When two folders claim one name (an overwrite cut short), the newer one wins and the other stays an orphan
    for ``gc``.
    """
    from adaptforge.adapters import AdapterFormatError, read_adapter

    root = Path(root).expanduser().resolve()
    catalog = root / CATALOG_FILE
    adapters = root / ADAPTERS_DIR
    if not adapters.is_dir():
        raise LibraryError(f"no adapter library at {root}: {ADAPTERS_DIR}/ does not exist, nothing to rebuild from")
    if _catalog_is_usable(catalog):
        raise LibraryError(
            f"{catalog} is a readable catalog; rebuild only replaces a missing or damaged one "
            "(see `adaptforge library verify`)"
        )
    found: dict[str, AdapterRecord] = {}
    skipped: list[str] = []
    for folder in sorted(p for p in adapters.iterdir() if p.is_dir() and ID_PATTERN.match(p.name)):
        try:
            record = read_provenance(folder)
            if record.id != folder.name:
                raise LibraryError(f"{folder / EXPORT_RECORD_FILE}: records id {record.id}, not {folder.name}")
            verify_files(record)
            read_adapter(folder)
        except (LibraryError, AdapterFormatError) as err:
            skipped.append(str(err))
            continue
        other = found.get(record.name)
        if other is not None:
            older, record = sorted((other, record), key=lambda r: r.created)
            skipped.append(f"{older.path}: an older adapter named {record.name!r} (left as an orphan for gc)")
        found[record.name] = record

    tmp = root / f"{TMP_PREFIX}catalog-{uuid.uuid4().hex[:8]}.sqlite"
    builder = Catalog.__new__(Catalog)
    builder.root, builder.catalog_path, builder.adapters_dir = root, tmp, adapters
    try:
        builder._init_schema(create=True, adopt=True)
        with builder._transaction() as conn:
            for record in sorted(found.values(), key=lambda r: r.created):
                insert_record(conn, record)
        with builder._connect() as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        moved = []
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for suffix in ("", "-wal", "-shm"):  # a stale WAL must never be replayed onto the new catalog
            old = root / (CATALOG_FILE + suffix)
            if old.exists():
                aside = root / f"{CATALOG_FILE}.damaged-{stamp}{suffix}"
                os.rename(old, aside)
                moved.append(aside)
        os.rename(tmp, catalog)
        fsync_dir(root)
    finally:
        for suffix in ("", "-wal", "-shm"):
            leftover = Path(str(tmp) + suffix)
            if leftover.exists():
                leftover.unlink()
    logger.info("rebuilt %s with %d adapter(s)", catalog, len(found))
    return RebuildReport(tuple(sorted(found)), tuple(skipped), tuple(moved))
