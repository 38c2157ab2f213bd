"""Catalog records and metric rows built by hand, for report tests that need no model."""

from __future__ import annotations

from pathlib import Path

from adaptforge.library import AdapterRecord, MetricRow

BASE = "f" * 32


def record(name: str, kind: str = "train", task: str | None = "t1", parents: tuple[str, ...] = (), **extra):
    ident = extra.pop("ident", f"{abs(hash(name)) % 16**16:016x}")
    return AdapterRecord(
        id=ident,
        name=name,
        task=task,
        description=None,
        base_model=extra.pop("base_model", "mini"),
        base_fingerprint=extra.pop("base", BASE),
        rank=4,
        targets=("q", "v"),
        recipe=extra.pop("recipe", {}),
        method=extra.pop("method", kind),
        params={},
        parents=parents,
        checksum="a" * 64,
        created=extra.pop("created", 1.0),
        path=Path("/nowhere") / ident,
        embedding=None,
        config_checksum="b" * 64,
        kind=kind,
    )


def metric(adapter: AdapterRecord | None, task: str, value: float, n: int = 10, created: float = 1.0, **extra):
    return MetricRow(
        None if adapter is None else adapter.id,
        extra.pop("base", BASE),
        task,
        extra.pop("split", "test"),
        extra.pop("metric", "accuracy"),
        value,
        n,
        created,
    )
