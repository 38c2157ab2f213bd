"""``adaptforge library import``: a LoRA folder made by PEFT (or anyone) into the library, after checking
that it fits the base model."""

from __future__ import annotations

import logging
from pathlib import Path

from adaptforge.adapters import check_compatible, read_adapter
from adaptforge.backbone import Backbone
from adaptforge.library import AdapterRecord, Library
from adaptforge.provenance import ImportProvenance
from adaptforge.scorers import describe, make_scorer
from adaptforge.tasks import Task

log = logging.getLogger(__name__)


def import_peft_folder(
    folder: str | Path,
    backbone: Backbone,
    library: Library,
    name: str,
    task: Task | None = None,
    overwrite: bool = False,
) -> AdapterRecord:
    """Import a LoRA folder; with ``task`` it becomes that task's own adapter (described and retrievable)."""
    library.check_free(name, overwrite)
    delta, config = read_adapter(folder)
    check_compatible(delta, backbone.model, what=str(folder))
    stated = config.get("base_model_name_or_path")
    if stated and Path(stated).name != Path(backbone.name).name:
        log.warning(
            "%s: its config names base model %r; importing it for %r, whose layers it fits",
            folder,
            stated,
            backbone.name,
        )
    embedding = describe(make_scorer(backbone), task) if task else None
    return library.add(
        delta,
        name=name,
        base_model=backbone.name,
        base_fingerprint=backbone.fingerprint,
        task=task.name if task else None,
        description=task.description if task else None,
        embedding=embedding,
        provenance=ImportProvenance(source=str(Path(folder).resolve()), peft_config=config),
        overwrite=overwrite,
    )
