"""aTLAS merging: one learned coefficient per block per adapter, fitted on the tasks' dev data.

Zhang et al. 2024, "Knowledge Composition using Task Vectors with Learned Anisotropic Scaling",
https://arxiv.org/abs/2407.18242.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

from adaptforge.batching import EncodedSplit
from adaptforge.core import AdaptforgeError, LoraDelta
from adaptforge.lora.factors import fold, truncate
from adaptforge.lora.objective import accumulate_step, encode_split, mixture
from adaptforge.merge.base import MERGE_METHODS, DataMergeMethod, DataParams, MergeResult
from adaptforge.params import param
from adaptforge.scorers import LabelInputs, Scorer
from adaptforge.tasks import Task

log = logging.getLogger(__name__)

ATLAS_URL = "https://arxiv.org/abs/2407.18242"


@dataclass(frozen=True, kw_only=True)
class AtlasParams(DataParams):
    """aTLAS: every (module, adapter) coefficient starts at ``scaling * w_i`` (task arithmetic) and is
    learned with Adam (``lr``, ``steps``; each step sees ``batch_size`` examples of every task).
    ``rank`` re-factors the exact rank concatenation by SVD (reported error); ``None`` keeps it exact."""

    scaling: float = param(0.3, help="initial coefficient of every adapter (task arithmetic's lambda)")
    steps: int = param(30, ge=1, help="Adam steps")
    lr: float = param(0.05, gt=0, help="Adam learning rate of the coefficients")
    batch_size: int = param(16, ge=1, help="examples of every task per step")


@MERGE_METHODS.register
class Atlas(DataMergeMethod[AtlasParams]):
    """aTLAS task addition (Zhang et al. 2024, "Knowledge Composition using Task Vectors with Learned
    Anisotropic Scaling", https://arxiv.org/abs/2407.18242): ``dW_m = sum_i lambda_{m,i} dW_{i,m}`` with
    one learned coefficient per block (target module) ``m`` per adapter ``i``, fitted by gradient descent
    on the cross-entropy of the tasks' ``split`` (``dev``) with base and adapters frozen. Only the
    ``modules x adapters`` coefficients get gradients: each target linear computes
    ``W x + sum_i lambda_{m,i} s_i B_i (A_i x)`` (:class:`~adaptforge.lora.hooks.LoraMixture`).
    The result is exact in LoRA form (rank concatenation with the lambdas folded in); ``info`` holds the
    coefficients and the loss curve."""

    name = "atlas"
    reference_url = ATLAS_URL

    def _fit(
        self, deltas: list[LoraDelta], weights: list[float], params: AtlasParams, scorer: Scorer, tasks: list[Task]
    ) -> MergeResult:
        p = params
        model = scorer.backbone.model
        data: list[tuple[EncodedSplit, LabelInputs]] = [
            (encode_split(scorer, t, p.split, p.examples_per_task, p.seed), scorer.encode_labels(t)) for t in tasks
        ]
        n_modules = len(deltas[0])
        coef = torch.tensor(weights, dtype=torch.float32).repeat(n_modules, 1).requires_grad_(True)
        optimizer = torch.optim.Adam([coef], lr=p.lr)
        generator = torch.Generator().manual_seed(p.seed)
        orders = [torch.randperm(len(enc), generator=generator).tolist() for enc, _ in data]
        cursors = [0] * len(data)
        curve: list[float] = []
        # eval mode: no dropout, so the loss is a deterministic function of the coefficients
        with mixture(scorer, deltas, coef):
            for step in range(p.steps):
                optimizer.zero_grad(set_to_none=True)
                total = accumulate_step(scorer, model, data, orders, cursors, p.batch_size)
                optimizer.step()
                curve.append(round(total, 5))
                log.info("atlas step %d/%d: mean task loss %.4f", step + 1, p.steps, total)
        final = coef.detach().clone()
        delta, errors = truncate(fold(deltas, final), p.rank)
        names = list(deltas[0])
        info = {
            "coefficients": {name: [round(float(v), 5) for v in final[i]] for i, name in enumerate(names)},
            "mean_coefficient_per_adapter": [round(float(v), 5) for v in final.mean(dim=0)],
            "loss_curve": curve,
            "examples_per_task": [len(enc) for enc, _ in data],
        }
        if any(not math.isfinite(v) for v in curve):
            raise AdaptforgeError("atlas: the loss became non-finite; lower lr")
        return MergeResult(delta, errors, info)
