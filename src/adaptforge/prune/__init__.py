"""Pruning the base for a domain while keeping general ability: registered prune methods (magnitude, Wanda,
SparseGPT, D-Pruner) over calibration statistics, unstructured, N:M or whole feed-forward neurons.
A :class:`Pruner` is one run's algorithm (calibrate, prune in place) and reads the record beside a pruned
model; ``adaptforge prune`` itself (loading, evaluation, writing) is :mod:`adaptforge.pipelines.prune`."""

from adaptforge.prune.base import PRUNE_METHODS, PruneMethod, PruneParams, PruneReport, prunable_layers
from adaptforge.prune.methods import DPruner, DPrunerParams, Magnitude, SparseGpt, SparseGptParams, Wanda
from adaptforge.prune.pruner import RECORD_FILE, Pruner, read_record

__all__ = [
    "PRUNE_METHODS",
    "RECORD_FILE",
    "DPruner",
    "DPrunerParams",
    "Magnitude",
    "PruneMethod",
    "PruneParams",
    "Pruner",
    "PruneReport",
    "SparseGpt",
    "SparseGptParams",
    "Wanda",
    "prunable_layers",
    "read_record",
]
