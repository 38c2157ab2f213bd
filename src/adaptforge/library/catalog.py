"""The catalog: opening ``catalog.sqlite`` (one short-lived connection per operation, WAL, migrations),
write transactions, and rows to and from :class:`~adaptforge.library.records.AdapterRecord`. Every other
part of the library reaches SQLite through :class:`Catalog`."""

from __future__ import annotations

import difflib
import json
import logging
import sqlite3
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from adaptforge.library.records import (
    ADAPTERS_DIR,
    CATALOG_FILE,
    EMBEDDING_DTYPE,
    GENERATORS_DIR,
    ID_PATTERN,
    RUNS_DIR,
    AdapterRecord,
    LibraryError,
    dump_json,
)
from adaptforge.library.schema import MIGRATIONS, RECORD_COLUMNS, SCHEMA_VERSION

logger = logging.getLogger("adaptforge.library")

BUSY_TIMEOUT_S = 30.0


class Catalog:
    """A library folder and its SQLite catalog; the base every part of :class:`~adaptforge.library.Library`
    builds on. Holds no connection, so it pickles to worker processes."""

    def __init__(self, root: str | Path, create: bool = True) -> None:
        self.root = Path(root).expanduser().resolve()
        self.catalog_path = self.root / CATALOG_FILE
        self.adapters_dir = self.root / ADAPTERS_DIR
        if self.root.exists() and not self.root.is_dir():
            raise LibraryError(f"library path {self.root} exists and is not a folder")
        if not self.catalog_path.is_file() or self.catalog_path.stat().st_size == 0:
            # A fresh catalog beside existing adapter folders would silently orphan every one of them.
            self._refuse_orphaned_adapters(
                f"{CATALOG_FILE} is missing"
                if not self.catalog_path.is_file()
                else f"{CATALOG_FILE} is empty (truncated)"
            )
        if not create:
            if not self.root.is_dir():
                raise LibraryError(f"no adapter library at {self.root}: the folder does not exist")
            if not self.catalog_path.is_file():
                raise LibraryError(f"no adapter library at {self.root}: {CATALOG_FILE} is missing")
        self.adapters_dir.mkdir(parents=True, exist_ok=True)
        self._init_schema(create)

    def __repr__(self) -> str:
        return f"Library({str(self.root)!r})"

    @property
    def runs_dir(self) -> Path:
        """Where in-progress training runs keep resumable checkpoints (``runs/<name>``); not created here."""
        return self.root / RUNS_DIR

    @property
    def generators_dir(self) -> Path:
        """Where fitted generators are cached (``generators/<key>``); not created here."""
        return self.root / GENERATORS_DIR

    def adapter_folders(self) -> list[Path]:
        """Folders under ``adapters/`` named like an adapter id (committed or orphaned; not temp folders)."""
        if not self.adapters_dir.is_dir():
            return []
        return sorted(p for p in self.adapters_dir.iterdir() if p.is_dir() and ID_PATTERN.match(p.name))

    def _refuse_orphaned_adapters(self, why: str) -> None:
        folders = self.adapter_folders()
        if folders:
            raise LibraryError(
                f"library {self.root}: {why}, but {ADAPTERS_DIR}/ holds {len(folders)} adapter folder(s); refusing "
                f"to start an empty catalog that would orphan them. Run `adaptforge library rebuild --library "
                f"{self.root}` to re-create the catalog from the folders"
            )

    # ---------------------------------------------------------------- connections and schema

    def _open(self, create: bool = False) -> sqlite3.Connection:
        uri = "file:" + urllib.request.pathname2url(str(self.catalog_path)) + ("?mode=rwc" if create else "?mode=rw")
        conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA synchronous = FULL")
        return conn

    def _rebuild_hint(self, err: BaseException) -> str:
        """What to do about a catalog SQLite cannot open or read: free space when the disk is the cause (a full
        disk looks like an I/O error, and a rebuild would not help), else rebuild a damaged file."""
        text = str(err).lower()
        if "full" in text or "disk i/o" in text or "too large" in text:
            return (
                "; the disk holding the library looks full (or a file-size limit was reached): free space and run "
                "the command again (nothing was changed; `library rebuild` is not needed)"
            )
        return (
            f"; if the file is damaged, `adaptforge library rebuild --library {self.root}` re-creates it from the "
            "adapter folders (the damaged file is kept aside)"
        )

    @contextmanager
    def _connect(self, create: bool = False) -> Iterator[sqlite3.Connection]:
        """One connection per operation; SQLite errors become LibraryError naming the catalog."""
        try:
            conn = self._open(create)
        except sqlite3.Error as err:
            raise LibraryError(f"cannot open catalog {self.catalog_path}: {err}{self._rebuild_hint(err)}") from None
        try:
            yield conn
        except sqlite3.OperationalError as err:
            if "locked" in str(err) or "busy" in str(err):
                raise LibraryError(
                    f"catalog {self.catalog_path} stayed locked by another process for {BUSY_TIMEOUT_S:.0f} s"
                ) from err
            raise LibraryError(f"catalog {self.catalog_path}: {err}") from err
        except sqlite3.DatabaseError as err:
            raise LibraryError(f"catalog {self.catalog_path}: {err}{self._rebuild_hint(err)}") from err
        finally:
            conn.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that takes the write lock up front (no lock upgrade, so no deadlock)."""
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    @contextmanager
    def _snapshot(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: every query in it sees the same state of the catalog."""
        with self._connect() as conn:
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                if conn.in_transaction:
                    conn.execute("COMMIT")

    def _init_schema(self, create: bool, adopt: bool = False) -> None:
        with self._connect(create=create) as conn:
            # Switching to WAL needs an exclusive lock; another process opening the library at the same
            # moment can hold it briefly, and this pragma does not always wait on busy_timeout.
            deadline = time.monotonic() + BUSY_TIMEOUT_S
            while True:
                try:
                    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                    break
                except sqlite3.OperationalError as err:
                    if "locked" not in str(err) or time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            if str(mode).lower() != "wal":
                raise LibraryError(f"catalog {self.catalog_path}: cannot switch to WAL mode (got {mode!r})")
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
                row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
                version = int(row[0]) if row[0] is not None else 0
                if version > SCHEMA_VERSION:
                    raise LibraryError(
                        f"catalog {self.catalog_path} has schema version {version}, newer than this adaptforge "
                        f"understands ({SCHEMA_VERSION}); upgrade adaptforge"
                    )
                if version == 0 and not adopt:
                    self._refuse_orphaned_adapters(f"{CATALOG_FILE} holds no catalog")
                for step in range(version, SCHEMA_VERSION):
                    logger.info("migrating catalog %s from schema %d to %d", self.catalog_path, step, step + 1)
                    MIGRATIONS[step](conn)
                if version < SCHEMA_VERSION:
                    conn.execute("DELETE FROM schema_version")
                    conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    # ---------------------------------------------------------------- lookups and rows

    @staticmethod
    def _find(conn: sqlite3.Connection, name_or_id: str) -> str | None:
        """Id of the adapter with this id or name (ids win; names can never look like ids)."""
        row = conn.execute(
            "SELECT id FROM adapters WHERE id = ? UNION ALL SELECT id FROM adapters WHERE name = ? LIMIT 1",
            (name_or_id, name_or_id),
        ).fetchone()
        return None if row is None else str(row[0])

    def _resolve(self, conn: sqlite3.Connection, name_or_id: str, what: str = "adapter") -> str:
        if not isinstance(name_or_id, str):
            raise LibraryError(f"{what} must be given by name or id (a string), got {type(name_or_id).__name__}")
        found = self._find(conn, name_or_id)
        if found is not None:
            return found
        names = [r[0] for r in conn.execute("SELECT name FROM adapters")]
        close = difflib.get_close_matches(name_or_id, names, n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise LibraryError(f"unknown {what} {name_or_id!r} in library {self.root}.{hint}")

    def _records(self, conn: sqlite3.Connection, where: str = "", args: Sequence[Any] = ()) -> list[AdapterRecord]:
        rows = conn.execute(
            f"SELECT {RECORD_COLUMNS} FROM adapters {where} ORDER BY created, rowid", tuple(args)
        ).fetchall()
        parents: dict[str, list[str]] = {}
        for child, parent in conn.execute(
            f"SELECT child_id, parent_id FROM lineage WHERE child_id IN (SELECT id FROM adapters {where}) "
            "ORDER BY child_id, position",
            tuple(args),
        ):
            parents.setdefault(child, []).append(parent)
        return [self._record(row, parents.get(row[0], [])) for row in rows]

    def _record(self, row: Sequence[Any], parents: Sequence[str]) -> AdapterRecord:
        (
            ident,
            name,
            task,
            description,
            blob,
            dim,
            base_model,
            base_fp,
            rank,
            targets,
            recipe,
            method,
            params,
            checksum,
            config_checksum,
            created,
            kind,
            extra_checksums,
        ) = row
        embedding = None
        if blob is not None:
            embedding = np.frombuffer(blob, dtype=EMBEDDING_DTYPE).astype(np.float32)
            if embedding.size != dim:
                raise LibraryError(
                    f"catalog {self.catalog_path}: adapter {name!r} embedding has {embedding.size} "
                    f"values but dim {dim} is recorded"
                )
            embedding.flags.writeable = False
        return AdapterRecord(
            id=ident,
            name=name,
            task=task,
            description=description,
            base_model=base_model,
            base_fingerprint=base_fp,
            rank=int(rank),
            targets=tuple(json.loads(targets)),
            recipe=json.loads(recipe),
            method=method,
            params=json.loads(params),
            parents=tuple(parents),
            checksum=checksum,
            created=float(created),
            path=self.adapters_dir / ident,
            embedding=embedding,
            config_checksum=config_checksum,
            kind=kind,
            extra_checksums=json.loads(extra_checksums or "{}"),
        )


def insert_record(conn: sqlite3.Connection, record: AdapterRecord) -> None:
    """The catalog row and lineage rows of one adapter (the caller holds the transaction)."""
    vector = record.embedding
    conn.execute(
        f"INSERT INTO adapters ({RECORD_COLUMNS}) VALUES ({','.join('?' * 18)})",
        (
            record.id,
            record.name,
            record.task,
            record.description,
            None if vector is None else np.asarray(vector, dtype=EMBEDDING_DTYPE).tobytes(),
            None if vector is None else int(vector.size),
            record.base_model,
            record.base_fingerprint,
            record.rank,
            json.dumps(list(record.targets)),
            dump_json(record.recipe, "recipe"),
            record.method,
            dump_json(record.params, "params"),
            record.checksum,
            record.config_checksum,
            record.created,
            record.kind,
            json.dumps(dict(record.extra_checksums), sort_keys=True),
        ),
    )
    conn.executemany(
        "INSERT INTO lineage (child_id, parent_id, position) VALUES (?, ?, ?)",
        [(record.id, p, i) for i, p in enumerate(record.parents)],
    )
