"""Reading the catalog: one adapter by name or id, listings by task, base and kind, lineage both ways, and
the rule for a task's own adapter."""

from __future__ import annotations

from collections.abc import Sequence

from adaptforge.library.catalog import Catalog, logger
from adaptforge.library.records import AdapterRecord, LibraryError, check_kind, validate_name


class Queries(Catalog):
    """Lookups over the catalog; each opens its own connection."""

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
            args.append(check_kind(kind))
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
