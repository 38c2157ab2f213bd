"""Pruning the base for a domain while keeping general ability: registered prune methods (magnitude, Wanda,
SparseGPT, D-Pruner) over calibration statistics, unstructured, N:M or whole feed-forward neurons.
``adaptforge prune`` itself is :mod:`adaptforge.pipelines.prune`."""

from adaptforge.prune.base import PRUNE_METHODS, PruneMethod, PruneParams, PruneReport, prunable_layers
from adaptforge.prune.methods import DPruner, DPrunerParams, Magnitude, SparseGpt, SparseGptParams, Wanda

__all__ = [
    "PRUNE_METHODS",
    "DPruner",
    "DPrunerParams",
    "Magnitude",
    "PruneMethod",
    "PruneParams",
    "PruneReport",
    "SparseGpt",
    "SparseGptParams",
    "Wanda",
    "prunable_layers",
]
