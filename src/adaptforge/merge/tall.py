"""Consensus merging with TALL masks (Wang et al., https://arxiv.org/abs/2405.07813), on dense deltas."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from adaptforge.core import AdaptforgeError, LoraDelta, LoraModule
from adaptforge.lora.factors import dense_svd
from adaptforge.merge.base import MERGE_METHODS, MergeMethod, MergeParams, MergeResult
from adaptforge.merge.ops import consensus_mask, tall_masks
from adaptforge.params import param


@dataclass(frozen=True, kw_only=True)
class TallParams(MergeParams):
    """Adds ``tall_lambda`` (the paper tunes it per task in [0.2, 0.6]; 0.4 is the middle) and
    ``min_agree``, the number of task masks that must keep an entry (the paper's k = 2)."""

    tall_lambda: float = param(0.4, ge=0, help="mask threshold: keep where |tau_t| >= lambda |tau - tau_t|")
    min_agree: int = param(2, ge=1, help="task masks that must keep an entry (the paper's k)")


@MERGE_METHODS.register
class TallConsensus(MergeMethod[TallParams]):
    """Consensus task arithmetic on dense ``dW`` (https://arxiv.org/abs/2405.07813).

    With ``tau_t = scaling w_t dW_t`` and ``tau = sum_t tau_t``: task masks
    ``m_t = |tau_t| >= tall_lambda |tau - tau_t|``, consensus ``c = [sum_t m_t >= min_agree]``, and the
    result is ``c * tau``. Entries used by no task or by one task only ("selfish") are removed.
    Built one module at a time; back to LoRA by truncated SVD to ``rank`` (default: largest input
    rank), with the error reported. ``info["kept_fraction"]`` gives the share of entries kept per module.
    """

    name = "tall"
    reference_url = "https://arxiv.org/abs/2405.07813"

    def validate(self, deltas: list[LoraDelta], params: TallParams) -> None:
        min_agree = params.min_agree
        if min_agree > len(deltas):
            raise AdaptforgeError(
                f"min_agree={min_agree} but only {len(deltas)} adapters: every entry would be removed; "
                f"use min_agree <= {len(deltas)}"
            )

    def _merge(self, deltas: list[LoraDelta], weights: list[float], params: TallParams) -> MergeResult:
        tall = params
        modules: dict[str, LoraModule] = {}
        errors: dict[str, float] = {}
        kept: dict[str, float] = {}
        for name in deltas[0]:
            inputs = [d[name] for d in deltas]
            tau = torch.stack([w * m.dense() for w, m in zip(weights, inputs, strict=True)])
            merged = tau.sum(dim=0)
            keep = consensus_mask(tall_masks(tau, merged, tall.tall_lambda), tall.min_agree)
            kept[name] = float(keep.float().mean())
            modules[name], errors[name] = dense_svd(merged * keep, tall.rank or max(m.rank for m in inputs))
        return MergeResult(LoraDelta(modules), errors, {"space": "dense", "kept_fraction": kept})
