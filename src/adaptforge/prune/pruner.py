"""One prune run's algorithm, apart from loading, evaluating and writing (``adaptforge prune`` is
:mod:`adaptforge.pipelines.prune`): a registered method with its typed params, the calibration it asks for,
and the pruning of a model in place (weights zeroed per layer, or whole feed-forward neurons removed). The
record written beside a pruned model (:data:`RECORD_FILE`, a
:class:`~adaptforge.provenance.PruneProvenance`) is read back here, typed."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from adaptforge.backbone import Backbone
from adaptforge.core import AdaptforgeError
from adaptforge.progress import Steps
from adaptforge.provenance import PruneProvenance
from adaptforge.prune.base import PRUNE_METHODS, Calibration, LayerReport, PruneMethod, PruneParams, PruneReport
from adaptforge.prune.base import layer_sparsity as sparsity_per_layer
from adaptforge.prune.calibration import CalibrationText, collect_inputs
from adaptforge.prune.ffn import ffn_blocks, neuron_scores, shrink
from adaptforge.scorers import Scorer
from adaptforge.structured import parse_json
from adaptforge.tasks import Task

RECORD_FILE = "adaptforge_prune.json"


@dataclass(frozen=True)
class Pruner:
    """A registered prune method (``impl``) with its params, checked against each other."""

    impl: PruneMethod[Any]
    params: PruneParams

    @classmethod
    def create(cls, method: str, params: PruneParams | dict[str, Any] | None) -> Pruner:
        """The method by name with its params parsed; refuses a pattern the method does not support."""
        impl = PRUNE_METHODS.get(method)()
        typed: PruneParams = impl.parse_params(params)
        if typed.pattern not in impl.patterns:
            raise AdaptforgeError(
                f"prune method {method!r} supports --pattern {', '.join(impl.patterns)}, not {typed.pattern!r}"
            )
        if typed.pattern == "ffn" and isinstance(typed.sparsity, tuple):
            raise AdaptforgeError("--pattern ffn keeps one width in every block: give one --sparsity value")
        return cls(impl, typed)

    @property
    def name(self) -> str:
        return self.impl.name

    def domain_examples(self) -> int:
        """How many domain train examples (or corpus texts) calibration reads."""
        return self.impl.domain_examples(self.params)

    def calibrate(
        self,
        layers: dict[str, torch.nn.Module],
        scorer: Scorer,
        domain: Task | None,
        general_text: CalibrationText | None,
        domain_calib: CalibrationText,
    ) -> Calibration:
        """What the method asked for: input statistics of the general and/or domain texts, then its own
        whole-model work (:meth:`PruneMethod.prepare`, D-Pruner's gradients); ``layers`` are scored against it."""
        impl, params, work = self.impl, self.params, scorer.backbone
        gram, length = impl.needs_gram, params.max_length
        calibration = Calibration(
            general=collect_inputs(work, layers, general_text.texts, gram=gram, max_length=length)
            if general_text is not None
            else None,
            domain=collect_inputs(work, layers, domain_calib.texts, gram=gram, max_length=length)
            if impl.needs_domain
            else None,
            scorer=scorer,
            domain_task=domain,
            domain_texts=domain_calib.texts,
        )
        impl.prepare(layers, calibration, params)
        return calibration

    def layer_sparsity(self, layers: dict[str, torch.nn.Module]) -> dict[str, float]:
        """The sparsity each layer is pruned to (checked before any calibration work)."""
        return sparsity_per_layer(self.params, list(layers))

    def prune(
        self,
        work: Backbone,
        layers: dict[str, torch.nn.Module],
        sparsity: dict[str, float],
        calibration: Calibration,
    ) -> tuple[PruneReport, int | None]:
        """Prune ``work`` in place (``sparsity``: per layer, from :meth:`layer_sparsity`); the report and, for
        the ``ffn`` pattern, the new intermediate size."""
        if self.params.pattern == "ffn":
            return self._prune_neurons(work, layers, calibration)
        report = PruneReport()
        with Steps(f"prune {self.name}: layers", len(layers)) as steps:
            for name, layer in layers.items():
                report.layers.append(self.impl.prune_layer(name, layer, sparsity[name], calibration, self.params))
                steps.advance(info=name)
        return report, None

    def _prune_neurons(
        self, work: Backbone, layers: dict[str, torch.nn.Module], calibration: Calibration
    ) -> tuple[PruneReport, int]:
        """The same number of feed-forward neurons removed from every block, the lowest-scoring ones."""
        report = PruneReport()
        blocks = ffn_blocks(work)
        score = self.impl.importance
        scores = [neuron_scores(b, lambda n: score(n, layers[n], calibration, self.params)) for b in blocks]
        total = scores[0].numel()
        kept = max(1, total - int(round(total * float(self.params.sparsity))))  # type: ignore[arg-type]
        keep = [torch.sort(s.topk(kept).indices).values for s in scores]
        width = shrink(work, blocks, keep)
        report.removed_neurons = {b.output: total - kept for b in blocks}
        for b in blocks:
            for name in (*b.inputs, b.output):
                layer = work.model.get_submodule(name)
                report.layers.append(LayerReport(name, (layer.out_features, layer.in_features), 1 - kept / total))
        return report, width


def write_record(folder: Path, provenance: PruneProvenance) -> None:
    """The record beside a pruned model's files (``folder`` is the staged output folder)."""
    (folder / RECORD_FILE).write_text(json.dumps(provenance.recipe(), indent=1, sort_keys=True))


def read_record(folder: str | Path) -> PruneProvenance | None:
    """The prune record of a model folder (``None`` for a model adaptforge did not prune)."""
    path = Path(folder) / RECORD_FILE
    if not path.is_file():
        return None
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise AdaptforgeError(f"{path}: unreadable prune record ({err})") from None
    record = parse_json(text, str(path))
    return PruneProvenance.from_recipe(record, {}) if isinstance(record, dict) else None
