"""The catalog's schema. ``MIGRATIONS[i]`` takes a catalog from version i to i + 1; to change the schema,
append a function (never edit a shipped one). Opening a library runs the missing steps in one transaction."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable

from adaptforge.provenance import legacy_kind


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


def _schema_v2(conn: sqlite3.Connection) -> None:
    """Adds ``kind`` (what made the adapter), backfilled from each row's recipe and method."""
    conn.execute("ALTER TABLE adapters ADD COLUMN kind TEXT NOT NULL DEFAULT 'other'")
    rows = conn.execute("SELECT id, recipe, method FROM adapters").fetchall()
    for ident, recipe, method in rows:
        try:
            parsed = json.loads(recipe)
        except json.JSONDecodeError:
            parsed = {}
        kind = legacy_kind(parsed if isinstance(parsed, dict) else {}, method)
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


def _schema_v5(conn: sqlite3.Connection) -> None:
    """A counter every change to ``adapters`` bumps (by trigger, so no write path can forget it) and a random
    id of this catalog file (a rebuilt catalog gets a new one): what files derived from the catalog, such as
    the embedding index, are keyed by."""
    conn.execute("CREATE TABLE IF NOT EXISTS generation (value INTEGER NOT NULL, catalog_id TEXT NOT NULL)")
    conn.execute(
        "INSERT INTO generation (value, catalog_id) SELECT 0, lower(hex(randomblob(8))) "
        "WHERE NOT EXISTS (SELECT 1 FROM generation)"
    )
    for event in ("INSERT", "DELETE", "UPDATE"):
        conn.execute(
            f"CREATE TRIGGER IF NOT EXISTS adapters_{event.lower()}_generation AFTER {event} ON adapters "
            "BEGIN UPDATE generation SET value = value + 1; END"
        )


MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (
    _schema_v1,
    _schema_v2,
    _schema_v3,
    _schema_v4,
    _schema_v5,
)
SCHEMA_VERSION = len(MIGRATIONS)

RECORD_COLUMNS = (
    "id, name, task, description, embedding, embedding_dim, base_model, base_fingerprint, rank, targets, "
    "recipe, method, params, checksum, config_checksum, created, kind, extra_checksums"
)
