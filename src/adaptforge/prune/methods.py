"""Registered pruners: magnitude, Wanda, SparseGPT and D-Pruner."""

from __future__ import annotations

from dataclasses import dataclass

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
from adaptforge.prune.calibration import InputStats, batch_gradients, text_gradients


def _stats(calibration: Calibration, name: str, general: bool) -> InputStats:
    source = calibration.general if general else calibration.domain
    if source is None or name not in source:
        raise AdaptforgeError(f"layer {name!r}: no calibration inputs were collected for it")
    return source[name]


def inverse_hessian_factor(stats: InputStats, damping: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The upper Cholesky factor ``U`` of the damped inverse layer Hessian, ``H^-1 = U^T U`` with
    ``H = X^T X / tokens + damping * mean(diag H) * I`` (SparseGPT's form: ``U_jj^2`` is the OBS denominator of
    column ``j`` once the columns before it are eliminated), and the mask of inputs that never fired (their
    ``H_jj`` set to 1 so the factor exists)."""
    assert stats.gram is not None
    H = stats.gram.clone() / max(stats.tokens, 1)
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    H += torch.eye(H.shape[0], dtype=H.dtype) * damping * torch.diag(H).mean()
    return torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True), dead


@PRUNE_METHODS.register
class Magnitude(PruneMethod[PruneParams]):
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
class Wanda(PruneMethod[PruneParams]):
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
class SparseGpt(PruneMethod[SparseGptParams]):
    """SparseGPT (Frantar and Alistarh 2023, "SparseGPT: Massive Language Models Can Be Accurately Pruned in
    One-Shot"): per layer, with ``H = X^T X`` of the calibration inputs, columns are pruned left to right and
    the error of each removed weight is compensated on the not-yet-processed columns with the inverse
    Hessian (Optimal Brain Surgeon), the mask chosen adaptively per block of ``block_size`` columns by
    ``w^2 / [H^-1]_jj^2``. Written from the paper; like the Wanda note above, inputs come from one pass of
    the dense model instead of the reference code's block-by-block sequence."""

    name = "sparsegpt"
    reference_url = "https://arxiv.org/abs/2301.00774"
    needs_domain = True
    needs_gram = True
    patterns = ("unstructured", "2:4", "4:8")

    def importance(
        self, name: str, layer: torch.nn.Module, calibration: Calibration, params: SparseGptParams
    ) -> torch.Tensor:
        raise AssertionError("SparseGPT prunes through prune_layer")  # pragma: no cover

    def prune_layer(
        self, name: str, layer: torch.nn.Module, sparsity: float, calibration: Calibration, params: SparseGptParams
    ) -> LayerReport:
        p = params
        stats = _stats(calibration, name, general=False)
        assert stats.gram is not None
        W = weight_view(layer).detach().double().clone()
        original = W.clone()
        Hinv, dead = inverse_hessian_factor(stats, p.damping)
        W[:, dead] = 0.0
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
    """Adds the weight of the general term, the gradient sample and the general Hessian's damping.

    ``general_weight`` = 8 was chosen on dev data only, from {0, 0.5, 1, 2, 4, 8, 32}
    (``benchmarks/retain.py --select-dpruner``: the mean over 3 domains of general retention on the general
    suite's dev examples outside the ones the table reports and domain retention on the domains' dev splits),
    for MiniLM at 50% unstructured; the curve is flat from 2 to 32, and another model may want another value."""

    general_weight: float = param(
        8.0, ge=0, help="lambda: weight of the general removal error against the domain score (each layer-normalised)"
    )
    gradient_examples: int = param(
        512, ge=1, help="domain train examples (or texts of a plain-text domain) whose loss gradients are accumulated"
    )
    batch_size: int = param(8, ge=1, help="domain examples per gradient batch")
    damping: float = param(0.01, gt=0, help="added to the general Hessian's diagonal, as a fraction of its mean")
    train_lr: float = param(
        0.0, ge=0, help="LOMO-style SGD step on the scored layers after each batch (authors: 0.03); 0: no training"
    )
    train_epochs: int = param(1, ge=1, help="passes over the domain examples (with train_lr > 0)")
    clip_grad_norm: float = param(1.0, gt=0, help="training steps clip the scored layers' gradient to this norm")


@PRUNE_METHODS.register
class DPruner(PruneMethod[DPrunerParams]):
    """D-Pruner (Zhang et al. 2024, "Pruning as a Domain-specific LLM Extractor", NAACL Findings): keep the
    weights that matter for general ability *and* for the domain.

    1. General importance, on open-domain calibration text: the error a weight's removal causes on its layer's
       output, the OBS saliency ``E_ij = W_ij^2 / U_jj^2`` with ``U`` the Cholesky factor of the layer's inverse
       Hessian ``(X^T X)^-1`` on general inputs (the paper's step 1; the authors' ``general.py`` stores exactly
       SparseGPT's selection score).
    2. The refined domain loss ``L = L_domain + lambda * R``, where ``R`` charges a departure from the dense
       weights by its general error; removing ``W_ij`` therefore adds ``lambda * E_ij`` to ``L``.
    3. Domain importance under that loss on domain train examples, by the paper's Taylor expansion with the
       empirical Fisher for the Hessian, accumulated over batches as in the authors' optimiser:
       ``D_ij = mean_b |g_b,ij W_ij + (g_b,ij W_ij)^2 / 2|`` with ``g_b`` batch ``b``'s gradient. Per-batch
       absolute values are summed, not the mean gradient's, so the score measures how sensitive the loss is
       to the weight rather than where the noisy mean gradient of a few examples happens to point.

    The score is ``D / mean(D) + lambda * E / mean(E)`` per layer (both terms scaled to mean 1 so that
    ``lambda`` is unit-free), compared within each output row as in Wanda.

    Where we differ from the authors' code (psunlpgroup/D-Pruner, released as ``compressionOrg/D-Pruner``): (a) it
    *trains* the base with LOMO on domain data for epochs (lr 0.03) while accumulating the score, so the pruned
    model is also fine-tuned; by default we keep the base's weights (adapters trained on the dense base still apply
    to the pruned one, and like Wanda it only scores and masks) and take the expansion at the dense weights over
    ``gradient_examples`` examples. ``train_lr > 0`` is the LOMO variant: an SGD step (gradient clipped to
    ``clip_grad_norm``) after each batch, for ``train_epochs`` passes, the score accumulated at the moving weights;
    unlike LOMO it updates only the scored (prunable) layers, at a constant rate, with no warm-up. (b) Its
    regulariser enters the score only through the gradient, ``g + 2 lambda lr^2 E g^2 / 1000`` with lambda 0.1 (the
    regulariser's effect on a training step of size ``lr``), which vanishes without training (``lr = 0``); we charge
    the removal itself, ``lambda * E``, the paper's regulariser evaluated at the pruned weight, and scale the two
    terms per layer. (c) Its accumulated term is ``|gW + (gW)^2 / 2000 + W^3|``; we keep the paper's ``|gW + (gW)^2
    / 2|`` (the ``/2000`` and ``W^3`` are not explained there). (d) It thresholds each whole layer (or 128-column
    blocks); we compare within rows like our Wanda. (e) Its general scores come from SparseGPT's sequential pass,
    which updates the weights between column blocks; ours are at the dense weights, from one pass of the dense
    model."""

    name = "dpruner"
    reference_url = "https://arxiv.org/abs/2405.06275"
    needs_general = True
    needs_gram = True

    @classmethod
    def notes(cls) -> tuple[str, ...]:
        return ("calibrates on general text and on domain-loss gradients",)

    def __init__(self) -> None:
        self._domain: dict[str, torch.Tensor] = {}

    def domain_examples(self, params: DPrunerParams) -> int:
        return params.gradient_examples

    def prepare(self, layers: dict[str, torch.nn.Module], calibration: Calibration, params: DPrunerParams) -> None:
        p = params
        score = {name: torch.zeros(weight_view(layer).shape, dtype=torch.float64) for name, layer in layers.items()}
        batches = 0
        for _ in range(p.train_epochs if p.train_lr > 0 else 1):
            for grads in self._gradients(layers, calibration, p):
                batches += 1
                for name, g in grads.items():
                    gw = g * weight_view(layers[name]).detach().double()
                    score[name] += (gw + 0.5 * gw * gw).abs()
                if p.train_lr > 0:
                    self._step(layers, grads, p)
        self._domain = {name: s / batches for name, s in score.items()}

    @staticmethod
    def _gradients(layers: dict[str, torch.nn.Module], calibration: Calibration, p: DPrunerParams):  # noqa: ANN205
        if calibration.domain_task is not None:
            return batch_gradients(
                calibration.scorer, calibration.domain_task, layers, p.gradient_examples, p.seed, p.batch_size
            )
        texts = calibration.domain_texts[: p.gradient_examples]  # a plain-text domain: the next-token loss
        return text_gradients(calibration.scorer.backbone, layers, texts, p.max_length, p.batch_size)

    @staticmethod
    @torch.no_grad()
    def _step(layers: dict[str, torch.nn.Module], grads: dict[str, torch.Tensor], p: DPrunerParams) -> None:
        """One SGD step on the scored layers, the gradient clipped to ``clip_grad_norm`` over all of them (the
        authors' LOMO update, which is plain SGD fused into the backward pass)."""
        norm = float(torch.sqrt(sum(g.pow(2).sum() for g in grads.values())))
        rate = p.train_lr * min(1.0, p.clip_grad_norm / (norm + 1e-6))
        for name, g in grads.items():
            weight = weight_view(layers[name])
            weight.sub_((rate * g).to(weight.dtype))

    def components(
        self, name: str, layer: torch.nn.Module, calibration: Calibration, params: DPrunerParams
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(D, E)``: the layer's domain score and general removal error, unscaled (for the benchmark's dev
        selection of ``general_weight``, which recombines them without recomputing)."""
        p = params
        if name not in self._domain:
            raise AssertionError("D-Pruner scores layers after prepare()")  # pragma: no cover
        W = weight_view(layer).detach().double()
        U, dead = inverse_hessian_factor(_stats(calibration, name, general=True), p.damping)
        E = W.pow(2) / torch.diag(U).pow(2).unsqueeze(0)
        E[:, dead] = 0.0  # an input general text never fed: removing its weights costs general ability nothing
        return self._domain[name], E

    @staticmethod
    def combine(domain: torch.Tensor, general: torch.Tensor, general_weight: float) -> torch.Tensor:
        """``D / mean(D) + lambda * E / mean(E)`` (a term that is zero everywhere stays zero)."""
        d, e = float(domain.mean()), float(general.mean())
        return (domain / d if d > 0 else domain) + general_weight * (general / e if e > 0 else general)

    def importance(
        self, name: str, layer: torch.nn.Module, calibration: Calibration, params: DPrunerParams
    ) -> torch.Tensor:
        domain, general = self.components(name, layer, calibration, params)
        return self.combine(domain, general, params.general_weight)
