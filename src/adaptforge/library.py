"""The adapter library: a folder holding ``catalog.sqlite`` and one PEFT folder per adapter.

Layout::

    <root>/catalog.sqlite          SQLite in WAL mode: adapters, lineage, metrics, schema_version
    <root>/adapters/<id>/          adapter_config.json + adapter_model.safetensors (written by write_adapter)
    <root>/adapters/.tmp-<random>/ an add in progress (or one that crashed); never read

Why it is built this way:

* **Atomic adds.** The adapter is written to a temp folder and fsynced; then, holding SQLite's write
  lock (``BEGIN IMMEDIATE``), the folder is renamed to ``adapters/<id>/`` and the row, lineage and
  metrics are inserted in one transaction. Any failure rolls the transaction back and removes the
  folder, so readers (who only ever go through the catalog) see an adapter completely or not at all.
  Renaming under the write lock also means :meth:`Library.gc` (which takes the same lock) can never
  mistake another process's in-flight adapter for an orphan.
* **Many processes.** Every operation opens its own short-lived connection (so a ``Library`` can be
  pickled to worker processes), WAL lets readers run beside one writer, writers queue on
  ``busy_timeout``; a name clash is detected inside the locked transaction, so of two processes
  adding the same name exactly one wins and the other gets a clear :class:`LibraryError`.
* **Integrity.** The sha256 of both files is stored and checked on every :meth:`Library.load` and
  :meth:`Library.export`; the base-model fingerprint is checked on request.
* **Lineage survives removal.** Removing (with ``force=True``) or overwriting an adapter that other
  adapters were derived from keeps their lineage rows; the parent id is then reported as missing.
"""

from __future__ import annotations

import difflib
import json
import logging
import math
import os
import re
import shutil
import sqlite3
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError

from adaptforge.adapters import CONFIG_FILE, WEIGHTS_FILE, AdapterFormatError, read_adapter, write_adapter
from adaptforge.core import AdaptforgeError, LoraDelta
from adaptforge.durable import (
    TMP_PREFIX,
    exclusive_lock,
    fsync_dir,
    fsync_tree,
    is_locked,
    remove_inside,
    sha256_file,
    share_files,
    staged_folder,
)
from adaptforge.provenance import Provenance
from adaptforge.snapshots import SNAPSHOTS_FILE, Snapshots, read_snapshots
from adaptforge.structured import parse_json

logger = logging.getLogger(__name__)

CATALOG_FILE = "catalog.sqlite"
ADAPTERS_DIR = "adapters"
RUNS_DIR = "runs"
EXPORT_RECORD_FILE = "adaptforge.json"
LOCKS_DIR = ".locks"
PROVENANCE_FORMAT = "adaptforge-adapter-record"
BUSY_TIMEOUT_S = 30.0
MAX_NAME_LENGTH = 128
_ID = re.compile(r"^[0-9a-f]{16}$")
_EMBEDDING_DTYPE = np.dtype("<f4")


class LibraryError(AdaptforgeError):
    """A library operation that cannot be done as asked (unknown name, name taken, bad input, ...)."""


class CorruptAdapterError(LibraryError):
    """An adapter's files no longer match the checksums recorded when it was added."""


class BaseMismatchError(LibraryError):
    """An adapter trained on a different base model than the one it is being loaded for."""


@dataclass(frozen=True)
class Leftovers:
    """Files that crashed or abandoned work left in a library (reported by verify, removed by gc)."""

    orphans: tuple[Path, ...]  # adapter folders with no catalog row (a crash between rename and commit)
    stale_temp: tuple[Path, ...]  # temp folders older than the age limit (adds, checkpoint swaps)
    runs: tuple[Path, ...]  # resumable checkpoints of runs that did not finish (kept by gc)
    missing: tuple[str, ...]  # catalog rows whose folder is gone
    live: tuple[Path, ...] = ()  # runs a live train holds the lock of: neither leftovers nor unfinished

    def messages(self) -> list[str]:
        return [
            *(f"orphan adapter folder {p} (no catalog row; `library gc` removes it)" for p in self.orphans),
            *(f"stale temp folder {p} (`library gc` removes it)" for p in self.stale_temp),
            *(f"adapter {i} is in the catalog but its folder is missing" for i in self.missing),
        ]


@dataclass(frozen=True)
class MetricRow:
    """One metric value of one adapter (or of the bare base model, ``adapter_id=None``) on a task split."""

    adapter_id: str | None
    base_fingerprint: str
    task: str
    split: str
    metric: str
    value: float
    n: int
    created: float = field(default_factory=time.time)
    subset: str = "all"  # which examples of the split: "all", or the seeded sample ("sample:64:seed0")
    task_fingerprint: str | None = None  # the task's content hash: the same name may hold other data later

    def to_json(self) -> dict[str, Any]:
        return {
            "adapter_id": self.adapter_id,
            "base_fingerprint": self.base_fingerprint,
            "task": self.task,
            "task_fingerprint": self.task_fingerprint,
            "split": self.split,
            "subset": self.subset,
            "metric": self.metric,
            "value": None if math.isnan(self.value) else self.value,
            "n": self.n,
            "created": self.created,
        }


@dataclass(frozen=True)
class AdapterRecord:
    """The catalog's view of one adapter. ``parents`` are ids in order; some may since have been removed."""

    id: str
    name: str
    task: str | None
    description: str | None
    base_model: str
    base_fingerprint: str
    rank: int
    targets: tuple[str, ...]
    recipe: dict = field(compare=False)
    method: str
    params: dict = field(compare=False)
    parents: tuple[str, ...]
    checksum: str  # sha256 of adapter_model.safetensors
    created: float
    path: Path
    embedding: np.ndarray | None = field(compare=False, repr=False)
    config_checksum: str = ""  # sha256 of adapter_config.json
    kind: str = "other"  # what made it: one of KINDS (the method column says which algorithm)
    extra_checksums: dict = field(default_factory=dict, compare=False)  # more files of the folder -> sha256

    def __hash__(self) -> int:
        return hash((self.id, self.checksum))

    @property
    def is_task_adapter(self) -> bool:
        """Is this a task's own adapter: trained on (or imported for) exactly that one task?

        The one rule for "the adapter of task T": merges compare against it, composition and the generator
        draw candidates from it. Merged, composed, generated and multi-task adapters are derived, never
        a task's own (a composed aTLAS adapter and an aTLAS merge share a method name, not a kind).
        """
        return self.kind in OWN_KINDS and self.task is not None and self.method != "train_multitask"

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict (path as a string, embedding as a list of floats or None)."""
        return {
            "id": self.id,
            "name": self.name,
            "task": self.task,
            "description": self.description,
            "base_model": self.base_model,
            "base_fingerprint": self.base_fingerprint,
            "rank": self.rank,
            "targets": list(self.targets),
            "recipe": self.recipe,
            "method": self.method,
            "params": self.params,
            "parents": list(self.parents),
            "checksum": self.checksum,
            "config_checksum": self.config_checksum,
            "created": self.created,
            "path": str(self.path),
            "embedding": None if self.embedding is None else [float(x) for x in self.embedding],
            "kind": self.kind,
            "extra_checksums": dict(self.extra_checksums),
        }


# --------------------------------------------------------------------------------------------------
# Schema. MIGRATIONS[i] takes a catalog from version i to i + 1; to change the schema, append a
# function (never edit a shipped one). Opening a library runs the missing steps in one transaction.


def _schema_v1(conn: sqlite3.Connection) -> None:
    conn.execute(
        """CREATE TABLE adapters (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            task TEXT,
            description TEXT,
            embedding BLOB,
            embedding_dim INTEGER,
            base_model TEXT NOT NULL,
            base_fingerprint TEXT NOT NULL,
            rank INTEGER NOT NULL,
            targets TEXT NOT NULL,
            recipe TEXT NOT NULL,
            method TEXT NOT NULL,
            params TEXT NOT NULL,
            checksum TEXT NOT NULL,
            config_checksum TEXT NOT NULL,
            created REAL NOT NULL
        )"""
    )
    conn.execute("CREATE INDEX adapters_task ON adapters(task)")
    conn.execute("CREATE INDEX adapters_base ON adapters(base_fingerprint)")
    # parent_id has no foreign key on purpose: lineage outlives a removed parent.
    conn.execute(
        """CREATE TABLE lineage (
            child_id TEXT NOT NULL REFERENCES adapters(id) ON DELETE CASCADE,
            parent_id TEXT NOT NULL,
            position INTEGER NOT NULL,
            PRIMARY KEY (child_id, position)
        )"""
    )
    conn.execute("CREATE INDEX lineage_parent ON lineage(parent_id)")
    conn.execute(
        """CREATE TABLE metrics (
            adapter_id TEXT REFERENCES adapters(id) ON DELETE CASCADE,
            base_fingerprint TEXT NOT NULL,
            task TEXT NOT NULL,
            split TEXT NOT NULL,
            metric TEXT NOT NULL,
            value REAL,
            n INTEGER NOT NULL,
            created REAL NOT NULL
        )"""
    )
    conn.execute("CREATE INDEX metrics_adapter ON metrics(adapter_id)")
    conn.execute("CREATE INDEX metrics_base ON metrics(base_fingerprint)")


KINDS = ("train", "import", "merge", "compose", "generate", "prune", "tta", "other")
OWN_KINDS = ("train", "import")
_RECIPE_KINDS = {"train": "train", "train_multitask": "train", "import": "import", "merge": "merge"}
_RECIPE_KINDS |= {"compose": "compose", "generate": "generate"}


def infer_kind(recipe: Mapping[str, Any] | None, method: str) -> str:
    """The kind of an adapter stored before kinds were recorded: its recipe's ``kind`` (every recipe
    adaptforge wrote has one), else what its method says; ``other`` when neither tells."""
    by_recipe = _RECIPE_KINDS.get(str((recipe or {}).get("kind")))
    if by_recipe is not None:
        return by_recipe
    return {"train": "train", "train_multitask": "train", "import": "import", "generate": "generate"}.get(
        method, "other"
    )


def _schema_v2(conn: sqlite3.Connection) -> None:
    """Adds ``kind`` (what made the adapter), backfilled from each row's recipe and method."""
    conn.execute("ALTER TABLE adapters ADD COLUMN kind TEXT NOT NULL DEFAULT 'other'")
    rows = conn.execute("SELECT id, recipe, method FROM adapters").fetchall()
    for ident, recipe, method in rows:
        try:
            parsed = json.loads(recipe)
        except json.JSONDecodeError:
            parsed = {}
        kind = infer_kind(parsed if isinstance(parsed, dict) else {}, method)
        conn.execute("UPDATE adapters SET kind = ? WHERE id = ?", (kind, ident))
    conn.execute("CREATE INDEX adapters_kind ON adapters(kind)")


def _schema_v3(conn: sqlite3.Connection) -> None:
    """Metrics are keyed by the task's content and the examples too: a ``--limit`` run never mixes with a
    full one. Rows written before say ``unknown`` (their subset was not recorded)."""
    conn.execute("ALTER TABLE metrics ADD COLUMN task_fingerprint TEXT")
    conn.execute("ALTER TABLE metrics ADD COLUMN subset TEXT NOT NULL DEFAULT 'unknown'")


def _schema_v4(conn: sqlite3.Connection) -> None:
    """Adapters may hold more files than the PEFT pair (training snapshots); their sha256 per file name."""
    conn.execute("ALTER TABLE adapters ADD COLUMN extra_checksums TEXT NOT NULL DEFAULT '{}'")


MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (_schema_v1, _schema_v2, _schema_v3, _schema_v4)
SCHEMA_VERSION = len(MIGRATIONS)

_RECORD_COLUMNS = (
    "id, name, task, description, embedding, embedding_dim, base_model, base_fingerprint, rank, targets, "
    "recipe, method, params, checksum, config_checksum, created, kind, extra_checksums"
)


# --------------------------------------------------------------------------------------------------
# Small helpers


def validate_name(name: object) -> str:
    """Names are catalog keys, never paths: refuse anything that could be mistaken for one or for an id.

    The one check of every output name (train, import, merge, compose, generate): besides the catalog,
    a name becomes a folder under ``runs/``, so ``.``/``..``, separators and control characters are refused,
    and so is a leading dot (reserved for temp folders, locks and hidden files).
    """
    if not isinstance(name, str):
        raise LibraryError(f"adapter name must be a string, got {type(name).__name__}")
    if not name.strip():
        raise LibraryError("adapter name is empty or whitespace only")
    if name.startswith("."):
        raise LibraryError(
            f"adapter name {name!r} starts with a dot; names such as '.' and '..' would be paths, and leading "
            "dots are reserved for temporary files"
        )
    if len(name) > MAX_NAME_LENGTH:
        raise LibraryError(f"adapter name {name[:40]!r}... is {len(name)} characters; at most {MAX_NAME_LENGTH}")
    if name != name.strip():
        raise LibraryError(f"adapter name {name!r} starts or ends with whitespace")
    if "/" in name or "\\" in name or os.sep in name or (os.altsep and os.altsep in name):
        raise LibraryError(f"adapter name {name!r} contains a path separator")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise LibraryError(f"adapter name {name!r} contains a control character")
    if _ID.match(name):
        raise LibraryError(f"adapter name {name!r} looks like an adapter id (16 hex digits); choose another name")
    if not name.isprintable():
        raise LibraryError(f"adapter name {name!r} contains a non-printable character")
    return name


def _require_text(value: object, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise LibraryError(f"{what} must be a non-empty string, got {value!r}")
    return value


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


def _dump_json(value: Any, what: str) -> str:
    try:
        return json.dumps(value, sort_keys=True, default=_json_default)
    except (TypeError, ValueError) as err:
        raise LibraryError(f"{what} must be JSON-serialisable: {err}") from None


def _as_embedding(embedding: Any) -> np.ndarray:
    try:
        arr = np.asarray(embedding, dtype=np.float32)
    except (TypeError, ValueError) as err:
        raise LibraryError(f"embedding is not a numeric vector: {err}") from None
    if arr.ndim == 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 1 or arr.size == 0:
        raise LibraryError(f"embedding must be a non-empty 1-D vector, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise LibraryError("embedding holds NaN or infinite values")
    if not np.any(arr):
        raise LibraryError("embedding is all zeros; cosine similarity is undefined for it")
    return arr.astype(_EMBEDDING_DTYPE, copy=False)


def _kind(kind: object) -> str:
    if kind not in KINDS:
        raise LibraryError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    return str(kind)


def _new_id() -> str:
    return uuid.uuid4().hex[:16]


def _insert_record(conn: sqlite3.Connection, record: AdapterRecord) -> None:
    """The catalog row and lineage rows of one adapter (the caller holds the transaction)."""
    vector = record.embedding
    conn.execute(
        f"INSERT INTO adapters ({_RECORD_COLUMNS}) VALUES ({','.join('?' * 18)})",
        (
            record.id,
            record.name,
            record.task,
            record.description,
            None if vector is None else np.asarray(vector, dtype=_EMBEDDING_DTYPE).tobytes(),
            None if vector is None else int(vector.size),
            record.base_model,
            record.base_fingerprint,
            record.rank,
            json.dumps(list(record.targets)),
            _dump_json(record.recipe, "recipe"),
            record.method,
            _dump_json(record.params, "params"),
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


def write_provenance(record: AdapterRecord, folder: Path) -> None:
    """``adaptforge.json`` beside the PEFT files: the whole record but metrics, so that the catalog row can be
    re-created from the folder alone (:func:`rebuild_catalog`). PEFT ignores the extra file."""
    info = {"format": PROVENANCE_FORMAT, "version": 1, **record.to_json()}
    info.pop("path")
    (folder / EXPORT_RECORD_FILE).write_text(json.dumps(info, indent=1, sort_keys=True))


def read_provenance(folder: Path) -> AdapterRecord:
    """The record stored beside an adapter by :func:`write_provenance`; LibraryError naming the field if unusable."""
    path = folder / EXPORT_RECORD_FILE
    if not path.is_file():
        raise LibraryError(f"{path}: missing; this adapter was stored before provenance files were written")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise LibraryError(f"{path}: unreadable ({err})") from None
    info = parse_json(text, str(path), LibraryError)
    if not isinstance(info, dict) or info.get("format") != PROVENANCE_FORMAT:
        raise LibraryError(f"{path}: not an adaptforge adapter record (field 'format' is not {PROVENANCE_FORMAT!r})")
    try:
        embedding = info.get("embedding")
        return AdapterRecord(
            id=str(info["id"]),
            name=validate_name(info["name"]),
            task=info.get("task"),
            description=info.get("description"),
            base_model=_require_text(info["base_model"], "base_model"),
            base_fingerprint=_require_text(info["base_fingerprint"], "base_fingerprint"),
            rank=int(info["rank"]),
            targets=tuple(str(t) for t in info["targets"]),
            recipe=dict(info.get("recipe") or {}),
            method=_require_text(info["method"], "method"),
            params=dict(info.get("params") or {}),
            parents=tuple(str(p) for p in info.get("parents") or ()),
            checksum=_require_text(info["checksum"], "checksum"),
            created=float(info["created"]),
            path=folder,
            embedding=None if embedding is None else _as_embedding(embedding),
            config_checksum=_require_text(info["config_checksum"], "config_checksum"),
            kind=_kind(info.get("kind") or infer_kind(info.get("recipe"), str(info["method"]))),
            extra_checksums={str(k): str(v) for k, v in (info.get("extra_checksums") or {}).items()},
        )
    except KeyError as err:
        raise LibraryError(f"{path}: missing field {err.args[0]!r}") from None
    except (TypeError, ValueError) as err:
        raise LibraryError(f"{path}: {err}") from None


# --------------------------------------------------------------------------------------------------


class Library:
    """A folder of adapters with a SQLite catalog; safe for several processes at once."""

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

    def adapter_folders(self) -> list[Path]:
        """Folders under ``adapters/`` named like an adapter id (committed or orphaned; not temp folders)."""
        if not self.adapters_dir.is_dir():
            return []
        return sorted(p for p in self.adapters_dir.iterdir() if p.is_dir() and _ID.match(p.name))

    def _refuse_orphaned_adapters(self, why: str) -> None:
        folders = self.adapter_folders()
        if folders:
            raise LibraryError(
                f"library {self.root}: {why}, but {ADAPTERS_DIR}/ holds {len(folders)} adapter folder(s); refusing "
                f"to start an empty catalog that would orphan them. Run `adaptforge library rebuild --library "
                f"{self.root}` to re-create the catalog from the folders"
            )

    def __repr__(self) -> str:
        return f"Library({str(self.root)!r})"

    @property
    def runs_dir(self) -> Path:
        """Where in-progress training runs keep resumable checkpoints (``runs/<name>``); not created here."""
        return self.root / RUNS_DIR

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

    def exists(self, name_or_id: str) -> bool:
        """Whether an adapter with this name or id is in the catalog."""
        return name_or_id in self

    def __len__(self) -> int:
        with self._connect() as conn:
            return int(conn.execute("SELECT COUNT(*) FROM adapters").fetchone()[0])

    def __contains__(self, name_or_id: object) -> bool:
        if not isinstance(name_or_id, str):
            return False
        with self._connect() as conn:
            return self._find(conn, name_or_id) is not None

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

    # ---------------------------------------------------------------- lookups

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
            f"SELECT {_RECORD_COLUMNS} FROM adapters {where} ORDER BY created, rowid", tuple(args)
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
            embedding = np.frombuffer(blob, dtype=_EMBEDDING_DTYPE).astype(np.float32)
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

    def get(self, name_or_id: str) -> AdapterRecord:
        """The record of one adapter by name or id; unknown -> LibraryError with close-name suggestions."""
        with self._connect() as conn:
            ident = self._resolve(conn, name_or_id)
            return self._records(conn, "WHERE id = ?", (ident,))[0]

    def list(
        self, task: str | None = None, base_fingerprint: str | None = None, kind: str | None = None
    ) -> list[AdapterRecord]:
        """All adapters (optionally of one task, one base and/or one kind), oldest first."""
        clauses, args = [], []
        if kind is not None:
            clauses.append("kind = ?")
            args.append(_kind(kind))
        if task is not None:
            clauses.append("task = ?")
            args.append(task)
        if base_fingerprint is not None:
            clauses.append("base_fingerprint = ?")
            args.append(base_fingerprint)
        where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
        with self._connect() as conn:
            return self._records(conn, where, args)

    def lineage(self, name_or_id: str) -> list[AdapterRecord]:
        """Parent records in order. Parents removed since are skipped (with a warning); ``parents`` keeps their ids."""
        with self._connect() as conn:
            ident = self._resolve(conn, name_or_id)
            record = self._records(conn, "WHERE id = ?", (ident,))[0]
            if not record.parents:
                return []
            marks = ",".join("?" * len(record.parents))
            found = {r.id: r for r in self._records(conn, f"WHERE id IN ({marks})", record.parents)}
        missing = [p for p in record.parents if p not in found]
        if missing:
            logger.warning("adapter %r: parent(s) %s are no longer in the library", record.name, ", ".join(missing))
        return [found[p] for p in record.parents if p in found]

    def children(self, name_or_id: str) -> list[AdapterRecord]:
        """Adapters that list this one as a parent, oldest first."""
        with self._connect() as conn:
            ident = self._resolve(conn, name_or_id)
            return self._records(conn, "WHERE id IN (SELECT child_id FROM lineage WHERE parent_id = ?)", (ident,))

    # ---------------------------------------------------------------- adding

    def check_free(self, name: str, overwrite: bool = False) -> None:
        """Refuse an invalid name, or a taken one unless ``overwrite``: called by every verb before any work."""
        validate_name(name)
        if self.exists(name) and not overwrite:
            raise LibraryError(
                f"adapter name {name!r} already exists in {self.root}; choose another name or pass --overwrite"
            )

    def task_adapter(self, task: str, base_fingerprint: str, prefer: Sequence[str] = ()) -> AdapterRecord | None:
        """The task's own adapter (:attr:`AdapterRecord.is_task_adapter`) on a base: the first of ``prefer``
        (names or ids, e.g. a merge's parents) that is one, else the newest in the library."""
        for ident in prefer:
            if self.exists(ident):
                rec = self.get(ident)
                if rec.task == task and rec.is_task_adapter and rec.base_fingerprint == base_fingerprint:
                    return rec
        own = [r for r in self.list(task=task, base_fingerprint=base_fingerprint) if r.is_task_adapter]
        return max(own, key=lambda r: r.created) if own else None

    def add(
        self,
        delta: LoraDelta,
        *,
        name: str,
        base_model: str,
        base_fingerprint: str,
        task: str | None = None,
        description: str | None = None,
        embedding: np.ndarray | None = None,
        recipe: dict | None = None,
        method: str = "train",
        params: dict | None = None,
        kind: str | None = None,
        provenance: Provenance | None = None,
        parents: Sequence[str] = (),
        metrics: Sequence[MetricRow] = (),
        overwrite: bool = False,
        snapshots: Snapshots | None = None,
    ) -> AdapterRecord:
        """Store ``delta`` atomically under ``name``; returns its record.

        ``snapshots`` (training snapshots, :mod:`adaptforge.snapshots`) are written beside the PEFT files and
        checksummed with them; they are part of this adapter, not adapters of their own.

        ``kind`` says what made it (one of :data:`KINDS`; default: inferred from ``recipe`` and ``method``,
        see :func:`infer_kind`); pipelines pass a typed :class:`~adaptforge.provenance.Provenance` instead
        of these loose fields. ``parents`` may be names or ids (stored as ids, in order). ``metrics`` rows are
        stored against the new adapter whatever their ``adapter_id``. ``overwrite=True`` replaces an adapter
        of the same name in the same transaction (new id; the old adapter's metrics go with it, lineage rows
        that name it as a parent stay).
        """
        validate_name(name)
        if provenance is not None:
            if recipe is not None or params is not None or kind is not None or method != "train":
                raise LibraryError("give either provenance or recipe/method/params/kind, not both")
            recipe, method, params, kind = provenance.recipe(), provenance.method, provenance.params(), provenance.kind
        _require_text(base_model, "base_model")
        _require_text(base_fingerprint, "base_fingerprint")
        _require_text(method, "method")
        kind = _kind(kind if kind is not None else infer_kind(recipe, method))
        if not isinstance(delta, LoraDelta) or len(delta) == 0:
            raise LibraryError(f"adapter {name!r}: delta must be a LoraDelta with at least one module")
        bad = delta.non_finite()
        if bad is not None:
            raise LibraryError(f"adapter {name!r} was not stored: {bad}")
        if isinstance(parents, str):
            raise LibraryError("parents must be a sequence of names or ids, not a single string")
        parents = tuple(parents)
        if task is not None:
            _require_text(task, "task")
        vector = None if embedding is None else _as_embedding(embedding)
        recipe_json = _dump_json(recipe or {}, "recipe")
        params_json = _dump_json(params or {}, "params")
        metric_rows = [self._check_metric_row(m) for m in metrics]
        rank = max(delta.ranks.values())

        # Fail fast (before writing any file) on the common mistakes; re-checked under the write lock.
        with self._connect() as conn:
            if not overwrite and self._name_taken(conn, name):
                raise self._name_taken_error(name)
            parent_ids = [self._resolve(conn, parent, "parent adapter") for parent in parents]

        ident = _new_id()
        tmp = self.adapters_dir / f"{TMP_PREFIX}{uuid.uuid4().hex}"
        final = self.adapters_dir / ident
        created = time.time()
        try:
            write_adapter(delta, tmp, base_model)
            checksum = sha256_file(tmp / WEIGHTS_FILE)
            config_checksum = sha256_file(tmp / CONFIG_FILE)
            extra = {}
            if snapshots is not None and len(snapshots):
                extra[SNAPSHOTS_FILE] = sha256_file(snapshots.write(tmp))
            record = AdapterRecord(
                id=ident,
                name=name,
                task=task,
                description=description,
                base_model=base_model,
                base_fingerprint=base_fingerprint,
                rank=rank,
                targets=tuple(delta.targets),
                recipe=json.loads(recipe_json),
                method=method,
                params=json.loads(params_json),
                parents=tuple(parent_ids),
                checksum=checksum,
                created=created,
                path=final,
                embedding=None if vector is None else self._frozen(vector),
                config_checksum=config_checksum,
                kind=kind,
                extra_checksums=extra,
            )
            write_provenance(record, tmp)
            share_files(tmp)
            fsync_tree(tmp)
        except (OSError, SafetensorError) as err:  # a full disk, a file-size limit, a read-only folder
            remove_inside(tmp, self.adapters_dir)
            raise LibraryError(
                f"adapter {name!r} was not stored: writing {tmp} failed ({getattr(err, 'strerror', None) or err}); "
                "the library is unchanged"
            ) from None
        except BaseException:
            remove_inside(tmp, self.adapters_dir)
            raise

        replaced: str | None = None
        renamed = committed = False
        try:
            with self._connect() as conn:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    existing = conn.execute("SELECT id FROM adapters WHERE name = ?", (name,)).fetchone()
                    if existing is not None and not overwrite:
                        raise self._name_taken_error(name)
                    if [self._resolve(conn, p, "parent adapter") for p in parents] != parent_ids:
                        raise LibraryError(
                            f"adapter {name!r}: a parent was replaced by another process while it was being "
                            "written; run the command again"
                        )
                    if existing is not None:
                        replaced = str(existing[0])
                        if replaced in parent_ids:
                            raise LibraryError(
                                f"cannot overwrite adapter {name!r} with an adapter derived from it: the lineage "
                                "would point at a removed adapter; choose a new name"
                            )
                    os.rename(tmp, final)
                    renamed = True
                    fsync_dir(self.adapters_dir)
                    if replaced is not None:
                        self._warn_orphaned_children(conn, replaced, name)
                        conn.execute("DELETE FROM adapters WHERE id = ?", (replaced,))
                    _insert_record(conn, record)
                    self._insert_metrics(conn, [(ident, m) for m in metric_rows])
                    conn.execute("COMMIT")
                    committed = True
                except sqlite3.IntegrityError as err:
                    if "adapters.name" in str(err):
                        raise self._name_taken_error(name) from None
                    raise
                finally:
                    if not committed and conn.in_transaction:
                        conn.execute("ROLLBACK")
        except BaseException:
            if not committed:
                remove_inside(final if renamed else tmp, self.adapters_dir)
            raise

        if replaced is not None:
            remove_inside(self.adapters_dir / replaced, self.adapters_dir)
            logger.info("replaced adapter %r (%s -> %s) in %s", name, replaced, ident, self.root)
        else:
            logger.info("added adapter %r (%s) to %s", name, ident, self.root)
        return record

    @staticmethod
    def _frozen(vector: np.ndarray) -> np.ndarray:
        out = np.array(vector, dtype=np.float32)
        out.flags.writeable = False
        return out

    @staticmethod
    def _name_taken(conn: sqlite3.Connection, name: str) -> bool:
        return conn.execute("SELECT 1 FROM adapters WHERE name = ?", (name,)).fetchone() is not None

    def _name_taken_error(self, name: str) -> LibraryError:
        return LibraryError(
            f"adapter name {name!r} already exists in {self.root}; choose another name or pass --overwrite "
            "(overwrite=True) to replace it"
        )

    def _warn_orphaned_children(self, conn: sqlite3.Connection, ident: str, name: str) -> None:
        children = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM adapters WHERE id IN (SELECT child_id FROM lineage WHERE parent_id = ?)", (ident,)
            )
        ]
        if children:
            logger.warning(
                "adapter %r (%s) is a parent of %s; their lineage keeps its id, now missing",
                name,
                ident,
                ", ".join(repr(c) for c in children),
            )

    # ---------------------------------------------------------------- loading, export, integrity

    @staticmethod
    def _verify(record: AdapterRecord) -> None:
        """Both files present with the sha256 recorded (by the catalog, or by the provenance file on rebuild)."""
        files = (
            (WEIGHTS_FILE, record.checksum),
            (CONFIG_FILE, record.config_checksum),
            *record.extra_checksums.items(),
        )
        for filename, expected in files:
            path = record.path / filename
            try:
                actual = sha256_file(path)
            except FileNotFoundError:
                raise CorruptAdapterError(
                    f"adapter {record.name!r} ({record.id}): {filename} is missing at {path}"
                ) from None
            if actual != expected:
                raise CorruptAdapterError(
                    f"adapter {record.name!r} ({record.id}): {filename} at {path} has sha256 {actual[:16]}..., "
                    f"the catalog recorded {expected[:16]}...; the file is corrupted or was modified"
                )

    def load(self, name_or_id: str, expected_fingerprint: str | None = None) -> tuple[LoraDelta, AdapterRecord]:
        """The adapter's tensors and record, after checking both checksums and (if given) the base fingerprint."""
        record = self.get(name_or_id)
        self._verify(record)
        if expected_fingerprint is not None and expected_fingerprint != record.base_fingerprint:
            raise BaseMismatchError(
                f"adapter {record.name!r} was made for base model {record.base_model!r} with fingerprint "
                f"{record.base_fingerprint}, but the loaded base has fingerprint {expected_fingerprint}"
            )
        try:
            delta, _ = read_adapter(record.path)
        except AdapterFormatError as err:
            raise CorruptAdapterError(f"adapter {record.name!r} ({record.id}): {err}") from None
        return delta, record

    def snapshots(self, name_or_id: str) -> Snapshots | None:
        """The training snapshots stored with an adapter (checksums checked), or None if it has none."""
        record = self.get(name_or_id)
        if SNAPSHOTS_FILE not in record.extra_checksums:
            return None
        self._verify(record)
        try:
            return read_snapshots(record.path / SNAPSHOTS_FILE)
        except AdaptforgeError as err:
            raise CorruptAdapterError(f"adapter {record.name!r} ({record.id}): {err}") from None

    def check(self, record: AdapterRecord) -> list[str]:
        """Every integrity problem of one stored adapter: files present, checksums, a readable and finite PEFT
        config and tensors that agree with each other and with the record, and its provenance file."""
        try:
            self._verify(record)
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
        """Check one or all adapters (:meth:`check`); returns one message per problem (empty: all good)."""
        records = [self.get(name_or_id)] if name_or_id is not None else self.list()
        return [problem for record in records for problem in self.check(record)]

    def export(
        self,
        name_or_id: str,
        dest: str | Path,
        config_updates: Mapping[str, Any] | None = None,
        extra_files: Mapping[str, str] | None = None,
    ) -> Path:
        """Copy the verified PEFT folder to ``dest`` (new or empty) plus ``adaptforge.json`` with the record.

        ``config_updates`` are set in the copy's ``adapter_config.json`` (e.g. a resolvable base path and the
        task type ``AutoPeftModel`` needs) and ``extra_files`` written beside it (a model card); the weights are
        copied byte for byte and checked against the catalog."""
        record = self.get(name_or_id)
        self._verify(record)
        dest = Path(dest).expanduser().resolve()
        if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
            raise LibraryError(f"export destination {dest} exists and is not an empty folder")
        with staged_folder(dest) as tmp:
            for filename in (CONFIG_FILE, WEIGHTS_FILE):
                shutil.copyfile(record.path / filename, tmp / filename)
            if config_updates:
                config = json.loads((tmp / CONFIG_FILE).read_text())
                config.update(config_updates)
                (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))
            for filename, text in (extra_files or {}).items():
                (tmp / filename).write_text(text, encoding="utf-8")
            (tmp / EXPORT_RECORD_FILE).write_text(json.dumps(record.to_json(), indent=2, sort_keys=True))
        if sha256_file(dest / WEIGHTS_FILE) != record.checksum:
            raise CorruptAdapterError(f"adapter {record.name!r}: the exported copy at {dest} differs from the library")
        logger.info("exported adapter %r to %s", record.name, dest)
        return dest

    # ---------------------------------------------------------------- removal and garbage collection

    def remove(self, name_or_id: str, force: bool = False) -> None:
        """Delete an adapter, its metrics and its folder.

        Refused while other adapters list it as a parent, unless ``force=True``; their lineage rows then
        keep its id (reported as missing by :meth:`lineage`).
        """
        with self._transaction() as conn:
            ident = self._resolve(conn, name_or_id)
            name = conn.execute("SELECT name FROM adapters WHERE id = ?", (ident,)).fetchone()[0]
            children = [
                r[0]
                for r in conn.execute(
                    "SELECT name FROM adapters WHERE id IN (SELECT child_id FROM lineage WHERE parent_id = ?)", (ident,)
                )
            ]
            if children and not force:
                raise LibraryError(
                    f"adapter {name!r} is a parent of {', '.join(repr(c) for c in children)}; "
                    "remove those first, or pass --force (their lineage then shows it as missing)"
                )
            conn.execute("DELETE FROM adapters WHERE id = ?", (ident,))
        remove_inside(self.adapters_dir / ident, self.adapters_dir)
        logger.info("removed adapter %r (%s) from %s", name, ident, self.root)

    def leftovers(self, min_age: float = 3600.0) -> Leftovers:
        """What crashed or abandoned work left behind, without removing anything (see :meth:`gc`)."""
        now = time.time()

        def stale(entry: Path) -> bool:
            try:
                return now - entry.stat().st_mtime >= min_age
            except FileNotFoundError:
                return False

        temp = [e for e in sorted(self.adapters_dir.glob(f"{TMP_PREFIX}*")) if e.is_dir()]
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
            known = {r[0] for r in conn.execute("SELECT id FROM adapters")}
        folders = self.adapter_folders()
        return Leftovers(
            orphans=tuple(p for p in folders if p.name not in known),
            stale_temp=tuple(p for p in temp if stale(p)),
            runs=tuple(runs),
            missing=tuple(sorted(i for i in known if not (self.adapters_dir / i).is_dir())),
            live=tuple(self.runs_dir / n for n in sorted(live)),
        )

    def gc(self, min_age: float = 3600.0) -> list[Path]:
        """Remove temp folders (adapters and runs) older than ``min_age`` seconds and adapter folders with no row.

        Holds the write lock while scanning, so no other process can be between rename and commit. Temp
        folders younger than ``min_age`` may belong to an add still writing and are kept; so are resumable
        run checkpoints (``runs/<name>``) and anything not named like an adapter id or a temp folder.
        """
        removed: list[Path] = []
        with self._transaction():
            found = self.leftovers(min_age)
            for entry in (*found.stale_temp, *found.orphans):
                remove_inside(entry, entry.parent)
                removed.append(entry)
                logger.info("gc: removed %s", entry)
        for ident in found.missing:
            logger.warning("gc: adapter %s has a catalog row but no folder in %s", ident, self.adapters_dir)
        return removed

    # ---------------------------------------------------------------- metrics

    @staticmethod
    def _check_metric_row(row: MetricRow) -> MetricRow:
        if not isinstance(row, MetricRow):
            raise LibraryError(f"metrics must be MetricRow objects, got {type(row).__name__}")
        _require_text(row.base_fingerprint, "metric base_fingerprint")
        _require_text(row.task, "metric task")
        _require_text(row.split, "metric split")
        _require_text(row.metric, "metric name")
        try:
            float(row.value)
        except (TypeError, ValueError):
            raise LibraryError(f"metric {row.metric!r} value {row.value!r} is not a number") from None
        if not isinstance(row.n, (int, np.integer)) or isinstance(row.n, bool) or row.n < 0:
            raise LibraryError(f"metric {row.metric!r}: n must be a non-negative integer, got {row.n!r}")
        return row

    @staticmethod
    def _insert_metrics(conn: sqlite3.Connection, rows: Sequence[tuple[str | None, MetricRow]]) -> None:
        # A non-finite metric is no number: stored as NULL (SQLite has no NaN), read back as NaN.
        conn.executemany(
            "INSERT INTO metrics (adapter_id, base_fingerprint, task, split, metric, value, n, created, subset, "
            "task_fingerprint) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    ident,
                    m.base_fingerprint,
                    m.task,
                    m.split,
                    m.metric,
                    float(m.value) if math.isfinite(float(m.value)) else None,
                    int(m.n),
                    float(m.created),
                    m.subset,
                    m.task_fingerprint,
                )
                for ident, m in rows
            ],
        )

    def record_metrics(
        self,
        adapter: str | None,
        base_fingerprint: str,
        task: str,
        split: str,
        metrics: Mapping[str, float],
        n: int,
        *,
        subset: str = "all",
        task_fingerprint: str | None = None,
    ) -> None:
        """Store one row per metric; ``adapter=None`` records the bare base model (zero-shot). ``subset`` says
        which examples of the split were scored (an :class:`~adaptforge.evaluate.EvalResult`'s ``subset``)."""
        if not metrics:
            raise LibraryError("record_metrics: no metrics given")
        created = time.time()
        rows = [
            self._check_metric_row(
                MetricRow(None, base_fingerprint, task, split, str(k), v, n, created, subset, task_fingerprint)
            )
            for k, v in metrics.items()
        ]
        with self._transaction() as conn:
            ident = None if adapter is None else self._resolve(conn, adapter)
            self._insert_metrics(conn, [(ident, m) for m in rows])

    def metrics(
        self,
        name_or_id: str | None = None,
        base_fingerprint: str | None = None,
        *,
        task: str | None = None,
        split: str | None = None,
        zero_shot: bool = False,
        subset: str | None = None,
    ) -> list[MetricRow]:
        """Metric rows, oldest first: of one adapter, or all (``zero_shot=True``: only adapter-less rows);
        ``subset`` keeps only rows scored on those examples (``"all"``: the whole split)."""
        clauses, args = [], []
        with self._connect() as conn:
            if name_or_id is not None:
                clauses.append("adapter_id = ?")
                args.append(self._resolve(conn, name_or_id))
            elif zero_shot:
                clauses.append("adapter_id IS NULL")
            filters = (("base_fingerprint", base_fingerprint), ("task", task), ("split", split), ("subset", subset))
            for column, value in filters:
                if value is not None:
                    clauses.append(f"{column} = ?")
                    args.append(value)
            where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
            rows = conn.execute(
                "SELECT adapter_id, base_fingerprint, task, split, metric, value, n, created, subset, task_fingerprint "
                "FROM metrics "
                f"{where} ORDER BY created, rowid",
                args,
            ).fetchall()
        return [
            MetricRow(a, fp, t, s, m, float("nan") if v is None else float(v), int(n), float(c), sub, tfp)
            for a, fp, t, s, m, v, n, c, sub, tfp in rows
        ]

    # ---------------------------------------------------------------- similarity

    def similar(
        self, embedding: np.ndarray, k: int = 5, base_fingerprint: str | None = None
    ) -> list[tuple[AdapterRecord, float]]:
        """The ``k`` adapters whose description embeddings are closest (cosine) to ``embedding``, best first.

        Adapters without an embedding, or with one of a different dimension, are not candidates.
        """
        if k < 1:
            raise LibraryError(f"similar: k must be at least 1, got {k}")
        query = _as_embedding(embedding).astype(np.float64)
        query /= np.linalg.norm(query)
        where = "WHERE embedding IS NOT NULL AND embedding_dim = ?"
        args: list[Any] = [int(query.size)]
        if base_fingerprint is not None:
            where += " AND base_fingerprint = ?"
            args.append(base_fingerprint)
        with self._connect() as conn:
            rows = conn.execute(
                f"SELECT id, embedding, created FROM adapters {where} ORDER BY created, rowid", tuple(args)
            ).fetchall()
            skipped = conn.execute(
                "SELECT COUNT(*) FROM adapters WHERE embedding IS NOT NULL AND embedding_dim != ?", (int(query.size),)
            ).fetchone()[0]
            if skipped:
                logger.warning(
                    "similar: %d adapter(s) have embeddings of another dimension than %d", skipped, query.size
                )
            if not rows:
                return []
            # Score from the raw embedding column; build records only for the k returned (a record costs far more
            # than a dot product, and a library holds thousands of adapters).
            blob = b"".join(r[1] for r in rows)
            if len(blob) != len(rows) * query.size * _EMBEDDING_DTYPE.itemsize:
                raise LibraryError(f"catalog {self.catalog_path}: an embedding's size does not match its recorded dim")
            matrix = np.frombuffer(blob, dtype=_EMBEDDING_DTYPE).reshape(len(rows), query.size).astype(np.float64)
            scores = matrix @ query / np.linalg.norm(matrix, axis=1)
            created = np.array([float(r[2]) for r in rows])
            # best score first, then the older adapter; scores equal to 12 decimals are ties (the same embedding can
            # score a few ulps apart at two positions of one matrix product)
            top = np.lexsort((created, -np.round(scores, 12)))[:k]
            ids = [rows[i][0] for i in top]
            found = {r.id: r for r in self._records(conn, f"WHERE id IN ({', '.join('?' * len(ids))})", ids)}
        return [(found[rows[i][0]], float(scores[i])) for i in top]


# --------------------------------------------------------------------------------------------------
# Recovery


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

    Each ``adapters/<id>/`` whose provenance file (:func:`write_provenance`) agrees with its files' checksums
    becomes a catalog row again, with its lineage; metrics were only in the catalog and are not recovered
    (re-run ``eval``). A damaged catalog is renamed aside, never deleted; a usable one is refused. The new
    catalog is built in a temp file and renamed into place, so a crash leaves the old state. When two folders
    claim one name (an overwrite cut short), the newer one wins and the other stays an orphan for ``gc``.
    """
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
    for folder in sorted(p for p in adapters.iterdir() if p.is_dir() and _ID.match(p.name)):
        try:
            record = read_provenance(folder)
            if record.id != folder.name:
                raise LibraryError(f"{folder / EXPORT_RECORD_FILE}: records id {record.id}, not {folder.name}")
            Library._verify(record)
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
    builder = Library.__new__(Library)
    builder.root, builder.catalog_path, builder.adapters_dir = root, tmp, adapters
    try:
        builder._init_schema(create=True, adopt=True)
        with builder._transaction() as conn:
            for record in sorted(found.values(), key=lambda r: r.created):
                _insert_record(conn, record)
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
