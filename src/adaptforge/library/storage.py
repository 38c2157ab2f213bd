"""Adapters in and out of the library: the atomic add (temp folder, fsync, rename and insert under one write
lock), removal, and checked reads (load, snapshots, export). The tensor code is imported on first use, so
reading the catalog alone never loads torch."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adaptforge.durable import TMP_PREFIX, fsync_dir, fsync_tree, remove_inside, sha256_file, share_files, staged_folder
from adaptforge.errors import AdaptforgeError
from adaptforge.library.catalog import insert_record, logger
from adaptforge.library.files import verify_files, write_provenance
from adaptforge.library.metrics import Metrics, insert_metrics
from adaptforge.library.queries import Queries
from adaptforge.library.records import (
    EXPORT_RECORD_FILE,
    AdapterRecord,
    BaseLike,
    BaseMismatchError,
    CorruptAdapterError,
    LibraryError,
    MetricRow,
    TaskEntry,
    as_embedding,
    check_kind,
    check_metric_row,
    dump_json,
    frozen,
    new_id,
    require_text,
    validate_name,
)

if TYPE_CHECKING:
    from adaptforge.core import LoraDelta
    from adaptforge.provenance import Provenance
    from adaptforge.snapshots import Snapshots


class Storage(Queries, Metrics):
    """Writing adapters (atomically) and reading their verified files."""

    def add(
        self,
        delta: LoraDelta,
        *,
        name: str,
        base: BaseLike,
        task: TaskEntry | None = None,
        provenance: Provenance | None = None,
        parents: Sequence[str] = (),
        metrics: Sequence[MetricRow] = (),
        overwrite: bool = False,
        snapshots: Snapshots | None = None,
    ) -> AdapterRecord:
        """Store ``delta`` atomically under ``name`` for ``base`` (a loaded backbone, or a :class:`BaseRef`) and
        ``task``; returns its record.

        ``provenance`` says how it was made (its kind, method, params and recipe, :mod:`adaptforge.provenance`);
        without one the adapter is a task adapter of unrecorded recipe (kind and method ``train``, as adapters
        stored through the API have always been). ``parents`` may be names or ids (stored as ids, in order).
        ``metrics`` rows are stored against the new adapter whatever their ``adapter_id``. ``snapshots``
        (training snapshots, :mod:`adaptforge.snapshots`) are written beside the PEFT files and checksummed with
        them. ``overwrite=True`` replaces an adapter of the same name in the same transaction (new id; the old
        adapter's metrics go with it, lineage rows that name it as a parent stay).
        """
        from safetensors import SafetensorError

        from adaptforge.adapters import CONFIG_FILE, WEIGHTS_FILE, write_adapter
        from adaptforge.core import LoraDelta
        from adaptforge.snapshots import SNAPSHOTS_FILE

        validate_name(name)
        if provenance is None:
            recipe, method, params, kind = {}, "train", {}, "train"
        else:
            recipe, method, params = provenance.recipe(), provenance.method, provenance.params()
            kind = check_kind(provenance.kind)
        base_model = require_text(base.name, "base_model")
        base_fingerprint = require_text(base.fingerprint, "base_fingerprint")
        require_text(method, "method")
        description = embedding = None
        if task is not None:
            if task.name is not None:
                require_text(task.name, "task")
            description, embedding = task.description, task.embedding
        if not isinstance(delta, LoraDelta) or len(delta) == 0:
            raise LibraryError(f"adapter {name!r}: delta must be a LoraDelta with at least one module")
        bad = delta.non_finite()
        if bad is not None:
            raise LibraryError(f"adapter {name!r} was not stored: {bad}")
        if isinstance(parents, str):
            raise LibraryError("parents must be a sequence of names or ids, not a single string")
        parents = tuple(parents)
        vector = None if embedding is None else as_embedding(embedding)
        recipe_json = dump_json(recipe, "recipe")
        params_json = dump_json(params, "params")
        metric_rows = [check_metric_row(m) for m in metrics]
        rank = max(delta.ranks.values())

        # Fail fast (before writing any file) on the common mistakes; re-checked under the write lock.
        with self._connect() as conn:
            if not overwrite and self._name_taken(conn, name):
                raise self._name_taken_error(name)
            parent_ids = [self._resolve(conn, parent, "parent adapter") for parent in parents]

        ident = new_id()
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
                task=None if task is None else task.name,
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
                embedding=None if vector is None else frozen(vector),
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
                    insert_record(conn, record)
                    insert_metrics(conn, [(ident, m) for m in metric_rows])
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
    def _name_taken(conn: sqlite3.Connection, name: str) -> bool:
        return conn.execute("SELECT 1 FROM adapters WHERE name = ?", (name,)).fetchone() is not None

    def _name_taken_error(self, name: str) -> LibraryError:
        return LibraryError(
            f"adapter name {name!r} already exists in {self.root}; choose another name or pass --overwrite "
            "(overwrite=True) to replace it"
        )

    @staticmethod
    def _children_names(conn: sqlite3.Connection, ident: str) -> list[str]:
        return [
            r[0]
            for r in conn.execute(
                "SELECT name FROM adapters WHERE id IN (SELECT child_id FROM lineage WHERE parent_id = ?)", (ident,)
            )
        ]

    def _warn_orphaned_children(self, conn: sqlite3.Connection, ident: str, name: str) -> None:
        children = self._children_names(conn, ident)
        if children:
            logger.warning(
                "adapter %r (%s) is a parent of %s; their lineage keeps its id, now missing",
                name,
                ident,
                ", ".join(repr(c) for c in children),
            )

    def remove(self, name_or_id: str, force: bool = False) -> None:
        """Delete an adapter, its metrics and its folder.

        Refused while other adapters list it as a parent, unless ``force=True``; their lineage rows then
        keep its id (reported as missing by :meth:`lineage`).
        """
        with self._transaction() as conn:
            ident = self._resolve(conn, name_or_id)
            name = conn.execute("SELECT name FROM adapters WHERE id = ?", (ident,)).fetchone()[0]
            children = self._children_names(conn, ident)
            if children and not force:
                raise LibraryError(
                    f"adapter {name!r} is a parent of {', '.join(repr(c) for c in children)}; "
                    "remove those first, or pass --force (their lineage then shows it as missing)"
                )
            conn.execute("DELETE FROM adapters WHERE id = ?", (ident,))
        remove_inside(self.adapters_dir / ident, self.adapters_dir)
        logger.info("removed adapter %r (%s) from %s", name, ident, self.root)

    # ---------------------------------------------------------------- checked reads

    def load(self, name_or_id: str, expected_fingerprint: str | None = None) -> tuple[LoraDelta, AdapterRecord]:
        """The adapter's tensors and record, after checking both checksums and (if given) the base fingerprint."""
        from adaptforge.adapters import AdapterFormatError, read_adapter

        record = self.get(name_or_id)
        verify_files(record)
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
        from adaptforge.snapshots import SNAPSHOTS_FILE, read_snapshots

        record = self.get(name_or_id)
        if SNAPSHOTS_FILE not in record.extra_checksums:
            return None
        verify_files(record)
        try:
            return read_snapshots(record.path / SNAPSHOTS_FILE)
        except AdaptforgeError as err:
            raise CorruptAdapterError(f"adapter {record.name!r} ({record.id}): {err}") from None

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
        from adaptforge.adapters import CONFIG_FILE, WEIGHTS_FILE

        record = self.get(name_or_id)
        verify_files(record)
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
