"""The prune contract: typed params, the layers a pruner may touch, masks, and the method registry.

A prune method is a :class:`~adaptforge.methods.Method` registered in :data:`PRUNE_METHODS`. Most methods
only say how important each weight is (:meth:`PruneMethod.importance`, higher = keep); the base turns
scores into masks for the requested pattern (unstructured, N:M, or whole FFN neurons) and zeroes the
weights. Methods that also update the weights they keep (SparseGPT) override :meth:`PruneMethod.prune_layer`.
"""

from __future__ import annotations

import re
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import torch

from adaptforge.backbone import Backbone
from adaptforge.core import AdaptforgeError, Registry
from adaptforge.layers import lora_layers, weight_view
from adaptforge.methods import Method
from adaptforge.params import Params, param
from adaptforge.prune.calibration import InputStats
from adaptforge.scorers import Scorer
from adaptforge.tasks import Task

PATTERNS = ("unstructured", "2:4", "4:8", "ffn")
_BLOCK = re.compile(r"(?:^|\.)(?:layer|layers|h|block|blocks)\.(\d+)\.")


@dataclass(frozen=True, kw_only=True)
class PruneParams(Params):
    """Parameters every pruner takes."""

    sparsity: float | tuple[float, ...] = param(
        0.5, ge=0, lt=1, help="fraction of weights removed: one value, or one per transformer block"
    )
    pattern: str = param("unstructured", choices=PATTERNS, help="unstructured, N:M per group of M inputs, or ffn")
    calibration_size: int = param(128, ge=1, help="calibration texts (general and domain, each)")
    max_length: int = param(128, ge=8, help="tokens per calibration text")
    seed: int = param(0, help="seed of the calibration samples")

    def check(self) -> None:
        if self.pattern in ("2:4", "4:8"):
            n, m = (int(v) for v in self.pattern.split(":"))
            fixed = (m - n) / m
            values = self.sparsity if isinstance(self.sparsity, tuple) else (self.sparsity,)
            self.require("sparsity", all(v == fixed for v in values), f"{fixed} for pattern {self.pattern}")

    def nm(self) -> tuple[int, int] | None:
        """``(N, M)`` of an N:M pattern (keep N of every M consecutive inputs), else ``None``."""
        if self.pattern not in ("2:4", "4:8"):
            return None
        n, m = (int(v) for v in self.pattern.split(":"))
        return n, m


@dataclass
class Calibration:
    """What a pruner may look at: general and domain input statistics (with Gram matrices when the method
    asked for them), and for methods that need gradients the scorer and the domain: a task, or (``domain_task``
    ``None``, causal LMs) the plain domain texts, whose loss is next-token prediction."""

    general: dict[str, InputStats] | None
    domain: dict[str, InputStats] | None
    scorer: Scorer
    domain_task: Task | None
    domain_texts: tuple[str, ...] = ()


@dataclass
class LayerReport:
    """One pruned layer: its shape, the fraction of zero weights after, and (SparseGPT) the relative error
    ``||W X - W' X|| / ||W X||`` on the calibration inputs."""

    name: str
    shape: tuple[int, int]
    sparsity: float
    error: float | None = None


@dataclass
class PruneReport:
    layers: list[LayerReport] = field(default_factory=list)
    removed_neurons: dict[str, int] = field(default_factory=dict)  # ffn: block -> neurons removed

    @property
    def sparsity(self) -> float:
        """Fraction of zero weights over all pruned layers (ffn: of the original parameter count)."""
        total = sum(r.shape[0] * r.shape[1] for r in self.layers)
        return sum(r.sparsity * r.shape[0] * r.shape[1] for r in self.layers) / total if total else 0.0


def prunable_layers(backbone: Backbone) -> dict[str, torch.nn.Module]:
    """Every linear layer inside a transformer block (attention and feed-forward); embeddings, poolers and
    output heads are left alone. Names are sorted in block order. GPT-2's ``Conv1D`` layers count: every
    score and update reads and writes their weight as ``(out, in)`` (:func:`adaptforge.layers.weight_view`),
    so rows are output neurons and N:M groups run along the inputs for both layouts."""
    layers = {name: module for name, module in lora_layers(backbone.model).items() if _BLOCK.search(name)}
    if not layers:
        raise AdaptforgeError(f"{backbone.name}: no linear layers inside transformer blocks to prune")
    return dict(sorted(layers.items(), key=lambda kv: (block_of(kv[0]), kv[0])))


def block_of(name: str) -> int:
    match = _BLOCK.search(name)
    return int(match.group(1)) if match else -1


def layer_sparsity(params: PruneParams, names: Sequence[str]) -> dict[str, float]:
    """The sparsity of each layer: the one value, or the value of its block when a list is given."""
    if not isinstance(params.sparsity, tuple):
        return dict.fromkeys(names, float(params.sparsity))
    blocks = sorted({block_of(n) for n in names})
    if len(params.sparsity) != len(blocks):
        raise AdaptforgeError(
            f"sparsity: {len(params.sparsity)} values for {len(blocks)} transformer blocks; give one value or one "
            "per block"
        )
    by_block = dict(zip(blocks, params.sparsity, strict=True))
    return {n: float(by_block[block_of(n)]) for n in names}


def unstructured_mask(scores: torch.Tensor, sparsity: float, per_row: bool) -> torch.Tensor:
    """Keep-mask removing the ``sparsity`` fraction of lowest scores, in each output row or in the whole layer."""
    keep = torch.ones_like(scores, dtype=torch.bool)
    if sparsity <= 0:
        return keep
    if per_row:
        k = int(scores.shape[1] * sparsity)
        if k:
            drop = scores.topk(k, dim=1, largest=False).indices
            keep.scatter_(1, drop, False)
        return keep
    k = int(scores.numel() * sparsity)
    if k:
        drop = scores.reshape(-1).topk(k, largest=False).indices
        keep.view(-1)[drop] = False
    return keep


def nm_mask(scores: torch.Tensor, n: int, m: int, name: str) -> torch.Tensor:
    """Keep-mask keeping the ``n`` highest scores of every ``m`` consecutive inputs of each row."""
    out_dim, in_dim = scores.shape
    if in_dim % m:
        raise AdaptforgeError(f"layer {name!r} has {in_dim} inputs, not a multiple of {m}: pattern {n}:{m} needs one")
    groups = scores.reshape(out_dim, in_dim // m, m)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(2, groups.topk(n, dim=2).indices, True)
    return keep.reshape(out_dim, in_dim)


PP = TypeVar("PP", bound=PruneParams)


class PruneMethod(Method[PP]):
    """Scores weights (or reconstructs layers) on calibration data; subclasses set the class attributes."""

    kind = "prune method"
    params_base = PruneParams
    params_type: ClassVar[type[Params]] = PruneParams
    needs_general: ClassVar[bool] = False  # input statistics of the general calibration texts
    needs_domain: ClassVar[bool] = False  # input statistics of the domain texts
    needs_gram: ClassVar[bool] = False  # ... with the Gram matrix X^T X (SparseGPT)
    per_row: ClassVar[bool] = True  # unstructured masks compare weights within each output row
    patterns: ClassVar[tuple[str, ...]] = PATTERNS

    @classmethod
    def notes(cls) -> tuple[str, ...]:
        needs = [what for what, flag in (("general", cls.needs_general), ("domain", cls.needs_domain)) if flag]
        notes = [f"calibrates on {' and '.join(needs)} text"] if needs else ["needs no calibration data"]
        if cls.patterns != PATTERNS:
            notes.append(f"patterns: {', '.join(cls.patterns)}")
        return tuple(notes)

    def domain_examples(self, params: PP) -> int:
        """How many domain train examples the method reads (recorded with the pruned model)."""
        return params.calibration_size

    def prepare(self, layers: dict[str, torch.nn.Module], calibration: Calibration, params: PP) -> None:  # noqa: B027
        """Whole-model work before layers are scored (D-Pruner's gradients); optional."""

    @abstractmethod
    def importance(self, name: str, layer: torch.nn.Module, calibration: Calibration, params: PP) -> torch.Tensor:
        """``out x in`` importance of each weight (higher = keep)."""

    def prune_layer(
        self, name: str, layer: torch.nn.Module, sparsity: float, calibration: Calibration, params: PP
    ) -> LayerReport:
        """Zero the least important weights of ``layer`` in place (unstructured or N:M)."""
        scores = self.importance(name, layer, calibration, params).to(torch.float64)
        nm = params.nm()
        keep = nm_mask(scores, *nm, name) if nm else unstructured_mask(scores, sparsity, self.per_row)
        weight = weight_view(layer)  # (out, in) also for GPT-2's Conv1D
        with torch.no_grad():
            weight.mul_(keep.to(weight.dtype))
        zero = float((weight == 0).float().mean())
        return LayerReport(name, (int(weight.shape[0]), int(weight.shape[1])), zero)


PRUNE_METHODS: Registry[type[PruneMethod[Any]]] = Registry(
    "prune method",
    base=PruneMethod,
    entries={
        "magnitude": "adaptforge.prune.methods:Magnitude",
        "wanda": "adaptforge.prune.methods:Wanda",
        "sparsegpt": "adaptforge.prune.methods:SparseGpt",
        "dpruner": "adaptforge.prune.methods:DPruner",
    },
)
