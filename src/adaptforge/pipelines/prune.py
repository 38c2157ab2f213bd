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
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from adaptforge.backbone import Backbone, fingerprint
from adaptforge.core import AdaptforgeError
from adaptforge.durable import staged_folder
from adaptforge.evaluate import EvalResult, Perplexity, check_request, evaluate, perplexity
from adaptforge.library import CATALOG_FILE
from adaptforge.packed import PACKED_FILE, write_packed
from adaptforge.pipelines.common import Notify, load_base, reporter
from adaptforge.progress import Steps
from adaptforge.provenance import PruneProvenance
from adaptforge.prune import PRUNE_METHODS, PruneMethod, PruneParams, PruneReport, prunable_layers
from adaptforge.prune.base import Calibration, LayerReport, layer_sparsity
from adaptforge.prune.calibration import (
    CalibrationText,
    collect_inputs,
    domain_text,
    held_out_domain,
    held_out_general,
    read_general,
)
from adaptforge.prune.ffn import ffn_blocks, neuron_scores, shrink
from adaptforge.scorers import Scorer, classification_only, make_scorer
from adaptforge.structured import parse_json
from adaptforge.tasks import Task

RECORD_FILE = "adaptforge_prune.json"
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
    record: dict[str, Any]
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
            "method": self.record["method"],
            "params": self.record["params"],
            "sparsity": self.report.sparsity,
            "intermediate_size": self.record["intermediate_size"],
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


def calibrate(
    impl: PruneMethod,
    params: PruneParams,
    layers: dict[str, torch.nn.Module],
    scorer: Scorer,
    domain: Task | None,
    general_text: CalibrationText | None,
    domain_calib: CalibrationText,
) -> Calibration:
    """What ``impl`` asked for: input statistics of the general and/or domain texts, then its own whole-model
    work (:meth:`PruneMethod.prepare`, D-Pruner's gradients); ``layers`` are scored against the result."""
    work = scorer.backbone
    calibration = Calibration(
        general=collect_inputs(work, layers, general_text.texts, gram=impl.needs_gram, max_length=params.max_length)
        if general_text is not None
        else None,
        domain=collect_inputs(work, layers, domain_calib.texts, gram=impl.needs_gram, max_length=params.max_length)
        if impl.needs_domain
        else None,
        scorer=scorer,
        domain_task=domain,
        domain_texts=domain_calib.texts,
    )
    impl.prepare(layers, calibration, params)
    return calibration


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
    impl = PRUNE_METHODS.get(method)()
    typed = impl.parse_params(params)
    assert isinstance(typed, PruneParams)
    if typed.pattern not in impl.patterns:
        raise AdaptforgeError(
            f"prune method {method!r} supports --pattern {', '.join(impl.patterns)}, not {typed.pattern!r}"
        )
    if typed.pattern == "ffn" and isinstance(typed.sparsity, tuple):
        raise AdaptforgeError("--pattern ffn keeps one width in every block: give one --sparsity value")
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
    sparsity = layer_sparsity(typed, list(layers))
    n_domain = impl.domain_examples(typed)
    domain_calib = domain_text(task, n_domain, typed.seed) if task is not None else domain.spaced(n_domain)
    say(f"calibrating {method} on {len(layers)} layers")
    prune_start = time.perf_counter()
    calibration = calibrate(impl, typed, layers, scorer, task, general_text, domain_calib)
    dense_params = sum(p.numel() for p in work.model.parameters())
    report = PruneReport()
    width = None
    if typed.pattern == "ffn":
        blocks = ffn_blocks(work)
        scores = [neuron_scores(b, lambda n: impl.importance(n, layers[n], calibration, typed)) for b in blocks]
        total = scores[0].numel()
        kept = max(1, total - int(round(total * float(typed.sparsity))))  # type: ignore[arg-type]
        keep = [torch.sort(s.topk(kept).indices).values for s in scores]
        width = shrink(work, blocks, keep)
        report.removed_neurons = {b.output: total - kept for b in blocks}
        for b in blocks:
            for name in (*b.inputs, b.output):
                layer = work.model.get_submodule(name)
                report.layers.append(LayerReport(name, (layer.out_features, layer.in_features), 1 - kept / total))
    else:
        with Steps(f"prune {method}: layers", len(layers)) as steps:
            for name, layer in layers.items():
                report.layers.append(impl.prune_layer(name, layer, sparsity[name], calibration, typed))
                steps.advance(info=name)
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
    record = provenance.recipe()
    with staged_folder(out_dir) as tmp:
        work.model.save_pretrained(tmp)
        work.tokenizer.save_pretrained(tmp)
        (tmp / RECORD_FILE).write_text(json.dumps(record, indent=1, sort_keys=True))
        if compact:
            write_packed(work.model, tmp)
    say(f"wrote {out_dir}")
    dense_file = _weights_bytes(Path(dense.path)) if Path(dense.path).is_dir() else None
    packed = out_dir / PACKED_FILE
    return PruneOutcome(
        out_dir,
        record,
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


def read_record(folder: str | Path) -> dict[str, Any] | None:
    """The prune record of a model folder (``None`` for a model adaptforge did not prune)."""
    path = Path(folder) / RECORD_FILE
    if not path.is_file():
        return None
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise AdaptforgeError(f"{path}: unreadable prune record ({err})") from None
    record = parse_json(text, str(path))
    return record if isinstance(record, dict) else None
