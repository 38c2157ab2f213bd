"""LoraHub: gradient-free weights over candidate adapters from a few labelled examples.

LoraHub (Huang et al. 2023, "LoraHub: Efficient Cross-Task Generalization via Dynamic LoRA
Composition", https://arxiv.org/abs/2307.13269) searches one weight per candidate adapter,

    w* = argmin_w  CE(shots; W + sum_i w_i dW_i) + alpha * sum_i |w_i|,    w in [lo, hi]^N, from w = 0,

with CMA-ES (nevergrad's ``CMA``). Unlike the reference code, the weights combine whole deltas
``dW_i = s_i B_i A_i`` (not the A and B factors separately, which would add cross terms), and the merged
model is evaluated in low-rank form through :class:`~adaptforge.lora.hooks.LoraMixture`: each objective
evaluation is one no-grad forward over the shots, with no model reload or weight rewrite. The result is
the exact rank concatenation ``fold(deltas, w*)`` (optionally re-factored to ``rank`` by SVD).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType

import numpy as np
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
from adaptforge.core import AdaptforgeError, LoraDelta
from adaptforge.lora.factors import fold, truncate
from adaptforge.lora.hooks import LoraMixture
from adaptforge.params import param
from adaptforge.progress import Steps
from adaptforge.scorers import Scorer

log = logging.getLogger(__name__)

LORAHUB_URL = "https://arxiv.org/abs/2307.13269"


@dataclass(frozen=True, kw_only=True)
class LoraHubParams(ComposeParams):
    """``budget``: objective evaluations asked of CMA-ES (the initial point is evaluated on top);
    ``alpha``: weight of the L1 penalty; ``bounds``: box of every weight; ``init``: the starting weight of
    every candidate (0 as in LoraHub); ``seed``: the optimizer's random state; ``batch_size``: shots per
    forward; ``rank``: re-factor the result to this rank by SVD (``None``: exact rank concatenation)."""

    budget: int = param(40, ge=1, help="objective evaluations asked of CMA-ES")
    alpha: float = param(0.05, ge=0, help="weight of the L1 penalty on the weights")
    bounds: tuple[float, ...] = param((-1.5, 1.5), help="[lower, upper] box of every weight")
    init: float = param(0.0, help="starting weight of every candidate")
    batch_size: int = param(8, ge=1, help="shots per forward pass")
    rank: int | None = param(None, ge=1, help="re-factor the result to this rank by SVD (null: exact)")

    def check(self) -> None:
        self.require(
            "bounds", len(self.bounds) == 2 and self.bounds[0] < self.bounds[1], "[lower, upper] with lower < upper"
        )
        self.require("init", self.bounds[0] <= self.init <= self.bounds[1], f"inside bounds {list(self.bounds)}")


class LoraHubObjective:
    """LoraHub's objective as a function of the weights: ``shot_loss(w) + alpha * ||w||_1``, where
    ``shot_loss`` is the mean loss of all shots (cross-entropy; on a generation task the NLL per response
    token, LoraHub's original setting) under ``W + sum_i w_i dW_i`` (low-rank hooks,
    no grad). Use inside ``with``: entering installs the hooks on the scorer's model, leaving removes them."""

    def __init__(
        self, scorer: Scorer, shots: Shots, deltas: Sequence[LoraDelta], alpha: float, batch_size: int = 8
    ) -> None:
        if shots.k == 0:
            raise AdaptforgeError(f"LoraHub needs k > 0 shots of task {shots.task.name!r}")
        self.scorer = scorer
        self.deltas = list(deltas)
        self.alpha = float(alpha)
        self.batch_size = batch_size
        self.encoded, self.labels = encode_examples(scorer, shots.task, shots.examples)
        self.n_modules = len(self.deltas[0])
        self._stack = contextlib.ExitStack()
        self._mixture: LoraMixture | None = None

    def __enter__(self) -> LoraHubObjective:
        zeros = torch.zeros(self.n_modules, len(self.deltas))
        self._mixture = self._stack.enter_context(mixture(self.scorer, self.deltas, zeros))
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._mixture = None
        self._stack.close()

    @torch.no_grad()
    def shot_loss(self, weights: Sequence[float] | np.ndarray) -> float:
        if self._mixture is None:
            raise AdaptforgeError("LoraHubObjective is evaluated inside `with objective:`")
        w = torch.as_tensor(np.asarray(weights, dtype=np.float32)).reshape(1, -1)
        self._mixture.set_coefficients(w.expand(self.n_modules, -1))
        return float(mean_loss(self.scorer, self.scorer.backbone.model, self.encoded, self.labels, self.batch_size))

    def __call__(self, weights: Sequence[float] | np.ndarray) -> float:
        return self.shot_loss(weights) + self.alpha * float(np.abs(np.asarray(weights, dtype=np.float64)).sum())


@COMPOSERS.register
class LoraHub(Composer[LoraHubParams]):
    """LoraHub (https://arxiv.org/abs/2307.13269): one weight per candidate found by CMA-ES on the shots'
    cross-entropy plus ``alpha`` times the L1 norm, within ``bounds``, from ``init``. The best weights seen
    (the objective is deterministic) are folded exactly; ``info`` holds them, the best-so-far objective per
    evaluation (``loss_curve``) and the shot loss of the result."""

    name = "lorahub"
    reference_url = LORAHUB_URL
    needs_shots = True
    generative = True

    def _compose(
        self, candidates: list[Candidate], scorer: Scorer, shots: Shots, params: LoraHubParams
    ) -> ComposeResult:
        p = params
        deltas = deltas_of(candidates)
        best_w, curve, shot_loss = search_weights(scorer, shots, deltas, p)
        n_modules = len(deltas[0])
        delta, errors = truncate(fold(deltas, torch.tensor(best_w).expand(n_modules, -1)), p.rank)
        weights = [float(w) for w in best_w]
        info = {
            "weights": [round(w, 5) for w in weights],
            "loss_curve": [round(v, 5) for v in curve],
            "objective": round(curve[-1], 5),
            "initial_objective": round(curve[0], 5),
            "shot_loss": round(shot_loss, 5),
            "evaluations": len(curve),
            "reconstruction_error": errors,
        }
        return ComposeResult(delta, weights, info)


def search_weights(
    scorer: Scorer, shots: Shots, deltas: Sequence[LoraDelta], p: LoraHubParams
) -> tuple[list[float], list[float], float]:
    """CMA-ES over the weights: returns the best weights, the best-so-far objective after each evaluation
    (the first is the initial point) and the shot loss (no penalty) of the best weights."""
    try:
        import nevergrad as ng
    except ImportError as err:  # pragma: no cover - nevergrad is a dependency of compose
        raise AdaptforgeError("LoraHub needs the 'nevergrad' package (pip install nevergrad)") from err
    n = len(deltas)
    lower, upper = p.bounds
    init = np.full(n, p.init, dtype=np.float64)
    parametrization = ng.p.Array(init=init, lower=lower, upper=upper)
    parametrization.random_state = np.random.RandomState(p.seed)
    optimizer = ng.optimizers.CMA(parametrization=parametrization, budget=p.budget)
    with LoraHubObjective(scorer, shots, deltas, p.alpha, p.batch_size) as objective, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Could not import matplotlib")  # printed by `import cma`
        # pycma's InjectionWarning about its own step-size (TPA) probes under nevergrad's one-at-a-time ask
        warnings.filterwarnings("ignore", message="orphanated injected solution")
        best_w, best = init, objective(init)
        curve = [best]
        with Steps("lorahub search: evaluations", p.budget) as steps:
            for _ in range(p.budget):
                candidate = optimizer.ask()
                value = objective(candidate.value)
                optimizer.tell(candidate, value)
                if value < best:
                    best_w, best = np.array(candidate.value, dtype=np.float64), value
                curve.append(best)
                steps.advance(info=f"best objective {best:.4f}")
        log.info("lorahub: objective %.4f -> %.4f in %d evaluations", curve[0], best, len(curve))
        shot_loss = objective.shot_loss(best_w)
    return [float(w) for w in best_w], curve, shot_loss
