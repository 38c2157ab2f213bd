"""aTLAS few-shot: learned per-block coefficients over candidate adapters, early-stopped on held-out shots.

aTLAS (Zhang et al. 2024, "Knowledge Composition using Task Vectors with Learned Anisotropic Scaling",
https://arxiv.org/abs/2407.18242) composes ``dW_m = sum_i lambda_{m,i} dW_{i,m}`` with one coefficient per
block (target module) ``m`` per adapter ``i``, learned by gradient descent with base and adapters frozen;
the paper's few-shot setting learns them from k labelled examples of a new task. Here the coefficients
are fitted with Adam on the cross-entropy of ``shots.fit`` (the same inner step as the multi-task aTLAS
merge, :func:`adaptforge.lora.objective.accumulate_step`), and the held-out shots pick the step: their
loss is measured before training and after every step, the best coefficients are kept, and training stops
after ``patience`` steps without improvement. Without held-out shots it runs ``steps`` steps.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

from adaptforge.compose.base import (
    COMPOSERS,
    Candidate,
    ComposeParams,
    Composer,
    ComposeResult,
    deltas_of,
    encode_examples,
    mean_loss,
    mixture,
)
from adaptforge.compose.shots import Shots
from adaptforge.core import AdaptforgeError
from adaptforge.lora.factors import fold, truncate
from adaptforge.lora.objective import accumulate_step
from adaptforge.merge.atlas import ATLAS_URL
from adaptforge.params import param
from adaptforge.progress import Steps
from adaptforge.scorers import Scorer

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class FewShotAtlasParams(ComposeParams):
    """``steps``: at most this many Adam steps (``lr``), each on ``batch_size`` fit shots (cycling through a
    seeded order); ``init``: every coefficient's start (``None``: 1/N, the uniform mean of the N candidates);
    ``patience``: steps without a better held-out loss before stopping; ``rank``: re-factor the result by
    SVD (``None``: exact rank concatenation)."""

    steps: int = param(40, ge=1, help="at most this many Adam steps")
    lr: float = param(0.1, gt=0, help="Adam learning rate of the coefficients")
    init: float | None = param(None, help="every coefficient's start (null: 1/N, the candidates' mean)")
    patience: int = param(8, ge=1, help="steps without a better held-out loss before stopping")
    batch_size: int = param(16, ge=1, help="fit shots per step")
    rank: int | None = param(None, ge=1, help="re-factor the result to this rank by SVD (null: exact)")


@COMPOSERS.register
class FewShotAtlas(Composer[FewShotAtlasParams]):
    """aTLAS few-shot (https://arxiv.org/abs/2407.18242): a coefficient per (target module, candidate) learned
    by Adam on the fit shots, early-stopped on the held-out shots (best coefficients kept). ``info`` holds the
    coefficients, the fit-batch and held-out loss curves and the chosen step; ``weights`` are the mean
    coefficient of each candidate over modules."""

    name = "atlas"
    reference_url = ATLAS_URL
    needs_shots = True

    def _compose(
        self, candidates: list[Candidate], scorer: Scorer, shots: Shots, params: FewShotAtlasParams
    ) -> ComposeResult:
        p = params
        deltas = deltas_of(candidates)
        n_modules, n = len(deltas[0]), len(deltas)
        init = 1.0 / n if p.init is None else float(p.init)
        coef = torch.full((n_modules, n), init).requires_grad_(True)
        fit_data = [encode_examples(scorer, shots.task, shots.fit)]
        held = encode_examples(scorer, shots.task, shots.holdout) if shots.holdout else None
        order = torch.randperm(len(fit_data[0][0]), generator=torch.Generator().manual_seed(p.seed)).tolist()
        cursors = [0]
        optimizer = torch.optim.Adam([coef], lr=p.lr)
        model = scorer.backbone.model
        fit_curve: list[float] = []
        held_curve: list[float] = []
        best, best_step, best_loss = coef.detach().clone(), 0, math.inf

        def held_loss() -> float:
            assert held is not None
            with torch.no_grad():
                return float(mean_loss(scorer, model, *held))

        with mixture(scorer, deltas, coef):
            if held is not None:
                best_loss = held_loss()
                held_curve.append(best_loss)
            steps = Steps("atlas: steps", p.steps)
            for step in range(1, p.steps + 1):
                steps.update(step - 1)
                optimizer.zero_grad(set_to_none=True)
                fit_curve.append(accumulate_step(scorer, model, fit_data, [order], cursors, p.batch_size))
                optimizer.step()
                if held is None:
                    best, best_step = coef.detach().clone(), step
                    continue
                held_curve.append(held_loss())
                if held_curve[-1] < best_loss:
                    best, best_step, best_loss = coef.detach().clone(), step, held_curve[-1]
                elif step - best_step >= p.patience:
                    break
            steps.close()
        if not all(math.isfinite(v) for v in fit_curve):
            raise AdaptforgeError("atlas: the loss became non-finite; lower lr")
        log.info("atlas few-shot: %d steps, best step %d", len(fit_curve), best_step)
        delta, errors = truncate(fold(deltas, best), p.rank)
        names = list(deltas[0])
        info = {
            "coefficients": {name: [round(float(v), 5) for v in best[i]] for i, name in enumerate(names)},
            "init": init,
            "loss_curve": [round(v, 5) for v in fit_curve],
            "holdout_curve": [round(v, 5) for v in held_curve],
            "best_step": best_step,
            "steps_run": len(fit_curve),
            "stopped_early": len(fit_curve) < p.steps,
            "reconstruction_error": errors,
        }
        return ComposeResult(delta, [float(v) for v in best.mean(dim=0)], info)
