"""The adapter library: a folder holding ``catalog.sqlite`` and one PEFT folder per adapter.

Layout::

    <root>/catalog.sqlite          SQLite in WAL mode: adapters, lineage, metrics, schema_version, generation
    <root>/adapters/<id>/          adapter_config.json + adapter_model.safetensors (written by write_adapter)
                                   + adaptforge.json (the record, for rebuild) [+ snapshots.safetensors]
    <root>/adapters/.tmp-<random>/ an add in progress (or one that crashed); never read
    <root>/generators/<key>/       fitted generators, cached (checked by verify, collected by gc when unused)
    <root>/index/                  the embedding index `similar` reads, rebuilt whenever the catalog changed
    <root>/runs/<name>/            resumable checkpoints of training runs in progress

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
* **Reading the catalog loads no tensor code.** torch is imported only when adapter files are written or
  read, so ``library list`` starts in a fraction of a second.

One module per job: :mod:`.records` (what is stored), :mod:`.schema` (migrations), :mod:`.catalog`
(connections, rows), :mod:`.queries`, :mod:`.storage` (add, remove, load, export), :mod:`.files` (an
adapter folder's checksums and provenance file), :mod:`.metrics`, :mod:`.similarity`, :mod:`.maintenance`
(verify, leftovers, gc), :mod:`.generators`, :mod:`.runs` and :mod:`.rebuild`.
"""

from __future__ import annotations

from adaptforge.library.catalog import BUSY_TIMEOUT_S
from adaptforge.library.files import read_provenance, write_provenance
from adaptforge.library.maintenance import Leftovers, Maintenance
from adaptforge.library.metrics import shown_row
from adaptforge.library.rebuild import RebuildReport, rebuild_catalog
from adaptforge.library.records import (
    ADAPTERS_DIR,
    CATALOG_FILE,
    EXPORT_RECORD_FILE,
    GENERATORS_DIR,
    KINDS,
    LOCKS_DIR,
    MAX_NAME_LENGTH,
    OWN_KINDS,
    PROVENANCE_FORMAT,
    RUNS_DIR,
    AdapterRecord,
    BaseLike,
    BaseMismatchError,
    BaseRef,
    CorruptAdapterError,
    LibraryError,
    MetricRow,
    TaskEntry,
    validate_name,
)
from adaptforge.library.runs import Runs
from adaptforge.library.schema import MIGRATIONS, SCHEMA_VERSION
from adaptforge.library.similarity import Similarity
from adaptforge.library.storage import Storage


class Library(Storage, Maintenance, Similarity, Runs):
    """A folder of adapters with a SQLite catalog; safe for several processes at once.

    ``Library(root, create=True)`` opens (or creates) it. Lookups (``get``, ``list``, ``lineage``, ``children``,
    ``task_adapter``), storage (``add``, ``remove``, ``load``, ``snapshots``, ``export``), metrics
    (``record_metrics``, ``metrics``), ``similar``, maintenance (``check``, ``verify``, ``leftovers``, ``gc``)
    and training runs (``run_dir``, ``run_lock``, ``clear_run``) each live in their own module.
    """


__all__ = [
    "ADAPTERS_DIR",
    "BUSY_TIMEOUT_S",
    "CATALOG_FILE",
    "EXPORT_RECORD_FILE",
    "GENERATORS_DIR",
    "KINDS",
    "LOCKS_DIR",
    "MAX_NAME_LENGTH",
    "MIGRATIONS",
    "OWN_KINDS",
    "PROVENANCE_FORMAT",
    "RUNS_DIR",
    "SCHEMA_VERSION",
    "AdapterRecord",
    "BaseLike",
    "BaseMismatchError",
    "BaseRef",
    "CorruptAdapterError",
    "Leftovers",
    "Library",
    "LibraryError",
    "MetricRow",
    "RebuildReport",
    "TaskEntry",
    "read_provenance",
    "rebuild_catalog",
    "shown_row",
    "validate_name",
    "write_provenance",
]
