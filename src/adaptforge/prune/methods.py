"""Registered pruners: magnitude, Wanda, SparseGPT and D-Pruner."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch

from adaptforge.core import AdaptforgeError
from adaptforge.layers import weight_view
from adaptforge.params import param
from adaptforge.prune.base import (
    PRUNE_METHODS,
    Calibration,
    LayerReport,
    PruneMethod,
    PruneParams,
    unstructured_mask,
)
from adaptforge.prune.calibration import InputStats, domain_gradients


def _stats(calibration: Calibration, name: str, general: bool) -> InputStats:
    source = calibration.general if general else calibration.domain
    if source is None or name not in source:
        raise AdaptforgeError(f"layer {name!r}: no calibration inputs were collected for it")
    return source[name]


@PRUNE_METHODS.register
class Magnitude(PruneMethod):
    """Magnitude pruning: remove the smallest ``|W|`` of each layer, no data needed (the baseline every
    pruning paper compares to; layer-wise comparison as in Wanda's magnitude baseline, Han et al. 2015)."""

    name = "magnitude"
    reference_url = "https://arxiv.org/abs/1506.02626"
    per_row = False

    def importance(
        self, name: str, layer: torch.nn.Module, calibration: Calibration, params: PruneParams
    ) -> torch.Tensor:
        return weight_view(layer).detach().abs().double()


@PRUNE_METHODS.register
class Wanda(PruneMethod):
    """Wanda (Sun et al. 2023, "A Simple and Effective Pruning Approach for Large Language Models"): the
    importance of ``W_ij`` is ``|W_ij| * ||X_j||_2``, compared within each output row, with ``X`` the layer's
    inputs on the domain calibration texts; no weight update.

    Reference code (locuslab/wanda) prunes block by block, feeding each block the outputs of the already
    pruned blocks before it; here every layer's input norms come from one pass of the dense model (the
    paper's own ablation shows the two agree closely), which keeps the method model-agnostic."""

    name = "wanda"
    reference_url = "https://arxiv.org/abs/2306.11695"
    needs_domain = True

    def importance(
        self, name: str, layer: torch.nn.Module, calibration: Calibration, params: PruneParams
    ) -> torch.Tensor:
        norm = _stats(calibration, name, general=False).feature_norm
        return weight_view(layer).detach().abs().double() * norm.unsqueeze(0)


@dataclass(frozen=True, kw_only=True)
class SparseGptParams(PruneParams):
    """Adds the OBS solver's settings."""

    block_size: int = param(128, ge=1, help="columns solved together (lazy batch updates)")
    damping: float = param(0.01, gt=0, help="added to the Hessian diagonal, as a fraction of its mean")


@PRUNE_METHODS.register
class SparseGpt(PruneMethod):
    """SparseGPT (Frantar and Alistarh 2023, "SparseGPT: Massive Language Models Can Be Accurately Pruned in
    One-Shot"): per layer, with ``H = X^T X`` of the calibration inputs, columns are pruned left to right and
    the error of each removed weight is compensated on the not-yet-processed columns with the inverse
    Hessian (Optimal Brain Surgeon), the mask chosen adaptively per block of ``block_size`` columns by
    ``w^2 / [H^-1]_jj^2``. Written from the paper; like the Wanda note above, inputs come from one pass of
    the dense model instead of the reference code's block-by-block sequence."""

    name = "sparsegpt"
    reference_url = "https://arxiv.org/abs/2301.00774"
    params_type = SparseGptParams
    needs_domain = True
    needs_gram = True
    patterns = ("unstructured", "2:4", "4:8")

    def importance(
        self, name: str, layer: torch.nn.Module, calibration: Calibration, params: PruneParams
    ) -> torch.Tensor:
        raise AssertionError("SparseGPT prunes through prune_layer")  # pragma: no cover

    def prune_layer(
        self, name: str, layer: torch.nn.Module, sparsity: float, calibration: Calibration, params: PruneParams
    ) -> LayerReport:
        p = cast(SparseGptParams, params)
        stats = _stats(calibration, name, general=False)
        assert stats.gram is not None
        W = weight_view(layer).detach().double().clone()
        original = W.clone()
        H = stats.gram.clone() / max(stats.tokens, 1)
        dead = torch.diag(H) == 0
        H[dead, dead] = 1.0
        W[:, dead] = 0.0
        H += torch.eye(H.shape[0], dtype=H.dtype) * p.damping * torch.diag(H).mean()
        Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
        nm = p.nm()
        columns = W.shape[1]
        for start in range(0, columns, p.block_size):
            end = min(start + p.block_size, columns)
            W1 = W[:, start:end].clone()
            Q1 = torch.zeros_like(W1)
            E1 = torch.zeros_like(W1)
            H1 = Hinv[start:end, start:end]
            d = torch.diag(H1)
            prune = torch.zeros_like(W1, dtype=torch.bool)
            if nm is None:
                prune = ~unstructured_mask(W1.pow(2) / d.pow(2).unsqueeze(0), sparsity, per_row=False)
            for i in range(end - start):
                if nm is not None and i % nm[1] == 0:
                    group = W1[:, i : i + nm[1]].pow(2) / d[i : i + nm[1]].pow(2).unsqueeze(0)
                    drop = group.topk(nm[1] - nm[0], dim=1, largest=False).indices
                    prune.scatter_(1, i + drop, True)
                w = W1[:, i]
                q = torch.where(prune[:, i], torch.zeros_like(w), w)
                Q1[:, i] = q
                err = (w - q) / d[i]
                W1[:, i:] -= err.unsqueeze(1) @ H1[i, i:].unsqueeze(0)
                E1[:, i] = err
            W[:, start:end] = Q1
            W[:, end:] -= E1 @ Hinv[start:end, end:]
        weight = weight_view(layer)
        with torch.no_grad():
            weight.copy_(W.to(weight.dtype))
        gram = stats.gram
        diff = original - W
        error = float(torch.einsum("oi,ij,oj->", diff, gram, diff).clamp(min=0).sqrt())
        scale = float(torch.einsum("oi,ij,oj->", original, gram, original).clamp(min=1e-30).sqrt())
        zero = float((weight == 0).float().mean())
        return LayerReport(name, tuple(weight.shape), zero, error / scale)


@dataclass(frozen=True, kw_only=True)
class DPrunerParams(PruneParams):
    """Adds the weight of the general-ability term in the refined loss."""

    general_weight: float = param(1.0, ge=0, help="lambda: weight of general importance in the refined loss")
    batch_size: int = param(8, ge=1, help="domain examples per gradient batch")


@PRUNE_METHODS.register
class DPruner(PruneMethod):
    """D-Pruner (Zhang et al. 2024, "Pruning as a Domain-specific LLM Extractor", NAACL Findings): keep the
    weights that matter for the domain *and* for general ability.

    The paper's three steps, as built here from the text:

    1. General importance on open-domain calibration text: the error a weight's removal causes. We use the
       layer-wise second-order estimate, the diagonal of the layer Hessian ``G_ij = ||X_j||^2`` (general
       inputs), so removing ``W_ij`` costs ``W_ij^2 G_ij`` on the layer's output.
    2. A refined training loss that keeps the model close to its general self where that matters,
       ``L = L_domain + lambda * sum_ij G_ij (W_ij - W0_ij)^2`` (the regulariser of the paper, EWC-like).
    3. Importance under the refined loss on domain calibration data, by its second-order Taylor expansion
       at ``W0``: ``I_ij = |g_ij W_ij| + 1/2 W_ij^2 (F_ij + 2 lambda G_ij)``, with ``g`` the domain-loss
       gradient and ``F`` its empirical Fisher diagonal (the regulariser contributes no gradient at ``W0``,
       only curvature). ``G`` is rescaled per layer to the mean of ``F`` so that ``lambda`` is unit-free.

    Weights are then compared within each output row, as in Wanda.

    Where we differ from the authors' code (psunlpgroup/D-Pruner, published after the issue was written):
    it accumulates ``|g W + (g W)^2 / 2 + ...|`` while *training* the base with LOMO on domain data, the
    general term folded into each step's gradient. We do not update the base (so adapters trained on the
    dense base still apply to the pruned one) and take the closed-form expansion at ``W0`` instead."""

    name = "dpruner"
    reference_url = "https://arxiv.org/abs/2405.06275"
    params_type = DPrunerParams
    needs_general = True

    @classmethod
    def notes(cls) -> tuple[str, ...]:
        return ("calibrates on general text and on domain-loss gradients",)

    def __init__(self) -> None:
        self._grads: dict[str, torch.Tensor] = {}
        self._fisher: dict[str, torch.Tensor] = {}

    def prepare(self, layers: dict[str, torch.nn.Module], calibration: Calibration, params: PruneParams) -> None:
        p = cast(DPrunerParams, params)
        self._grads, self._fisher = domain_gradients(
            calibration.scorer, calibration.domain_task, layers, p.calibration_size, p.seed, p.batch_size
        )

    def importance(
        self, name: str, layer: torch.nn.Module, calibration: Calibration, params: PruneParams
    ) -> torch.Tensor:
        p = cast(DPrunerParams, params)
        if name not in self._grads:
            raise AssertionError("D-Pruner scores layers after prepare()")  # pragma: no cover
        W = weight_view(layer).detach().double()
        g, F = self._grads[name], self._fisher[name]
        stats = _stats(calibration, name, general=True)
        general = stats.sq_sum / max(stats.tokens, 1)
        G = general.unsqueeze(0).expand_as(W)
        G = G * (F.mean() / G.mean()) if float(G.mean()) > 0 else G
        return (g * W).abs() + 0.5 * W.pow(2) * (F + 2.0 * p.general_weight * G)
