"""Task samplers for multi-task LoRA training: which task the next batch comes from.

The trainer builds one sampler and drives it step by step::

    sampler = SAMPLERS.get(name)(options, tasks=[TaskInfo(...), ...], seed=seed)  # options: a dict
    for step in range(steps):
        t = sampler.next()                  # index into ``tasks``
        loss = train_step(t)
        sampler.observe(t, loss, step)      # the loss of the batch just trained
        # optionally, every eval_every steps: sampler.observe_eval({task_index: dev_loss, ...})

``probabilities()`` is the distribution the next draw uses (for logging). ``state_dict()`` is a
JSON-serialisable dict (configuration, task names, the numpy RNG state and all learned state) and
``load_state_dict`` restores it, so a killed run resumes with exactly the same sequence of tasks.

Samplers, by registry name:

- ``uniform``: every task equally often.
- ``proportional``: ``p_i ~ n_i`` (examples-proportional mixing), optionally with the size cap
  ``K`` of Raffel et al. 2020 (T5, arXiv 1910.10683): ``p_i ~ min(n_i, K)``.
- ``temperature``: ``p_i ~ n_i^(1/T)`` (Arivazhagan et al. 2019, arXiv 1907.05019; the same rule
  with ``alpha = 1/T`` in Conneau & Lample 2019, arXiv 1901.07291). ``T = 1`` is proportional and
  ``T -> inf`` is uniform.
- ``group_dro``: worst-case task weighting by exponentiated gradient ascent on the task weights
  (Sagawa et al. 2020, "Distributionally Robust Neural Networks for Group Shifts", arXiv 1911.08731).
- ``mpts``: Model Predictive Task Sampling (Wang et al. 2025, "Model Predictive Task Sampling for
  Efficient and Robust Adaptation", arXiv 2501.11039): a small Bayesian risk model predicts every
  task's next loss and tasks are drawn by predicted risk plus an optimism bonus.

Every sampler is a :class:`~adaptforge.methods.Method` whose ``params_type`` is its configuration, a
:class:`~adaptforge.params.Params` with declared defaults and ranges (unknown keys are rejected). Samplers
draw with their own ``numpy.random.Generator`` seeded from ``seed``, so a sequence is a pure function of
(seed, observed losses).
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from adaptforge.core import AdaptforgeError, Registry
from adaptforge.methods import Method
from adaptforge.params import Params, param

FloatArray = NDArray[np.float64]
STATE_FORMAT = 1


# --------------------------------------------------------------------------------------------- tasks


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


@dataclass(frozen=True)
class TaskInfo:
    """What a sampler knows about a task: its name, training-set size, label count, optional features.

    ``feature_vector`` (e.g. the task description's embedding) is used by ``mpts`` only; either every
    task has one, all of the same length, or none has.
    """

    name: str
    n_train: int
    n_labels: int = 0
    feature_vector: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise AdaptforgeError(f"task info: name must be a non-empty string, got {self.name!r}")
        if not _is_int(self.n_train) or self.n_train < 1:
            raise AdaptforgeError(f"task info {self.name!r}: n_train must be an integer >= 1, got {self.n_train!r}")
        if not _is_int(self.n_labels) or self.n_labels < 0:
            raise AdaptforgeError(f"task info {self.name!r}: n_labels must be an integer >= 0, got {self.n_labels!r}")
        object.__setattr__(self, "n_train", int(self.n_train))
        object.__setattr__(self, "n_labels", int(self.n_labels))
        if self.feature_vector is not None:
            try:
                vec = np.asarray(self.feature_vector, dtype=np.float64).ravel()
            except (TypeError, ValueError):
                raise AdaptforgeError(
                    f"task info {self.name!r}: feature_vector must be a sequence of numbers"
                ) from None
            if vec.size == 0 or not np.all(np.isfinite(vec)):
                raise AdaptforgeError(f"task info {self.name!r}: feature_vector must be non-empty and finite")
            object.__setattr__(self, "feature_vector", tuple(float(v) for v in vec))


def _check_tasks(tasks: Sequence[TaskInfo]) -> tuple[TaskInfo, ...]:
    if isinstance(tasks, (str, bytes)) or not isinstance(tasks, Sequence):
        raise AdaptforgeError(f"task sampler: tasks must be a list of TaskInfo, got {type(tasks).__name__}")
    tasks = tuple(tasks)
    if not tasks:
        raise AdaptforgeError("task sampler: the task list is empty; give at least one TaskInfo")
    for t in tasks:
        if not isinstance(t, TaskInfo):
            raise AdaptforgeError(f"task sampler: tasks must be TaskInfo objects, got {type(t).__name__}")
    names = [t.name for t in tasks]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise AdaptforgeError(f"task sampler: task names must be unique; repeated: {', '.join(dupes)}")
    with_features = [t.feature_vector is not None for t in tasks]
    if any(with_features) and not all(with_features):
        missing = [t.name for t in tasks if t.feature_vector is None]
        raise AdaptforgeError(
            f"task sampler: either every task has a feature_vector or none has; missing for {', '.join(missing)}"
        )
    if all(with_features) and len({len(t.feature_vector or ()) for t in tasks}) > 1:
        raise AdaptforgeError("task sampler: feature vectors of all tasks must have the same length")
    return tasks


# -------------------------------------------------------------------------------------------- config


@dataclass(frozen=True, kw_only=True)
class SamplerConfig(Params):
    """Base of the per-sampler configurations.

    Passing a bare ``SamplerConfig()`` to any sampler means "that sampler's defaults".
    """


@dataclass(frozen=True, kw_only=True)
class UniformConfig(SamplerConfig):
    """``uniform`` takes no options."""


@dataclass(frozen=True, kw_only=True)
class ProportionalConfig(SamplerConfig):
    size_cap: int | None = param(None, ge=1, help="K of Raffel et al. 2020: sizes above K count as K; null: no cap")


@dataclass(frozen=True, kw_only=True)
class TemperatureConfig(SamplerConfig):
    temperature: float = param(2.0, gt=0, help="T in p_i ~ n_i^(1/T); 1: proportional, large: uniform")
    size_cap: int | None = param(
        None, ge=1, help="sizes above this count as this (applied before the temperature); null: no cap"
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
class MPTSConfig(SamplerConfig):
    beta: float = param(1.0, ge=0, help="optimism: score = predictive mean + beta * predictive std")
    tau: float = param(0.1, gt=0, help="softmax temperature, relative to the mean loss level (scale-free)")
    floor: float = param(0.05, ge=0, le=1, help="weight of the uniform distribution mixed into the softmax")
    ema: float = param(0.3, gt=0, le=1, help="weight of the newest loss in each task's level and trend")
    forgetting: float = param(
        0.99, gt=0, le=1, help="rho: weight kept by past regression data at every update (1: no forgetting)"
    )
    prior_precision: float = param(
        1.0, gt=0, help='lambda0: prior precision of the regression weights (around "next = level")'
    )
    noise_prior: float = param(
        0.1, gt=0, help="prior guess of the noise std of a batch loss around its prediction (loss units)"
    )
    task_feature_dim: int = param(
        4, ge=0, help="task feature_vectors are reduced to this many principal components (0: unused)"
    )
    eval_mix: float = param(0.5, ge=0, le=1, help="observe_eval: level <- (1 - eval_mix) * level + eval_mix * dev loss")


# ------------------------------------------------------------------------------------------- helpers


def _softmax(logits: FloatArray) -> FloatArray:
    z = np.exp(logits - np.max(logits))
    return z / z.sum()


def _mix_floor(p: FloatArray, floor: float) -> FloatArray:
    return (1.0 - floor) * p + floor / p.size


def _floats(state: Mapping[str, Any], key: str, shape: tuple[int, ...]) -> FloatArray:
    try:
        arr = np.asarray(state[key], dtype=np.float64)
    except (KeyError, TypeError, ValueError):
        raise AdaptforgeError(f"sampler state: missing or malformed {key!r}") from None
    if arr.shape != shape or not np.all(np.isfinite(arr)):
        raise AdaptforgeError(f"sampler state: {key!r} must be finite with shape {shape}, got shape {arr.shape}")
    return arr


# ------------------------------------------------------------------------------------------ samplers


class TaskSampler(Method):
    """Chooses the task of every training step; subclasses set ``name``, ``reference_url`` and
    ``params_type`` and implement :meth:`probabilities`.

    Adaptive samplers override ``_observe`` / ``_observe_eval`` / ``_state`` / ``_load_state``.
    """

    kind = "task sampler"
    params_base = SamplerConfig
    params_type: ClassVar[type[Params]] = SamplerConfig
    config: SamplerConfig

    def __init__(
        self, config: SamplerConfig | Mapping[str, Any] | None = None, *, tasks: Sequence[TaskInfo], seed: int = 0
    ) -> None:
        self.config = self.parse_params(config)
        self.tasks = _check_tasks(tasks)
        if not _is_int(seed) or seed < 0:
            raise AdaptforgeError(f"{self.owner()}: seed must be an integer >= 0, got {seed!r}")
        self.seed = int(seed)
        self._rng = np.random.default_rng(self.seed)
        self._draws = np.zeros(len(self.tasks), dtype=np.int64)
        self._sizes = np.array([t.n_train for t in self.tasks], dtype=np.float64)

    @classmethod
    def parse_params(cls, params: Params | Mapping[str, Any] | None) -> SamplerConfig:
        """As :meth:`Method.parse_params`; a bare ``SamplerConfig()`` also means this sampler's defaults."""
        typed = cls.params_type() if type(params) is SamplerConfig else super().parse_params(params)
        assert isinstance(typed, SamplerConfig)
        return typed

    @classmethod
    def owner(cls) -> str:
        """How errors name this sampler, as :meth:`parse_params` does."""
        return f"{cls.kind} {cls.name!r}"

    @property
    def n_tasks(self) -> int:
        return len(self.tasks)

    @abstractmethod
    def probabilities(self) -> FloatArray:
        """The distribution over tasks the next :meth:`next` draws from (a fresh array summing to 1)."""

    def draw_counts(self) -> NDArray[np.int64]:
        """How many times each task has been drawn so far."""
        return self._draws.copy()

    def next(self) -> int:
        """Draw the index of the task to take the next batch from."""
        p = self.probabilities()
        cdf = np.cumsum(p)
        u = self._rng.random() * cdf[-1]
        index = min(int(np.searchsorted(cdf, u, side="right")), self.n_tasks - 1)
        self._draws[index] += 1
        return index

    def _check_task(self, task: object) -> int:
        if not _is_int(task) or not 0 <= int(task) < self.n_tasks:
            raise AdaptforgeError(f"{self.owner()}: task index must be in [0, {self.n_tasks}), got {task!r}")
        return int(task)

    def _check_loss(self, task: int, loss: object) -> float:
        try:
            value = float(loss)
        except (TypeError, ValueError):
            raise AdaptforgeError(f"{self.owner()}: loss must be a number, got {loss!r}") from None
        if not math.isfinite(value):
            raise AdaptforgeError(
                f"{self.owner()}: loss of task {self.tasks[task].name!r} is {value}; "
                "samplers need finite losses (check the learning rate or skip the batch without observing it)"
            )
        return value

    def observe(self, task: int, loss: float, step: int) -> None:
        """Record the training loss of the batch of ``task`` trained at ``step``."""
        index = self._check_task(task)
        value = self._check_loss(index, loss)
        if not _is_int(step) or step < 0:
            raise AdaptforgeError(f"{self.owner()}: step must be an integer >= 0, got {step!r}")
        self._observe(index, value, int(step))

    def observe_eval(self, losses: Mapping[int, float]) -> None:
        """Record dev losses, ``{task index: loss}``, for any subset of tasks."""
        if not isinstance(losses, Mapping):
            raise AdaptforgeError(f"{self.owner()}: observe_eval takes a dict {{task index: loss}}")
        checked: dict[int, float] = {}
        for task, loss in losses.items():
            index = self._check_task(task)
            checked[index] = self._check_loss(index, loss)
        if checked:
            self._observe_eval(dict(sorted(checked.items())))

    def _observe(self, task: int, loss: float, step: int) -> None:  # noqa: B027 - optional hook
        """Hook of adaptive samplers; static samplers ignore losses."""

    def _observe_eval(self, losses: dict[int, float]) -> None:  # noqa: B027 - optional hook
        """Hook of adaptive samplers; static samplers ignore losses."""

    def _state(self) -> dict[str, Any]:
        return {}

    def _load_state(self, state: Mapping[str, Any]) -> None:  # noqa: B027 - optional hook
        """Restore what :meth:`_state` returned (validate everything before assigning anything)."""

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable snapshot: config, task names, RNG state, draw counts and learned state."""
        return {
            "format": STATE_FORMAT,
            "sampler": self.name,
            "config": self.config.to_dict(),
            "tasks": [t.name for t in self.tasks],
            "seed": self.seed,
            "rng": self._rng.bit_generator.state,
            "draws": self._draws.tolist(),
            "state": self._state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue exactly where the sampler that wrote ``state`` stopped (same config and tasks required)."""
        if not isinstance(state, Mapping) or state.get("format") != STATE_FORMAT:
            raise AdaptforgeError(f"{self.owner()}: not a sampler state (format {STATE_FORMAT} expected)")
        if state.get("sampler") != self.name:
            raise AdaptforgeError(f"{self.owner()}: the state was written by the {state.get('sampler')!r} sampler")
        names = [t.name for t in self.tasks]
        if list(state.get("tasks", [])) != names:
            raise AdaptforgeError(
                f"{self.owner()}: the state is for tasks {state.get('tasks')}, this sampler has {names}; "
                "resume with the same tasks in the same order"
            )
        saved = self.params_type.from_dict(state.get("config", {}), owner=self.owner())
        if saved != self.config:
            diff = {k: (v, getattr(self.config, k)) for k, v in saved.to_dict().items() if getattr(self.config, k) != v}
            raise AdaptforgeError(
                f"{self.owner()}: the state was made with a different config (saved, current): {diff}; "
                "resume with the same sampler options"
            )
        draws = _floats(state, "draws", (self.n_tasks,))
        seed = state.get("seed", self.seed)
        if not _is_int(seed) or seed < 0:
            raise AdaptforgeError(f"{self.owner()}: malformed seed in the state: {seed!r}")
        rng = np.random.default_rng()
        try:
            rng.bit_generator.state = dict(state["rng"])
        except (KeyError, TypeError, ValueError):
            raise AdaptforgeError(f"{self.owner()}: malformed RNG state") from None
        self._load_state(state.get("state", {}))
        self._rng = rng
        self._draws = draws.astype(np.int64)
        self.seed = int(seed)


SAMPLERS: Registry[type[TaskSampler]] = Registry("task sampler", base=TaskSampler)


def make_sampler(
    name: str, tasks: Sequence[TaskInfo], config: SamplerConfig | Mapping[str, Any] | None = None, seed: int = 0
) -> TaskSampler:
    """``SAMPLERS.get(name)(config, tasks=tasks, seed=seed)``; ``config`` may be a plain dict of options."""
    return SAMPLERS.get(name)(config, tasks=tasks, seed=seed)


class _StaticSampler(TaskSampler):
    """A fixed distribution computed once from the task sizes."""

    def __init__(
        self, config: SamplerConfig | Mapping[str, Any] | None = None, *, tasks: Sequence[TaskInfo], seed: int = 0
    ) -> None:
        super().__init__(config, tasks=tasks, seed=seed)
        self._p = self._fixed_probabilities()

    @abstractmethod
    def _fixed_probabilities(self) -> FloatArray: ...

    def probabilities(self) -> FloatArray:
        return self._p.copy()


@SAMPLERS.register
class UniformSampler(_StaticSampler):
    """``p_i = 1 / N``."""

    name = "uniform"
    reference_url = "https://arxiv.org/abs/1910.10683"
    params_type = UniformConfig

    def _fixed_probabilities(self) -> FloatArray:
        return np.full(self.n_tasks, 1.0 / self.n_tasks)


@SAMPLERS.register
class ProportionalSampler(_StaticSampler):
    """``p_i = m_i / sum_j m_j`` with ``m_i = min(n_i, K)`` (Raffel et al. 2020, arXiv 1910.10683, Sec. 3.5.2)."""

    name = "proportional"
    reference_url = "https://arxiv.org/abs/1910.10683"
    params_type = ProportionalConfig
    config: ProportionalConfig

    def _fixed_probabilities(self) -> FloatArray:
        cap = self.config.size_cap
        sizes = self._sizes if cap is None else np.minimum(self._sizes, float(cap))
        return sizes / sizes.sum()


@SAMPLERS.register
class TemperatureSampler(_StaticSampler):
    """``p_i ~ m_i^(1/T)``, ``m_i = min(n_i, K)`` (Arivazhagan et al. 2019, arXiv 1907.05019).

    Computed as a softmax of ``log(m_i) / T`` so large sizes and small ``T`` do not overflow.
    """

    name = "temperature"
    reference_url = "https://arxiv.org/abs/1907.05019"
    params_type = TemperatureConfig
    config: TemperatureConfig

    def _fixed_probabilities(self) -> FloatArray:
        cap = self.config.size_cap
        sizes = self._sizes if cap is None else np.minimum(self._sizes, float(cap))
        return _softmax(np.log(sizes) / self.config.temperature)


class _AdaptiveSampler(TaskSampler):
    """Shared bookkeeping of loss-driven samplers: a per-task loss estimate and a warm-up.

    Until every task has a loss estimate, draws are uniform over the tasks without one (each task
    is seen once before any is preferred, as in UCB's initialisation). A task gets an estimate from
    its first training loss (:meth:`observe`) or dev loss (:meth:`observe_eval`).
    """

    config: GroupDROConfig | MPTSConfig

    def __init__(
        self, config: SamplerConfig | Mapping[str, Any] | None = None, *, tasks: Sequence[TaskInfo], seed: int = 0
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
        seen = _floats(state, "seen", n).astype(bool)
        level = _floats(state, "level", n)
        clock = state.get("clock")
        if not _is_int(clock) or clock < -1:
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
    config: GroupDROConfig

    def __init__(
        self, config: SamplerConfig | Mapping[str, Any] | None = None, *, tasks: Sequence[TaskInfo], seed: int = 0
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
        return _mix_floor(_softmax(self._log_q), self.config.floor)

    def _state(self) -> dict[str, Any]:
        return {**self._base_state(), "log_q": self._log_q.tolist()}

    def _load_state(self, state: Mapping[str, Any]) -> None:
        seen, level, clock = self._parse_base_state(state)
        log_q = _floats(state, "log_q", (self.n_tasks,))
        self._seen, self._level, self._clock, self._log_q = seen, level, clock, log_q


@SAMPLERS.register
class MPTSSampler(_AdaptiveSampler):
    """Model Predictive Task Sampling (Wang et al. 2025, arXiv 2501.11039), with a Bayesian linear risk model.

    MPTS learns a risk model ``p(loss | task, history)`` from the optimisation history, predicts
    every candidate task's next risk without training on it, and picks tasks with a UCB-like
    acquisition ``E[loss] + beta * std[loss]``, so the sampler anticipates which tasks will be hard
    instead of chasing the last loss. The paper's risk model is a VAE trained by streaming
    variational inference; here it is a conjugate Bayesian linear regression with a closed-form
    online posterior, which is cheap enough to run at every training step.

    **Per-task state** (updated only when the task is observed): level ``L_i`` (EMA of its losses),
    trend ``g_i`` (EMA of its innovations ``y - L_i``), last step trained ``s_i``. With ``a = ema``,
    observing loss ``y`` of task ``t`` at step ``s`` does ``d = y - L_t; L_t += a * d;
    g_t = (1 - a) * g_t + a * d; s_t = s`` (the first loss sets ``L_t = y, g_t = 0``).

    **Features** of task ``i`` for a step ``s`` (``d = 5 + k``)::

        x_i(s) = [L_i, g_i, log(1 + s - s_i), z_i, 1, u_i]

    with ``z_i`` the standardised ``log n_i`` over tasks (0 if all sizes are equal) and ``u_i`` the
    first ``k = min(task_feature_dim, N - 1, len(feature_vector))`` principal components of the
    tasks' ``feature_vector``s, scaled to unit variance (absent without feature vectors).

    **Risk model**: ``y = x^T w + e``, ``e ~ N(0, s2)``, Normal-Inverse-Gamma prior
    ``w | s2 ~ N(mu0, s2 * Lambda0^-1)``, ``s2 ~ InvGamma(a0, b0)`` with ``mu0 = [1, 0, ..., 0]``
    ("the next loss is the current level"), ``Lambda0 = prior_precision * I``, ``a0 = 1``,
    ``b0 = noise_prior^2``. Each training pair is ``(x_t(s), y)`` formed when task ``t``'s loss
    ``y`` at step ``s`` is observed (before its state is updated; not for its first loss). The
    sufficient statistics are discounted by ``rho = forgetting`` so the model tracks the changing
    dynamics of training (exponential forgetting, as in recursive least squares)::

        S <- rho * S + x x^T;   r <- rho * r + x y;   q <- rho * q + y^2;   m <- rho * m + 1

    and the posterior is exact given the discounted data::

        Lambda = Lambda0 + S;   mu = Lambda^-1 (Lambda0 mu0 + r)
        a = a0 + m / 2;         b = b0 + (q + mu0^T Lambda0 mu0 - mu^T Lambda mu) / 2

    (one ``d x d`` solve per observation). ``observe_eval`` blends dev losses into the levels,
    ``L_i <- (1 - eval_mix) * L_i + eval_mix * dev_i``, and adds no training pair.

    **Acquisition** for the next step ``s' = (largest observed step) + 1``: the posterior predictive
    of task ``i`` is Student-t with mean ``m_i = x_i^T mu`` and scale
    ``sd_i = sqrt(b / a * (1 + x_i^T Lambda^-1 x_i))``; the score ``c_i = m_i + beta * sd_i`` and::

        p = (1 - floor) * softmax((c - max c) / (tau * kappa)) + floor / N,   kappa = mean_i |L_i|

    ``kappa`` makes ``tau`` relative to the loss scale. Tasks never trained, or not trained for a
    long time, have unusual features, hence a larger ``x^T Lambda^-1 x`` and an exploration bonus.
    Cost per step: ``O(N d^2 + d^3)``.
    """

    name = "mpts"
    reference_url = "https://arxiv.org/abs/2501.11039"
    params_type = MPTSConfig
    config: MPTSConfig

    def __init__(
        self, config: SamplerConfig | Mapping[str, Any] | None = None, *, tasks: Sequence[TaskInfo], seed: int = 0
    ) -> None:
        super().__init__(config, tasks=tasks, seed=seed)
        n = self.n_tasks
        log_n = np.log(self._sizes)
        spread = log_n.std()
        self._size_feature = (log_n - log_n.mean()) / spread if spread > 1e-12 else np.zeros(n)
        self._task_features = self._principal_components()
        self.dim = 5 + self._task_features.shape[1]
        d, cfg = self.dim, self.config
        self._prior_precision = cfg.prior_precision * np.eye(d)
        self._prior_mean = np.zeros(d)
        self._prior_mean[0] = 1.0
        self._prior_eta = self._prior_precision @ self._prior_mean
        self._prior_quad = float(self._prior_mean @ self._prior_eta)
        self._a0, self._b0 = 1.0, cfg.noise_prior**2
        self._trend = np.zeros(n)
        self._last = np.zeros(n, dtype=np.int64)
        self._sxx = np.zeros((d, d))
        self._sxy = np.zeros(d)
        self._syy = 0.0
        self._m = 0.0
        self._posterior: tuple[FloatArray, FloatArray, float] | None = None

    def _principal_components(self) -> FloatArray:
        n, k_max = self.n_tasks, self.config.task_feature_dim
        if k_max == 0 or self.tasks[0].feature_vector is None or n < 2:
            return np.zeros((n, 0))
        raw = np.array([t.feature_vector for t in self.tasks], dtype=np.float64)
        centered = raw - raw.mean(axis=0)
        u, s, _ = np.linalg.svd(centered, full_matrices=False)
        k = int(min(k_max, n - 1, raw.shape[1], np.sum(s > 1e-9 * max(s.max(), 1e-300))))
        if k == 0:
            return np.zeros((n, 0))
        comps = u[:, :k] * s[:k]
        signs = np.sign(comps[np.argmax(np.abs(comps), axis=0), np.arange(k)])  # fix SVD sign ambiguity
        comps = comps * np.where(signs == 0, 1.0, signs)
        return comps / comps.std(axis=0)

    def _features(self, step: int, tasks: slice = slice(None)) -> FloatArray:
        """Rows ``x_i(step)`` for the tasks in ``tasks`` (all by default)."""
        level = self._level[tasks]
        x = np.empty((level.shape[0], self.dim))
        x[:, 0] = level
        x[:, 1] = self._trend[tasks]
        x[:, 2] = np.log1p(np.maximum(step - self._last[tasks], 0))
        x[:, 3] = self._size_feature[tasks]
        x[:, 4] = 1.0
        x[:, 5:] = self._task_features[tasks]
        return x

    def _observe(self, task: int, loss: float, step: int) -> None:
        if self._seen[task]:
            x = self._features(step, slice(task, task + 1))[0]
            rho = self.config.forgetting
            self._sxx = rho * self._sxx + np.outer(x, x)
            self._sxy = rho * self._sxy + x * loss
            self._syy = rho * self._syy + loss * loss
            self._m = rho * self._m + 1.0
            self._posterior = None
            a = self.config.ema
            innovation = loss - self._level[task]
            self._level[task] += a * innovation
            self._trend[task] = (1.0 - a) * self._trend[task] + a * innovation
        else:
            self._level[task], self._trend[task], self._seen[task] = loss, 0.0, True
        self._last[task] = step
        self._clock = max(self._clock, step)

    def _observe_eval(self, losses: dict[int, float]) -> None:
        for task in losses:
            if not self._seen[task]:
                self._trend[task], self._last[task] = 0.0, max(self._clock, 0)
        self._blend_eval(losses)

    def posterior(self) -> tuple[FloatArray, FloatArray, float]:
        """``(mu, Lambda^-1, b / a)`` of the risk model (cached until the next training observation)."""
        if self._posterior is None:
            precision = self._prior_precision + self._sxx
            cov = np.linalg.inv(precision)
            cov = 0.5 * (cov + cov.T)
            mu = cov @ (self._prior_eta + self._sxy)
            b = self._b0 + 0.5 * (self._syy + self._prior_quad - float(mu @ precision @ mu))
            a = self._a0 + 0.5 * self._m
            self._posterior = (mu, cov, max(b, self._b0) / a)
        return self._posterior

    def predict(self) -> tuple[FloatArray, FloatArray]:
        """Posterior predictive mean and scale of every task's loss at the next step (for logging)."""
        mu, cov, noise = self.posterior()
        x = self._features(self._clock + 1)
        mean = x @ mu
        std = np.sqrt(noise * (1.0 + np.sum((x @ cov) * x, axis=1)))
        return mean, std

    def _adaptive_probabilities(self) -> FloatArray:
        mean, std = self.predict()
        score = mean + self.config.beta * std
        kappa = max(float(np.mean(np.abs(self._level))), 1e-8)
        return _mix_floor(_softmax(score / (self.config.tau * kappa)), self.config.floor)

    def _state(self) -> dict[str, Any]:
        return {
            **self._base_state(),
            "trend": self._trend.tolist(),
            "last": self._last.tolist(),
            "sxx": self._sxx.tolist(),
            "sxy": self._sxy.tolist(),
            "syy": self._syy,
            "m": self._m,
        }

    def _load_state(self, state: Mapping[str, Any]) -> None:
        n, d = (self.n_tasks,), self.dim
        seen, level, clock = self._parse_base_state(state)
        trend = _floats(state, "trend", n)
        last = _floats(state, "last", n).astype(np.int64)
        sxx = _floats(state, "sxx", (d, d))
        sxy = _floats(state, "sxy", (d,))
        syy = float(_floats(state, "syy", ()))
        m = float(_floats(state, "m", ()))
        self._seen, self._level, self._clock, self._trend, self._last = seen, level, clock, trend, last
        self._sxx, self._sxy, self._syy, self._m = sxx, sxy, syy, m
        self._posterior = None
