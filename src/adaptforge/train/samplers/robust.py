"""Robust samplers: weight the tasks that are worst now.

- ``group_dro``: worst-case task weighting by exponentiated gradient ascent on the task weights
  (Sagawa et al. 2020, "Distributionally Robust Neural Networks for Group Shifts", arXiv 1911.08731).
- ``drm``: distributionally robust minimisation by brute force, the baseline MPTS approximates (Wang
  et al. 2025, arXiv 2501.11039, the "DRM" rows): evaluate every one of ``B-hat`` uniformly drawn
  candidate tasks under the current model and train on the worst ``B``, a Monte-Carlo estimate of
  the CVaR_{B / B-hat} objective. Exact, and expensive: ``B-hat`` task evaluations per step.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from adaptforge.core import AdaptforgeError
from adaptforge.params import param
from adaptforge.train.samplers.base import (
    SAMPLERS,
    CandidateConfig,
    Evaluator,
    FloatArray,
    SamplerConfig,
    TaskInfo,
    TaskSampler,
    chance_scale,
    draw_candidates,
    is_int,
    mix_floor,
    softmax,
    state_floats,
)


@dataclass(frozen=True, kw_only=True)
class GroupDROConfig(SamplerConfig):
    eta: float = param(
        0.03, gt=0, help="step size of the exponentiated-gradient update (per training step, loss units)"
    )
    floor: float = param(0.05, ge=0, le=1, help="weight of the uniform distribution mixed into q (never starve a task)")
    ema: float = param(0.3, gt=0, le=1, help="weight of the newest observed loss in each task's loss estimate")
    size_adjustment: float = param(
        0.0, ge=0, help="C of Sagawa et al. Sec. 3.3: the estimate of task i is loss + C / sqrt(n_i)"
    )
    eval_mix: float = param(
        0.5, ge=0, le=1, help="observe_eval: estimate <- (1 - eval_mix) * estimate + eval_mix * dev loss"
    )


@dataclass(frozen=True, kw_only=True)
class DRMConfig(CandidateConfig):
    """``candidates`` (B-hat) and ``risk_scale`` (as MPTS's, so the oracle and its approximation rank the same
    risk); the cost per step is B-hat task evaluations."""


class _AdaptiveSampler(TaskSampler[GroupDROConfig]):
    """Shared bookkeeping of loss-driven samplers: a per-task loss estimate and a warm-up.

    Until every task has a loss estimate, draws are uniform over the tasks without one (each task
    is seen once before any is preferred, as in UCB's initialisation). A task gets an estimate from
    its first training loss (:meth:`observe`) or dev loss (:meth:`observe_eval`).
    """

    def __init__(
        self, config: GroupDROConfig | Mapping[str, Any] | None = None, *, tasks: Sequence[TaskInfo], seed: int = 0
    ) -> None:
        super().__init__(config, tasks=tasks, seed=seed)
        n = self.n_tasks
        self._seen = np.zeros(n, dtype=bool)
        self._level = np.zeros(n)  # EMA of observed losses (meaningful where _seen)
        self._clock = -1  # largest step observed so far

    def probabilities(self) -> FloatArray:
        if not self._seen.all():
            unseen = (~self._seen).astype(np.float64)
            return unseen / unseen.sum()
        return self._adaptive_probabilities()

    @abstractmethod
    def _adaptive_probabilities(self) -> FloatArray: ...

    def _blend_eval(self, losses: dict[int, float]) -> None:
        w = self.config.eval_mix
        for task, loss in losses.items():
            if self._seen[task]:
                self._level[task] = (1.0 - w) * self._level[task] + w * loss
            else:
                self._level[task] = loss
                self._seen[task] = True

    def _base_state(self) -> dict[str, Any]:
        return {"seen": self._seen.tolist(), "level": self._level.tolist(), "clock": self._clock}

    def _parse_base_state(self, state: Mapping[str, Any]) -> tuple[NDArray[np.bool_], FloatArray, int]:
        n = (self.n_tasks,)
        seen = state_floats(state, "seen", n).astype(bool)
        level = state_floats(state, "level", n)
        clock = state.get("clock")
        if not is_int(clock) or clock < -1:
            raise AdaptforgeError("sampler state: 'clock' must be an integer >= -1")
        return seen, level, int(clock)


@SAMPLERS.register
class GroupDROSampler(_AdaptiveSampler):
    """Worst-case (group DRO) task sampling, after Sagawa et al. 2020 (arXiv 1911.08731), Algorithm 1.

    Group DRO minimises ``max_q sum_i q_i * L_i(theta)`` over the simplex; its online algorithm
    ascends on ``q`` by exponentiated gradient, ``q_i <- q_i * exp(eta * L_i)`` then normalises, and
    weights the model update by ``q``. Here ``q`` is used as the *sampling* distribution instead of
    loss weights (the expected update is the same), and since one step trains one task, ``L_i`` is
    each task's loss estimate ``e_i``:

    - on ``observe(t, loss)``: ``e_t <- (1 - ema) * e_t + ema * loss`` (the first loss sets ``e_t``),
      then, once every task has an estimate, ``log q_i <- log q_i + eta * (e_i + C / sqrt(n_i))`` for
      all ``i`` (``C = size_adjustment``, Sagawa et al. Sec. 3.3; log-space, shifted so max is 0);
    - on ``observe_eval``: ``e_i <- (1 - eval_mix) * e_i + eval_mix * dev_i`` (no ascent step);
    - sampling: ``p = (1 - floor) * q + floor / N``.

    ``q`` accumulates the history of losses (mirror ascent), so mass moves to the task that has
    been worst for a while and leaves it once another task's loss is higher. ``eta`` multiplies raw
    losses, so it is not scale-free: the default suits losses of order 1 (cross-entropy); scale it
    inversely with the loss magnitude (``mpts`` is scale-free).
    """

    name = "group_dro"
    reference_url = "https://arxiv.org/abs/1911.08731"
    params_type = GroupDROConfig

    def __init__(
        self, config: GroupDROConfig | Mapping[str, Any] | None = None, *, tasks: Sequence[TaskInfo], seed: int = 0
    ) -> None:
        super().__init__(config, tasks=tasks, seed=seed)
        self._log_q = np.zeros(self.n_tasks)
        self._adjust = self.config.size_adjustment / np.sqrt(self._sizes)

    def _observe(self, task: int, loss: float, step: int) -> None:
        a = self.config.ema
        self._level[task] = (1.0 - a) * self._level[task] + a * loss if self._seen[task] else loss
        self._seen[task] = True
        self._clock = max(self._clock, step)
        if self._seen.all():
            self._log_q = self._log_q + self.config.eta * (self._level + self._adjust)
            self._log_q -= self._log_q.max()

    def _observe_eval(self, losses: dict[int, float]) -> None:
        self._blend_eval(losses)

    def _adaptive_probabilities(self) -> FloatArray:
        return mix_floor(softmax(self._log_q), self.config.floor)

    def _state(self) -> dict[str, Any]:
        return {**self._base_state(), "log_q": self._log_q.tolist()}

    def _load_state(self, state: Mapping[str, Any], tensors: Mapping[str, Any]) -> None:
        seen, level, clock = self._parse_base_state(state)
        log_q = state_floats(state, "log_q", (self.n_tasks,))
        self._seen, self._level, self._clock, self._log_q = seen, level, clock, log_q


@SAMPLERS.register
class DRMSampler(TaskSampler[DRMConfig]):
    """Worst ``B`` of ``B-hat`` evaluated candidates (the reference's ``drm`` strategy, ``sinusoid/trainer_maml.py``).

    Each step draws ``candidates`` tasks uniformly (:func:`draw_candidates`), asks the trainer's
    ``evaluate`` for each one's loss on the batch it would train on next (no gradient), and returns the
    ``B`` with the highest loss. The reference sums the worst ``B`` adapted losses of the ``B-hat``
    candidates it adapted to; here the candidates' current losses rank them (divided by ``ln k`` with
    ``risk_scale=log_k``; the reference's sinusoid MSE needs no such scale), and the trainer then
    trains on exactly those batches, so no evaluation is wasted on a batch that is not used.
    :meth:`probabilities` is the candidate distribution (uniform); the choice among candidates is
    deterministic given their losses.
    """

    name = "drm"
    reference_url = "https://arxiv.org/abs/2501.11039"
    config: DRMConfig

    def __init__(
        self, config: DRMConfig | Mapping[str, Any] | None = None, *, tasks: Sequence[TaskInfo], seed: int = 0
    ) -> None:
        super().__init__(config, tasks=tasks, seed=seed)
        self._scale = chance_scale(self.tasks, self.config.risk_scale, self.owner())

    def probabilities(self) -> FloatArray:
        return np.full(self.n_tasks, 1.0 / self.n_tasks)

    def next(self) -> int:
        raise AdaptforgeError(
            f"{self.owner()}: chooses by evaluating candidates; call next_batch(size, evaluate) with an evaluator"
        )

    def next_batch(self, size: int, evaluate: Evaluator | None = None) -> list[int]:
        size = self._check_size(size)
        b_hat = self.config.b_hat(size)
        if size > b_hat:
            raise AdaptforgeError(
                f"{self.owner()}: candidates (B-hat) = {b_hat} is below the {size} tasks per step; "
                f"pass --sampler-opt candidates={size} or more (or leave it unset: 2 B)"
            )
        if evaluate is None:
            raise AdaptforgeError(f"{self.owner()}: next_batch needs an evaluate function (task indices -> losses)")
        pool = draw_candidates(self._rng, self.n_tasks, b_hat)
        risks = self._evaluate_candidates(pool, evaluate) / self._scale[pool]
        chosen = pool[np.argsort(-risks, kind="stable")[:size]]
        np.add.at(self._draws, chosen, 1)
        return [int(i) for i in chosen]
