"""``adaptforge library import``: a LoRA folder made by PEFT (or anyone) into the library, after checking
that it fits the base model. An adaptforge export (``adaptforge.json`` beside the PEFT files) comes back with
its task, labels, description, metrics and lineage (parents by name, in the recipe's ``origin``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adaptforge.adapters import check_compatible, read_adapter
from adaptforge.backbone import Backbone
from adaptforge.core import AdaptforgeError
from adaptforge.library import EXPORT_RECORD_FILE, AdapterRecord, Library
from adaptforge.pipelines.common import task_entry
from adaptforge.provenance import ImportProvenance
from adaptforge.scorers import make_scorer
from adaptforge.structured import parse_json
from adaptforge.tasks import Task

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportedRecord:
    """What an adaptforge export says about itself in ``adaptforge.json`` (fields it lacks stay empty)."""

    task: str | None
    description: str | None
    labels: tuple[str, ...]
    base_model: str | None
    origin: dict[str, Any]
    metrics: list[dict[str, Any]] = field(default_factory=list)

    def as_task(self) -> Task | None:
        """The task the adapter was made for, without examples (enough to describe it for retrieval)."""
        if not self.task:
            return None
        kind = "classification" if self.labels else "generation"
        return Task(self.task, self.description or "", self.labels, {}, task_type=kind)


def read_export_record(folder: str | Path) -> ExportedRecord | None:
    """``adaptforge.json`` of an adaptforge export (``None`` for a folder PEFT or another tool wrote)."""
    path = Path(folder) / EXPORT_RECORD_FILE
    if not path.is_file():
        return None
    try:
        raw = parse_json(path.read_text(encoding="utf-8"), str(path))
    except (OSError, UnicodeDecodeError) as err:
        raise AdaptforgeError(f"{path}: unreadable ({err})") from None
    if not isinstance(raw, dict):
        raise AdaptforgeError(f"{path}: expected a JSON object (an adaptforge export's record)")

    def text(key: str) -> str | None:
        value = raw.get(key)
        if value is not None and not isinstance(value, str):
            raise AdaptforgeError(f"{path}: field {key!r} must be a string, got {type(value).__name__}")
        return value or None

    task = text("task")
    labels: Any = (raw.get("params") or {}).get("labels") if isinstance(raw.get("params"), dict) else None
    if isinstance(labels, dict):
        labels = labels.get(task) if task in labels else None
    if labels is not None and (not isinstance(labels, list) or not all(isinstance(x, str) for x in labels)):
        raise AdaptforgeError(f"{path}: field 'params.labels' must be a list of strings")
    metrics = raw.get("metrics") or []
    if not isinstance(metrics, list) or not all(isinstance(m, dict) for m in metrics):
        raise AdaptforgeError(f"{path}: field 'metrics' must be a list of objects")
    origin = {k: raw.get(k) for k in ("name", "id", "method", "kind", "recipe", "lineage", "base_model") if k in raw}
    return ExportedRecord(task, text("description"), tuple(labels or ()), text("base_model"), origin, metrics)


def import_peft_folder(
    folder: str | Path,
    backbone: Backbone,
    library: Library,
    name: str,
    task: Task | None = None,
    overwrite: bool = False,
) -> AdapterRecord:
    """Import a LoRA folder; with ``task`` (or the task an adaptforge export names) it becomes that task's own
    adapter (described and retrievable); an export's metrics on this base are recorded again."""
    library.check_free(name, overwrite)
    delta, config = read_adapter(folder)
    exported = read_export_record(folder)
    check_compatible(delta, backbone.model, what=str(folder))
    stated = config.get("base_model_name_or_path")
    if stated and Path(stated).name != Path(backbone.name).name:
        log.warning(
            "%s: its config names base model %r; importing it for %r, whose layers it fits",
            folder,
            stated,
            backbone.name,
        )
    task = task or (exported.as_task() if exported else None)
    provenance = ImportProvenance(
        source=str(Path(folder).resolve()),
        peft_config=config,
        task=task.name if task else None,
        labels=tuple(task.labels) if task else (),
        origin=exported.origin if exported else None,
    )
    record = library.add(
        delta,
        name=name,
        base=backbone,
        task=task_entry(make_scorer(backbone), task) if task else None,
        provenance=provenance,
        overwrite=overwrite,
    )
    if exported is not None:
        restore_metrics(library, record, exported.metrics, backbone.fingerprint)
    return record


def restore_metrics(library: Library, record: AdapterRecord, metrics: list[dict[str, Any]], fingerprint: str) -> int:
    """Record an export's metric rows for ``record``: only rows measured on this base (same fingerprint) and with a
    number; returns how many."""
    kept = 0
    for m in metrics:
        value, n = m.get("value"), m.get("n")
        if m.get("base_fingerprint") != fingerprint or not isinstance(value, (int, float)) or not isinstance(n, int):
            continue
        if not all(isinstance(m.get(k), str) for k in ("task", "split", "metric")):
            continue
        library.record_metrics(
            record.id,
            fingerprint,
            m["task"],
            m["split"],
            {m["metric"]: float(value)},
            n,
            subset=str(m.get("subset") or "all"),
            task_fingerprint=m.get("task_fingerprint") if isinstance(m.get("task_fingerprint"), str) else None,
        )
        kept += 1
    skipped = len(metrics) - kept
    if skipped:
        log.warning("%s: %d metric rows of the export were measured on another base or are not numbers; not kept",
                    record.name, skipped)  # fmt: skip
    return kept
