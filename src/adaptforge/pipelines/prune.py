"""``adaptforge prune``: a sparser (or, with ``--pattern ffn``, smaller) base model for a domain.

Loads the base, collects the calibration statistics the method asks for (general and/or domain texts),
prunes every linear layer inside the transformer blocks, and writes a Hugging Face folder that
``AutoModel.from_pretrained`` (and ``--model DIR`` everywhere in adaptforge) loads unchanged, with
``adaptforge_prune.json`` linking it to its parent base. Zero-shot accuracy of the domain task and of
any ``eval_tasks`` is measured before and after on the same examples, so the retention is in the outcome;
for a causal LM also the perplexity on held-out general text (the shipped open-domain set minus what
calibration read) and on held-out domain text (the evaluated split, never the train split calibration reads).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adaptforge.backbone import Backbone, fingerprint
from adaptforge.core import AdaptforgeError
from adaptforge.durable import staged_folder
from adaptforge.evaluate import EvalResult, Perplexity, check_request, evaluate, perplexity
from adaptforge.library import CATALOG_FILE
from adaptforge.packed import PACKED_FILE, write_packed
from adaptforge.pipelines.common import Notify, load_base, reporter
from adaptforge.provenance import PruneProvenance
from adaptforge.prune import PruneReport, prunable_layers
from adaptforge.prune.calibration import (
    CalibrationText,
    domain_text,
    held_out_domain,
    held_out_general,
    read_general,
)
from adaptforge.prune.pruner import Pruner, write_record
from adaptforge.scorers import classification_only, make_scorer
from adaptforge.tasks import Task

PERPLEXITY_TEXTS = 64  # held-out texts per perplexity (general, domain) of a causal LM; --limit lowers it


@dataclass
class HeldOutPerplexity:
    """A causal LM's perplexity on held-out text before and after pruning (issue 15's retention for LMs)."""

    text: CalibrationText
    dense: Perplexity
    pruned: Perplexity | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            **self.text.record(),
            "dense": self.dense.to_json(),
            "pruned": None if self.pruned is None else self.pruned.to_json(),
            "ratio": None if self.pruned is None else self.pruned.value / self.dense.value,
        }


@dataclass
class PruneOutcome:
    """The pruned model folder, what was removed, and dense vs pruned zero-shot accuracy per task."""

    path: Path
    record: PruneProvenance
    report: PruneReport
    parameters: tuple[int, int]  # (dense, pruned) parameter counts of the whole model
    file_bytes: tuple[int | None, int, int | None]  # (dense weights file, pruned weights file, packed file)
    seconds: float
    evals: dict[str, dict[str, EvalResult]] = field(default_factory=dict)  # task -> {"dense", "pruned"}
    perplexity: dict[str, HeldOutPerplexity] = field(default_factory=dict)  # causal LMs: "general", "domain"
    prune_seconds: float = 0.0  # calibration and pruning alone (no loading, evaluation or writing)

    def retention(self, task: str) -> float | None:
        pair = self.evals.get(task)
        if not pair or pair["dense"].accuracy == 0:
            return None
        return pair["pruned"].accuracy / pair["dense"].accuracy

    def to_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "method": self.record.prune_method,
            "params": dict(self.record.prune_params),
            "sparsity": self.report.sparsity,
            "intermediate_size": self.record.intermediate_size,
            "parameters": {"dense": self.parameters[0], "pruned": self.parameters[1]},
            "file_bytes": {"dense": self.file_bytes[0], "pruned": self.file_bytes[1], "packed": self.file_bytes[2]},
            "seconds": round(self.seconds, 2),
            "prune_seconds": round(self.prune_seconds, 2),
            "eval": {
                task: {**{k: v.to_json() for k, v in pair.items()}, "retention": self.retention(task)}
                for task, pair in self.evals.items()
            },
            "perplexity": {k: v.to_json() for k, v in self.perplexity.items()},
        }


def _check_out(out: Path) -> Path:
    """A new or empty folder outside every adapter library (``verify`` and ``gc`` would never see it there)."""
    out = Path(out).expanduser().resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise AdaptforgeError(f"--out {out} exists and is not an empty folder; choose a new folder")
    library = next((p for p in (out, *out.parents) if (p / CATALOG_FILE).is_file()), None)
    if library is not None:
        raise AdaptforgeError(
            f"--out {out} is inside the adapter library {library}, which holds only adapters it catalogs; "
            "write the pruned model outside it"
        )
    return out


def _own_copy(backbone: Backbone) -> Backbone:
    """Pruning edits weights in place: work on a copy so a caller's backbone stays the dense base."""
    return Backbone(
        backbone.name,
        backbone.path,
        backbone.kind,
        copy.deepcopy(backbone.model),
        backbone.tokenizer,
        backbone.fingerprint,
    )


def prune_model(
    method: str,
    domain: Task | CalibrationText,
    out: str | Path,
    *,
    params: Mapping[str, Any] | None = None,
    general: Sequence[str | Path] = (),
    model: str | None = None,
    backbone: Backbone | None = None,
    eval_tasks: Sequence[Task] = (),
    split: str = "dev",
    limit: int | None = None,
    compact: bool = False,
    notify: Notify | None = None,
) -> PruneOutcome:
    """Prune the base for ``domain`` with the registered ``method`` and write it to ``out`` (new or empty);
    ``compact`` also writes the packed form (:mod:`adaptforge.packed`) beside the Hugging Face weights.

    ``domain`` is a task (calibration reads its train split) or, for a causal LM, plain domain text
    (:func:`~adaptforge.prune.calibration.read_corpus`): calibration reads evenly spaced texts of it and
    gradients come from the next-token loss; no zero-shot accuracy or held-out domain perplexity is measured
    for it then (``adaptforge eval CORPUS --metric perplexity`` on a held-out corpus does that)."""
    say = reporter(notify)
    start = time.perf_counter()
    pruner = Pruner.create(method, params)
    impl, typed = pruner.impl, pruner.params
    out_dir = _check_out(Path(out))
    task = domain if isinstance(domain, Task) else None
    if task is not None and "train" not in task.splits:
        raise AdaptforgeError(f"--domain task {task.name!r} has no train split to calibrate on")
    tasks = [*([task] if task else []), *[t for t in eval_tasks if task is None or t.name != task.name]]
    for task in tasks:
        classification_only(task, "prune (dense vs pruned zero-shot accuracy)")
    check_request(tasks, split, limit)
    general_text = read_general(general, typed.calibration_size, typed.seed) if impl.needs_general else None
    dense = load_base(model, backbone=backbone, notify=say)
    if task is None and dense.kind != "causal":
        raise AdaptforgeError(
            f"--domain {domain.source}: plain domain text needs a causal LM (its loss is next-token prediction); "
            "for an encoder give a task folder"
        )
    work = _own_copy(dense) if backbone is not None else dense
    scorer = make_scorer(work)
    evals: dict[str, dict[str, EvalResult]] = {}
    for task in tasks:
        say(f"zero-shot {task.name}/{split} on the dense base")
        evals[task.name] = {"dense": evaluate(scorer, task, split, None, limit=limit)}
    held_out: dict[str, HeldOutPerplexity] = {}
    if work.kind == "causal":  # an LM's general ability is also how well it still models text
        n = min(limit or PERPLEXITY_TEXTS, PERPLEXITY_TEXTS)
        texts = {
            "general": held_out_general(general_text, n),
            "domain": held_out_domain(task, split, n, typed.seed) if task is not None else None,
        }
        for key, text in texts.items():
            if text is not None:
                say(f"perplexity of the dense base on held-out {key} text ({len(text.texts)} texts)")
                held_out[key] = HeldOutPerplexity(text, perplexity(work.model, work.tokenizer, text.texts))
    layers = prunable_layers(work)
    sparsity = pruner.layer_sparsity(layers)
    n_domain = pruner.domain_examples()
    domain_calib = domain_text(task, n_domain, typed.seed) if task is not None else domain.spaced(n_domain)
    say(f"calibrating {method} on {len(layers)} layers")
    prune_start = time.perf_counter()
    calibration = pruner.calibrate(layers, scorer, task, general_text, domain_calib)
    dense_params = sum(p.numel() for p in work.model.parameters())
    report, width = pruner.prune(work, layers, sparsity, calibration)
    prune_seconds = time.perf_counter() - prune_start
    pruned_params = sum(p.numel() for p in work.model.parameters())
    new_fp = fingerprint(work.model, work.model.config)
    work = Backbone(str(out_dir), str(out_dir), work.kind, work.model, work.tokenizer, new_fp)
    scorer = make_scorer(work)
    for task in tasks:
        say(f"zero-shot {task.name}/{split} on the pruned base")
        evals[task.name]["pruned"] = evaluate(scorer, task, split, None, limit=limit)
    for key, pair in held_out.items():
        say(f"perplexity of the pruned base on held-out {key} text")
        pair.pruned = perplexity(work.model, work.tokenizer, pair.text.texts)
    provenance = PruneProvenance(
        prune_method=method,
        prune_params=typed.to_dict(),
        parent_model=dense.name,
        parent_fingerprint=dense.fingerprint,
        fingerprint=new_fp,
        calibration={
            "general": None if general_text is None else general_text.record(),
            "domain": domain_calib.record() if impl.needs_domain or impl.needs_general else None,
        },
        layers={r.name: round(r.sparsity, 6) for r in report.layers},
        sparsity=report.sparsity,
        intermediate_size=width,
        seconds=time.perf_counter() - start,
    )
    with staged_folder(out_dir) as tmp:
        work.model.save_pretrained(tmp)
        work.tokenizer.save_pretrained(tmp)
        write_record(tmp, provenance)
        if compact:
            write_packed(work.model, tmp)
    say(f"wrote {out_dir}")
    dense_file = _weights_bytes(Path(dense.path)) if Path(dense.path).is_dir() else None
    packed = out_dir / PACKED_FILE
    return PruneOutcome(
        out_dir,
        provenance,
        report,
        (dense_params, pruned_params),
        (dense_file, _weights_bytes(out_dir) or 0, packed.stat().st_size if packed.is_file() else None),
        time.perf_counter() - start,
        evals,
        held_out,
        prune_seconds,
    )


def _weights_bytes(folder: Path) -> int | None:
    files = [f for f in folder.glob("*.safetensors") if f.name != PACKED_FILE]
    return sum(f.stat().st_size for f in files) if files else None
