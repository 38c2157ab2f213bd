"""The adapter cache: the first tier is adapters resident in memory (bounded, least recently used evicted,
pinned ones never), the second the library on disk, read through its catalog on every miss so an adapter
added while the server runs is found without a restart (hot-load), with its checksums verified on load.

Only the model's worker thread changes what is resident (:meth:`AdapterCache.acquire`, :meth:`release`), so
a batch's adapters cannot be evicted under it; request threads may ask :meth:`AdapterCache.contains` to
decide whether to read an adapter from disk ahead of the worker.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import torch

from adaptforge.adapters import check_compatible
from adaptforge.core import LoraDelta
from adaptforge.serve.batched import Resident, SlotTable, prepare
from adaptforge.serve.metrics import Metrics

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Lru(Generic[K, V]):
    """A bounded, thread-safe mapping that forgets its least recently used entry (heads, label embeddings,
    request-time merges and routers)."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("an LRU needs room for at least one entry")
        self.capacity = capacity
        self._items: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            if key not in self._items:
                return None
            self._items.move_to_end(key)
            return self._items[key]

    def put(self, key: K, value: V) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


@dataclass(frozen=True)
class AdapterRef:
    """What a request row asks for: ``key`` identifies the tensors (a library id with its checksum, or a
    request-time merge's hash), ``name`` is what the response shows, ``load`` reads the tensors on a miss.
    ``delta`` is set when a request thread already read them (so the worker does not)."""

    key: str
    name: str
    load: Callable[[], LoraDelta] = field(compare=False, repr=False)
    delta: LoraDelta | None = field(default=None, compare=False, repr=False)


class AdapterCache:
    """Resident adapters in :class:`~adaptforge.serve.batched.SlotTable`\\ s, at most ``capacity`` of them
    (pinned ones included) outside a batch; see the module docstring."""

    def __init__(self, model: torch.nn.Module, capacity: int, metrics: Metrics) -> None:
        self.model = model
        self.capacity = capacity
        self.metrics = metrics
        self.dtype = next(model.parameters()).dtype
        self._resident: OrderedDict[str, Resident] = OrderedDict()
        self._names: dict[str, str] = {}
        self._pinned: set[str] = set()
        self._tables: dict[int, SlotTable] = {}
        self._lock = threading.Lock()  # guards the dicts for readers on other threads

    def contains(self, key: str) -> bool:
        with self._lock:
            return key in self._resident

    def loaded(self) -> list[str]:
        """Names of the resident adapters, least recently used first."""
        with self._lock:
            return [self._names[k] for k in self._resident]

    def pinned(self) -> list[str]:
        with self._lock:
            return sorted(self._names[k] for k in self._pinned)

    def is_pinned(self, key: str) -> bool:
        with self._lock:
            return key in self._pinned

    def __len__(self) -> int:
        return len(self._resident)

    def pin(self, ref: AdapterRef) -> None:
        """Load ``ref`` now and never evict it (called before the server starts)."""
        outcome = self.acquire([ref])[ref.key]
        if isinstance(outcome, BaseException):
            raise outcome
        with self._lock:
            self._pinned.add(ref.key)
        self.release()

    def acquire(self, refs: Sequence[AdapterRef], keep: Collection[str] = ()) -> dict[str, Resident | BaseException]:
        """Make every ref resident for one batch: each key maps to its resident adapter or to the error that
        kept it out (a corrupted file, a removed adapter), so one bad adapter fails only its own rows. The
        batch's adapters, and those of ``keep`` (still decoding), are never evicted for each other; the cache may
        exceed its capacity until :meth:`release`."""
        wanted = list(dict.fromkeys(r.key for r in refs))
        by_key = {r.key: r for r in refs}
        out: dict[str, Resident | BaseException] = {}
        for key in wanted:
            with self._lock:
                hit = self._resident.get(key)
                if hit is not None:
                    self._resident.move_to_end(key)
            if hit is not None:
                self.metrics.inc("adaptforge_cache_hits_total")
                out[key] = hit
                continue
            self.metrics.inc("adaptforge_cache_misses_total")
            try:
                out[key] = self._load(by_key[key])
            except Exception as err:  # noqa: BLE001 - reported to the rows that asked for this adapter
                out[key] = err
                continue
            self._evict(keep=set(wanted) | set(keep))
        return out

    def release(self, keep: Collection[str] = ()) -> None:
        """After a batch: evict down to capacity (pinned adapters and those of ``keep`` stay)."""
        self._evict(keep=set(keep))

    def _load(self, ref: AdapterRef) -> Resident:
        start = time.perf_counter()
        delta = ref.delta if ref.delta is not None else ref.load()
        check_compatible(delta, self.model, what=f"adapter {ref.name!r}")
        rank, factors = prepare(delta, self.dtype)
        table = self._tables.get(rank)
        if table is None:
            table = self._tables[rank] = SlotTable(rank, self.dtype)
        resident = Resident(ref.key, table, table.put(factors), frozenset(factors))
        with self._lock:
            self._resident[ref.key] = resident
            self._names[ref.key] = ref.name
        self.metrics.observe("adaptforge_adapter_load_seconds", time.perf_counter() - start)
        return resident

    def _evict(self, keep: set[str]) -> None:
        while len(self._resident) > self.capacity:
            victim = next(self._candidates(keep), None)
            if victim is None:
                return
            with self._lock:
                resident = self._resident.pop(victim)
                self._names.pop(victim, None)
            resident.table.release(resident.slot)
            self.metrics.inc("adaptforge_cache_evictions_total")

    def _candidates(self, keep: set[str]) -> Iterator[str]:
        with self._lock:
            keys = list(self._resident)
        return (k for k in keys if k not in keep and k not in self._pinned)
