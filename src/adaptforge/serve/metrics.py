"""Counters and histograms for ``GET /metrics``, written as Prometheus text by hand (the format is a few lines
of text; a client library would be one more dependency for that). One :class:`Metrics` per server, no global
registry, so two servers in one process (tests, benchmarks) never mix their numbers."""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

Labels = tuple[tuple[str, str], ...]

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


@dataclass(frozen=True)
class Family:
    """One metric's name, type and help text."""

    name: str
    type: str  # counter | histogram | gauge
    help: str
    buckets: tuple[float, ...] = ()


FAMILIES = (
    Family("adaptforge_requests_total", "counter", "HTTP requests answered, by route and status code."),
    Family("adaptforge_request_seconds", "histogram", "HTTP request latency in seconds, by route.", LATENCY_BUCKETS),
    Family("adaptforge_texts_total", "counter", "Texts scored or embedded, by route."),
    Family("adaptforge_batch_rows", "histogram", "Texts per model batch (one forward per batch).", SIZE_BUCKETS),
    Family("adaptforge_batch_adapters", "histogram", "Distinct adapters in one model batch.", SIZE_BUCKETS),
    Family("adaptforge_cache_hits_total", "counter", "Adapter lookups served from memory."),
    Family("adaptforge_cache_misses_total", "counter", "Adapter lookups that loaded from the library."),
    Family("adaptforge_cache_evictions_total", "counter", "Adapters evicted from memory (least recently used)."),
    Family("adaptforge_adapter_load_seconds", "histogram", "Time to load and prepare one adapter.", LATENCY_BUCKETS),
    Family("adaptforge_merge_cache_hits_total", "counter", "Request-time merges and routers found ready."),
    Family("adaptforge_merge_cache_misses_total", "counter", "Request-time merges and routers computed."),
    Family("adaptforge_rejected_total", "counter", "Requests refused before reaching the model, by reason."),
    Family("adaptforge_queue_rows", "gauge", "Texts waiting for the model."),
    Family("adaptforge_loaded_adapters", "gauge", "Adapters (and merges) resident in memory."),
    Family("adaptforge_pinned_adapters", "gauge", "Adapters pinned in memory."),
)


@dataclass
class _Histogram:
    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * len(self.buckets)

    def observe(self, value: float) -> None:
        index = bisect.bisect_left(self.buckets, value)
        if index < len(self.counts):
            self.counts[index] += 1
        self.total += value
        self.count += 1


class Metrics:
    """Thread-safe counters and histograms of the families in :data:`FAMILIES`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._families = {f.name: f for f in FAMILIES}
        self._counters: dict[tuple[str, Labels], float] = {}
        self._histograms: dict[tuple[str, Labels], _Histogram] = {}

    def _family(self, name: str, kind: str) -> Family:
        family = self._families[name]
        if family.type != kind:
            raise ValueError(f"metric {name} is a {family.type}, not a {kind}")
        return family

    def inc(self, name: str, value: float = 1.0, labels: Mapping[str, str] | None = None) -> None:
        self._family(name, "counter")
        key = (name, _labels(labels))
        with self._lock:
            self._counters[key] = self._counters.get(key, 0.0) + value

    def observe(self, name: str, value: float, labels: Mapping[str, str] | None = None) -> None:
        family = self._family(name, "histogram")
        key = (name, _labels(labels))
        with self._lock:
            hist = self._histograms.get(key)
            if hist is None:
                hist = self._histograms[key] = _Histogram(family.buckets)
            hist.observe(value)

    def value(self, name: str, labels: Mapping[str, str] | None = None) -> float:
        """A counter's value, or a histogram's observation count (tests and benchmarks read these)."""
        key = (name, _labels(labels))
        with self._lock:
            if key in self._histograms:
                return float(self._histograms[key].count)
            return self._counters.get(key, 0.0)

    def render(self, gauges: Mapping[str, float]) -> str:
        """Prometheus text exposition (version 0.0.4) of every family, with ``gauges`` read now."""
        lines: list[str] = []
        with self._lock:
            counters = dict(self._counters)
            histograms = {k: (list(h.counts), h.total, h.count) for k, h in self._histograms.items()}
        for family in FAMILIES:
            lines.append(f"# HELP {family.name} {family.help}")
            lines.append(f"# TYPE {family.name} {family.type}")
            if family.type == "gauge":
                lines.append(f"{family.name} {_number(gauges.get(family.name, 0.0))}")
            elif family.type == "counter":
                for (name, labels), value in sorted(counters.items()):
                    if name == family.name:
                        lines.append(f"{name}{_text(labels)} {_number(value)}")
            else:
                for (name, labels), (counts, total, count) in sorted(histograms.items()):
                    if name != family.name:
                        continue
                    running = 0
                    for bound, n in zip(family.buckets, counts, strict=True):
                        running += n
                        lines.append(f"{name}_bucket{_text(labels + (('le', _number(bound)),))} {running}")
                    lines.append(f"{name}_bucket{_text(labels + (('le', '+Inf'),))} {count}")
                    lines.append(f"{name}_sum{_text(labels)} {_number(total)}")
                    lines.append(f"{name}_count{_text(labels)} {count}")
        return "\n".join(lines) + "\n"


def _labels(labels: Mapping[str, str] | None) -> Labels:
    return tuple(sorted((str(k), str(v)) for k, v in (labels or {}).items()))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _text(labels: Sequence[tuple[str, str]]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels) + "}"


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))
