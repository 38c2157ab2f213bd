"""From request fields to things the model can run: adapters (through the catalog only: a request field is
a catalog key, never a path), the label set and description each row is scored against, request-time merges
and routers. Runs on request threads; nothing here touches the model.

Heads: without ``labels``/``description``/``task`` a row is scored against its adapter's own task (the labels
and description the catalog kept when it was made); ``task`` names a task whose labels and description the
catalog holds; ``labels`` are free (the scorer is label-agnostic) and then the description is the given one,
else the task's, else none.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from adaptforge.core import AdaptforgeError, LoraDelta, did_you_mean
from adaptforge.library import AdapterRecord, Library, LibraryError
from adaptforge.merge import MERGE_METHODS, run
from adaptforge.params import Params, is_finite_number
from adaptforge.routing import Router, rebuild, stored_router, stored_settings
from adaptforge.scorers import Scorer
from adaptforge.serve.cache import AdapterCache, AdapterRef, Lru
from adaptforge.serve.config import ServeLimits
from adaptforge.serve.errors import InvalidRequest, NotFound, TooLarge
from adaptforge.serve.metrics import Metrics
from adaptforge.serve.schema import MergeSpec, RouteSpec
from adaptforge.serve.scoring import Head

ROUTER_OF = {"arrow": "arrow", "dawin": "entropy"}  # request names -> registered routers
ROUTE_DEFAULTS: dict[str, dict[str, Any]] = {
    "arrow": {"top_k": 4, "temperature": 1.0},
    "entropy": {"temperature": 0.1, "scaling": 1.0, "prior": None},
}
CATALOG_TTL_S = 2.0  # how stale the adapter listing behind default routes, task heads and hints may be


@dataclass(frozen=True)
class MergeInputs:
    """A checked request-time merge: a data-free method, its adapters in order and its typed params."""

    method: str
    records: tuple[AdapterRecord, ...]
    params: Params
    blame: str  # the field a non-finite result is blamed on: merge.weights when given, else merge.params


@dataclass(frozen=True)
class HeadRule:
    """The request's ``labels`` / ``description`` / ``task``, applied to each row's own head."""

    labels: tuple[str, ...] | None
    description: str | None
    task: Head | None

    def for_row(self, own: Callable[[], Head], make: Callable[[str, str, Sequence[str]], Head]) -> Head:
        if self.labels is not None:
            name = self.task.task.name if self.task is not None else "request"
            description = self.description if self.description is not None else ""
            if self.description is None and self.task is not None:
                description = self.task.task.description
            return make(name, description, self.labels)
        base = self.task if self.task is not None else own()
        if self.description is not None:
            return make(base.task.name, self.description, base.task.labels)
        return base

    @property
    def given(self) -> bool:
        return self.labels is not None or self.task is not None


class Resolver:
    """Request fields -> records, adapter refs, heads, merged deltas and routers (see the module docstring)."""

    def __init__(
        self, library: Library, scorer: Scorer, cache: AdapterCache, limits: ServeLimits, metrics: Metrics
    ) -> None:
        self.library = library
        self.scorer = scorer  # tokenizes for request threads only: give it its own tokenizer (see `tokenizing`)
        self.tokenizing = threading.Lock()  # a fast tokenizer is not safe to call from several threads at once
        self.fingerprint = scorer.backbone.fingerprint
        self.cache = cache
        self.limits = limits
        self.metrics = metrics
        self.heads: Lru[tuple[str, str, tuple[str, ...]], Head] = Lru(1024)
        self.merges: Lru[str, LoraDelta] = Lru(limits.max_cached_merges)
        self.routers: Lru[tuple[Any, ...], Router] = Lru(limits.max_cached_merges)
        self._merge_locks = [threading.Lock() for _ in range(32)]
        self._catalog: tuple[float, list[AdapterRecord]] = (-1e9, [])
        self._catalog_lock = threading.Lock()

    # ------------------------------------------------------------------ catalog

    def catalog(self) -> list[AdapterRecord]:
        """This base's adapters, re-read at most every :data:`CATALOG_TTL_S` seconds (named lookups are exact)."""
        with self._catalog_lock:
            stamp, records = self._catalog
            if time.monotonic() - stamp > CATALOG_TTL_S:
                records = self.library.list(base_fingerprint=self.fingerprint)
                self._catalog = (time.monotonic(), records)
            return records

    def record(self, name: str, field: str) -> AdapterRecord:
        """The adapter ``name`` (or id) from the catalog; 404 with the closest name when unknown."""
        try:
            record = self.library.get(name)
        except LibraryError:
            if self.library.exists(name):
                raise
            hint = did_you_mean(name, [r.name for r in self.catalog()])
            raise NotFound(f"{field}: unknown adapter {name!r} in the library.{hint}", field) from None
        if record.base_fingerprint != self.fingerprint:
            raise InvalidRequest(
                f"{field}: adapter {record.name!r} was made for base model {record.base_model!r} (fingerprint "
                f"{record.base_fingerprint}); this server runs {self.scorer.backbone.name!r} "
                f"(fingerprint {self.fingerprint})",
                field,
            )
        return record

    def ref(self, record: AdapterRecord, field: str) -> AdapterRef:
        """A cache reference to a stored adapter; its tensors are read now (on this request thread) unless resident."""

        def load() -> LoraDelta:
            try:
                return self.library.load(record.id, expected_fingerprint=self.fingerprint)[0]
            except LibraryError:
                if not self.library.exists(record.id):
                    raise NotFound(f"{field}: adapter {record.name!r} was removed from the library", field) from None
                raise

        key = f"{record.id}:{record.checksum[:16]}"
        return AdapterRef(key, record.name, load, None if self.cache.contains(key) else load())

    # ------------------------------------------------------------------ heads

    def head(self, name: str, description: str, labels: Sequence[str], field: str = "labels") -> Head:
        if len(labels) > self.limits.max_labels:
            raise TooLarge(f"{field}: {len(labels)} labels, more than the limit of {self.limits.max_labels}", field)
        key = (name, description, tuple(labels))
        head = self.heads.get(key)
        if head is None:
            try:
                with self.tokenizing:
                    head = Head.build(self.scorer, name, description, labels)
            except AdaptforgeError as err:
                raise InvalidRequest(f"{field}: {err}", field) from None
            self.heads.put(key, head)
        return head

    def own_head(self, record: AdapterRecord, field: str) -> Head:
        """The task an adapter was made for: its recorded labels and description, or its task's."""
        labels = record.labels
        if len(labels) == 1:
            ((task, names),) = labels.items()
            return self.head(task, record.description or "", list(names), field)
        if record.task and "+" not in record.task:
            return self.task_head(record.task, field)
        raise InvalidRequest(
            f"labels: adapter {record.name!r} ({field}) has no single task of its own (task {record.task!r}); "
            "give labels (and a description) or a task",
            "labels",
        )

    def task_head(self, name: str, field: str = "task") -> Head:
        """A task's labels and description as the catalog recorded them with its newest own adapter."""
        records = sorted(self.catalog(), key=lambda r: (r.is_task_adapter, r.created), reverse=True)
        for record in records:
            if name in record.labels:
                return self.head(name, record.description or "", list(record.labels[name]), field)
        known = sorted({t for r in self.catalog() for t in r.labels})
        raise NotFound(
            f"{field}: unknown task {name!r}: no adapter in the library records its labels.{did_you_mean(name, known)}",
            field,
        )

    def rule(self, labels: Sequence[str] | None, description: str | None, task: str | None) -> HeadRule:
        if labels is not None:
            self.head("request", description or "", labels)  # validates the label set now, naming 'labels'
        return HeadRule(
            tuple(labels) if labels is not None else None, description, self.task_head(task) if task else None
        )

    # ------------------------------------------------------------------ routers

    def stored_router(self, record: AdapterRecord) -> Router | None:
        """The router of a stored routed adapter (as ``adaptforge eval`` rebuilds it), or ``None``."""
        if stored_settings(record.recipe) is None:
            return None
        key = ("stored", record.id)
        router = self.routers.get(key)
        if router is None:
            router = stored_router(self.library, record, self.fingerprint)
            check_servable(router, record.name)
            self.routers.put(key, router)
        return router

    def route(self, spec: RouteSpec, n_texts: int) -> tuple[Router | None, list[AdapterRecord]]:
        """A request-time router (``None`` for retrieval, which picks one adapter per text) and its candidates."""
        if spec.adapters is not None:
            records = [self.record(n, f"route.adapters[{i}]") for i, n in enumerate(spec.adapters)]
            if len({r.id for r in records}) != len(records):
                raise InvalidRequest("route.adapters: an adapter is listed twice; list each once", "route.adapters")
        else:
            records = [r for r in self.catalog() if r.is_task_adapter]
        if not records:
            raise InvalidRequest("route: the library holds no tasks' own adapters to route over", "route")
        if spec.method == "retrieval":
            if spec.params:
                raise InvalidRequest("route.params: retrieval takes no parameters", "route.params")
            records = [r for r in records if r.embedding is not None]
            if not records:
                raise InvalidRequest("route: no candidate adapter has a task-description embedding", "route.adapters")
            return None, records
        if len(records) > self.limits.max_route_adapters:
            raise TooLarge(
                f"route.adapters: {len(records)} adapters, more than the limit of {self.limits.max_route_adapters} "
                "one router may mix; list the ones to route over in route.adapters",
                "route.adapters",
            )
        name = ROUTER_OF[spec.method]
        settings = route_settings(name, spec.params)
        key = (name, tuple(r.id for r in records), json.dumps(settings, sort_keys=True))
        router = self.routers.get(key)
        if router is not None:
            self.metrics.inc("adaptforge_merge_cache_hits_total")
            return router, records
        self.metrics.inc("adaptforge_merge_cache_misses_total")
        deltas = [self.library.load(r.id, expected_fingerprint=self.fingerprint)[0] for r in records]
        for i, delta in enumerate(deltas[1:], 1):
            if list(delta) != list(deltas[0]):
                raise InvalidRequest(
                    f"route.adapters: {records[i].name!r} adapts other modules than {records[0].name!r}; a router "
                    "mixes adapters of one kind (the same target modules)",
                    "route.adapters",
                )
        try:
            router = rebuild({"router": name, **settings}, deltas)
        except (AdaptforgeError, TypeError, ValueError) as err:
            raise InvalidRequest(f"route.params: {err}", "route.params") from None
        self.routers.put(key, router)
        return router, records

    # ------------------------------------------------------------------ merges

    def merge_inputs(self, spec: MergeSpec) -> MergeInputs:
        """A request-time merge checked (method, adapters, weights, params) before anything is computed."""
        try:
            method = MERGE_METHODS.get(spec.method)
        except AdaptforgeError as err:
            raise InvalidRequest(f"merge.method: {err}", "merge.method") from None
        if method.needs_data:
            raise InvalidRequest(
                f"merge.method: {spec.method!r} learns from data and cannot run per request; store it with "
                "`adaptforge merge --data ...` and ask for the stored adapter",
                "merge.method",
            )
        if method.needs_base:
            raise InvalidRequest(
                f"merge.method: {spec.method!r} reads the base model's weights and cannot run per request; store it "
                "with `adaptforge merge --method " + spec.method + " ...` and ask for the stored adapter",
                "merge.method",
            )
        if len(spec.adapters) > self.limits.max_merge_adapters:
            raise TooLarge(
                f"merge.adapters: {len(spec.adapters)} adapters, more than the limit of "
                f"{self.limits.max_merge_adapters}",
                "merge.adapters",
            )
        records = [self.record(n, f"merge.adapters[{i}]") for i, n in enumerate(spec.adapters)]
        if len({r.id for r in records}) != len(records):
            raise InvalidRequest("merge.adapters: an adapter is listed twice; list each once", "merge.adapters")
        raw = dict(spec.params)
        if spec.weights is not None:
            if "weights" in raw:
                raise InvalidRequest("merge.params: weights are given twice (merge.weights and merge.params)", "merge")
            if len(spec.weights) != len(records):
                raise InvalidRequest(
                    f"merge.weights: one weight per adapter: {len(records)} adapters, {len(spec.weights)} weights",
                    "merge.weights",
                )
            raw["weights"] = list(spec.weights)
        try:
            params = method.parse_params(raw)
        except AdaptforgeError as err:
            raise InvalidRequest(f"merge.params: {err}", "merge.params") from None
        return MergeInputs(
            spec.method, tuple(records), params, "merge.params" if spec.weights is None else "merge.weights"
        )

    def merge(self, inputs: MergeInputs) -> AdapterRef:
        """The merge as a cache reference, computed once per (method, adapters, weights, params)."""
        identity = [inputs.method, [f"{r.id}:{r.checksum}" for r in inputs.records], inputs.params.to_dict()]
        key = "merge:" + hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:24]
        delta = self._merged(key, lambda: self._run_merge(inputs))
        name = f"{inputs.method}({','.join(r.name for r in inputs.records)})"
        return AdapterRef(key, name, lambda: delta, delta)

    def _run_merge(self, inputs: MergeInputs) -> LoraDelta:
        deltas = [self.library.load(r.id, expected_fingerprint=self.fingerprint)[0] for r in inputs.records]
        try:
            delta = run(inputs.method, deltas, inputs.params).delta
        except AdaptforgeError as err:
            raise InvalidRequest(f"merge: {err}", "merge.adapters") from None
        bad = delta.non_finite()
        if bad is not None:  # finite inputs, non-finite result: the weights or params are too large
            raise InvalidRequest(
                f"{inputs.blame}: the merged adapter is not finite ({bad}); use smaller weights or params", inputs.blame
            )
        return delta

    def _merged(self, key: str, compute: Callable[[], LoraDelta]) -> LoraDelta:
        delta = self.merges.get(key)
        if delta is None:
            with self._merge_locks[hash(key) % len(self._merge_locks)]:  # one computation per key at a time
                delta = self.merges.get(key)
                if delta is None:
                    self.metrics.inc("adaptforge_merge_cache_misses_total")
                    delta = compute()
                    self.merges.put(key, delta)
                    return delta
        self.metrics.inc("adaptforge_merge_cache_hits_total")
        return delta


def route_settings(router: str, params: dict[str, Any]) -> dict[str, Any]:
    """A router's settings: its defaults overridden by ``route.params`` (unknown keys and non-numbers refused)."""
    defaults = ROUTE_DEFAULTS[router]
    for key, value in params.items():
        if key not in defaults:
            hint = did_you_mean(key, defaults)
            raise InvalidRequest(
                f"route.params: unknown parameter {key!r}; known: {', '.join(defaults)}.{hint}", "route.params"
            )
        if key == "top_k" and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise InvalidRequest(f"route.params: 'top_k' must be an integer >= 1, got {value!r}", "route.params")
        if key in ("temperature", "scaling") and not is_finite_number(value):
            raise InvalidRequest(f"route.params: {key!r} must be a finite number, got {value!r}", "route.params")
        if (
            key == "prior"
            and value is not None
            and (not isinstance(value, list) or not all(is_finite_number(v) for v in value))
        ):
            raise InvalidRequest(f"route.params: 'prior' must be a list of numbers, got {value!r}", "route.params")
    return {**defaults, **params}


def check_servable(router: Router, name: str) -> None:
    """Serving needs per-text logits: a per-token router installs hooks (``applied``), a per-input one gives
    coefficients (``route``); the contract's ``evaluate`` alone only gives split metrics."""
    if not (hasattr(router, "applied") or hasattr(router, "route")):
        raise InvalidRequest(
            f"adapter {name!r} is routed by {router.name!r}, which cannot score single texts", "adapter"
        )
