"""The task-sampler contract: :class:`TaskInfo`, :class:`TaskSampler`, the ``SAMPLERS`` registry.

The trainer builds one sampler and drives it step by step; a step trains ``B`` task sub-batches
(``TrainConfig.tasks_per_step``), so one step's batch can mix tasks::

    sampler = make_sampler(name, [TaskInfo(...), ...], options, seed=seed)
    for step in range(steps):
        chosen = sampler.next_batch(B, evaluate)  # B task indices; evaluate(candidates) -> current losses
        losses = train_step(chosen)               # one update on the B sub-batches
        for t, loss in zip(chosen, losses):
            sampler.observe(t, loss, step)        # each sub-batch's loss from the step's forward pass
        if sampler.wants_risk:                    # only mpts:risk_target=post_update (B extra passes)
            sampler.observe_risk(chosen, post_update_losses(chosen), step)
        # optionally, every eval_every steps: sampler.observe_eval({task_index: dev_loss, ...})

``evaluate`` is how a sampler that must look at tasks before choosing (DRM) measures candidates;
every forward pass spent on choosing or measuring is counted in :attr:`TaskSampler.evaluations`, so
the cost of a sampler is visible next to its effect.

``state_dict()`` is a JSON-serialisable dict (configuration, task names, the numpy RNG state and
learned state) and ``state_tensors()`` holds any learned weights (a neural risk model and its
optimiser); ``load_state_dict(state, tensors)`` restores both, so a killed run resumes with exactly
the same sequence of tasks. The trainer stores the JSON in the checkpoint's ``state.json`` and the
tensors in its safetensors file.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import numpy as np
from numpy.typing import NDArray

from adaptforge.core import AdaptforgeError, Registry
from adaptforge.methods import Method
from adaptforge.params import Params, param

FloatArray = NDArray[np.float64]
Evaluator = Callable[[Sequence[int]], Sequence[float]]  # task indices -> each task's current loss
STATE_FORMAT = 2

# --------------------------------------------------------------------------------------------- tasks


def is_int(value: object) -> bool:
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
        if not is_int(self.n_train) or self.n_train < 1:
            raise AdaptforgeError(f"task info {self.name!r}: n_train must be an integer >= 1, got {self.n_train!r}")
        if not is_int(self.n_labels) or self.n_labels < 0:
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
    dupes = sorted(n for n, c in Counter(names).items() if c > 1)  # linear: pools of thousands of tasks
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
class CandidateConfig(SamplerConfig):
    """Options of samplers that choose each step's tasks among ``candidates`` drawn uniformly (DRM, MPTS)."""

    candidates: int | None = param(
        None,
        ge=1,
        help="B-hat: tasks drawn uniformly per step, of which the B trained are chosen; null: 2 B (the "
        "reference's 16 of 32)",
    )
    risk_scale: str = param(
        "none",
        choices=("none", "log_k"),
        help="risk a task is ranked by: none, the raw loss (the reference's; picked by issue 13's fourth-attempt dev "
        "rule, docs/experiments/samplers.md); log_k, loss / ln(label count), the loss at chance",
    )

    def b_hat(self, size: int) -> int:
        """Candidates per step for ``size`` trained tasks: ``candidates``, or ``2 * size`` when unset."""
        return 2 * size if self.candidates is None else self.candidates


# ------------------------------------------------------------------------------------------- helpers


def softmax(logits: FloatArray) -> FloatArray:
    z = np.exp(logits - np.max(logits))
    return z / z.sum()


def chance_scale(tasks: Sequence[TaskInfo], risk_scale: str, owner: str) -> FloatArray:
    """Per-task divisor of losses: 1 (``none``) or ``ln k``, the cross-entropy of a k-way task at chance (``log_k``).

    Raw cross-entropy ranks many-label tasks as risky only because their chance loss is higher (ln 14
    = 2.6 for dbpedia against ln 2 = 0.7 for a binary task), so a loss-ranking sampler spends its
    batches on label count; divided by ``ln k`` every task's risk is 1 at chance and 0 when solved.
    Tasks with one label are treated as binary (``ln 2``).
    """
    if risk_scale == "none":
        return np.ones(len(tasks))
    unknown = [t.name for t in tasks if t.n_labels < 1]
    if unknown:
        raise AdaptforgeError(
            f"{owner}: risk_scale=log_k needs every task's label count (n_labels >= 1); missing for "
            f"{', '.join(unknown)}"
        )
    return np.log(np.maximum([t.n_labels for t in tasks], 2).astype(np.float64))


def mix_floor(p: FloatArray, floor: float) -> FloatArray:
    return (1.0 - floor) * p + floor / p.size


def state_floats(state: Mapping[str, Any], key: str, shape: tuple[int, ...]) -> FloatArray:
    try:
        arr = np.asarray(state[key], dtype=np.float64)
    except (KeyError, TypeError, ValueError):
        raise AdaptforgeError(f"sampler state: missing or malformed {key!r}") from None
    if arr.shape != shape or not np.all(np.isfinite(arr)):
        raise AdaptforgeError(f"sampler state: {key!r} must be finite with shape {shape}, got shape {arr.shape}")
    return arr


# ------------------------------------------------------------------------------------------ samplers


SC = TypeVar("SC", bound=SamplerConfig)


class TaskSampler(Method[SC]):
    """Chooses the tasks of every training step; subclasses set ``name``, ``reference_url`` and
    ``params_type`` and implement :meth:`probabilities` (or override :meth:`next_batch`).

    Adaptive samplers override ``_observe`` / ``_observe_eval`` / ``_observe_risk`` / ``_state`` /
    ``_load_state`` (and ``_tensors`` for learned weights). ``wants_risk``: the trainer measures
    the trained tasks' loss again after the update and calls :meth:`observe_risk` (extra forward passes).
    """

    kind = "task sampler"
    params_base = SamplerConfig
    params_type: ClassVar[type[Params]] = SamplerConfig
    config: SC

    @property
    def wants_risk(self) -> bool:
        """Whether the trainer should measure the trained tasks' post-update loss for :meth:`observe_risk`."""
        return False

    def __init__(
        self, config: SC | Mapping[str, Any] | None = None, *, tasks: Sequence[TaskInfo], seed: int = 0
    ) -> None:
        self.config = self.parse_params(config)
        self.tasks = _check_tasks(tasks)
        if not is_int(seed) or seed < 0:
            raise AdaptforgeError(f"{self.owner()}: seed must be an integer >= 0, got {seed!r}")
        self.seed = int(seed)
        self._rng = np.random.default_rng(self.seed)
        self._draws = np.zeros(len(self.tasks), dtype=np.int64)
        self._sizes = np.array([t.n_train for t in self.tasks], dtype=np.float64)
        self._evaluations = 0

    @classmethod
    def parse_params(cls, params: SC | Mapping[str, Any] | None) -> SC:
        """As :meth:`Method.parse_params`; a bare ``SamplerConfig()`` also means this sampler's defaults."""
        return super().parse_params(None if type(params) is SamplerConfig else params)

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

    @property
    def evaluations(self) -> int:
        """Task evaluations spent so far: forward passes on a task's batch to choose tasks or measure risk."""
        return self._evaluations

    def next_batch(self, size: int, evaluate: Evaluator | None = None) -> list[int]:
        """The ``size`` tasks of the next step (repeats allowed); ``evaluate`` is unused by samplers that
        draw from :meth:`probabilities` (independent draws)."""
        self._check_size(size)
        return [self.next() for _ in range(size)]

    def _evaluate_candidates(self, pool: NDArray[np.int64], evaluate: Evaluator) -> FloatArray:
        """Run ``evaluate`` on the candidates, check its answer and count one evaluation per candidate."""
        losses = list(evaluate([int(i) for i in pool]))
        if len(losses) != len(pool):
            raise AdaptforgeError(f"{self.owner()}: evaluate returned {len(losses)} losses for {len(pool)} candidates")
        checked = np.array([self._check_loss(int(i), v) for i, v in zip(pool, losses, strict=True)])
        self._evaluations += len(pool)
        return checked

    def _check_size(self, size: object) -> int:
        if not is_int(size) or size < 1:
            raise AdaptforgeError(f"{self.owner()}: the batch needs at least one task, got size {size!r}")
        return int(size)

    def observe_risk(self, tasks: Sequence[int], risks: Sequence[float], step: int) -> None:
        """Record the loss of each task in ``tasks`` measured after the update of ``step`` (one evaluation each)."""
        indices = [self._check_task(t) for t in tasks]
        if len(risks) != len(indices):
            raise AdaptforgeError(f"{self.owner()}: observe_risk got {len(indices)} tasks but {len(risks)} risks")
        values = [self._check_loss(i, r) for i, r in zip(indices, risks, strict=True)]
        if not is_int(step) or step < 0:
            raise AdaptforgeError(f"{self.owner()}: step must be an integer >= 0, got {step!r}")
        self._evaluations += len(indices)
        self._observe_risk(indices, values, int(step))

    def _observe_risk(self, tasks: list[int], risks: list[float], step: int) -> None:  # noqa: B027 - optional hook
        """Hook of samplers that learn from post-update risk (``wants_risk``)."""

    def _check_task(self, task: object) -> int:
        if not is_int(task) or not 0 <= int(task) < self.n_tasks:
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
        if not is_int(step) or step < 0:
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

    def _load_state(self, state: Mapping[str, Any], tensors: Mapping[str, Any]) -> None:  # noqa: B027 - optional hook
        """Restore what :meth:`_state` and :meth:`_tensors` returned (validate everything before assigning)."""

    def _tensors(self) -> dict[str, Any]:
        return {}

    def state_tensors(self) -> dict[str, Any]:
        """Learned weights as ``{name: torch.Tensor}`` (safetensors-ready; empty for samplers without weights)."""
        return self._tensors()

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable snapshot: config, task names, RNG state, draw counts, evaluations and learned state."""
        return {
            "format": STATE_FORMAT,
            "sampler": self.name,
            "config": self.config.to_dict(),
            "tasks": [t.name for t in self.tasks],
            "seed": self.seed,
            "rng": self._rng.bit_generator.state,
            "draws": self._draws.tolist(),
            "evaluations": self._evaluations,
            "state": self._state(),
        }

    def load_state_dict(self, state: Mapping[str, Any], tensors: Mapping[str, Any] | None = None) -> None:
        """Continue exactly where the sampler that wrote ``state`` (and ``tensors``, from :meth:`state_tensors`)
        stopped; the same config and tasks are required."""
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
        raw = state.get("config", {})
        newer = [k for k in self.config.to_dict() if isinstance(raw, Mapping) and k not in raw]
        if newer:  # a default filled in now need not be what the run used (risk_scale's default changed with it)
            raise AdaptforgeError(
                f"{self.owner()}: the state predates the option(s) {', '.join(newer)} (written by an older "
                "adaptforge), so resuming would not continue the same run; start it over without --resume"
            )
        saved = self.params_type.from_dict(raw, owner=self.owner())
        if saved != self.config:
            diff = {k: (v, getattr(self.config, k)) for k, v in saved.to_dict().items() if getattr(self.config, k) != v}
            raise AdaptforgeError(
                f"{self.owner()}: the state was made with a different config (saved, current): {diff}; "
                "resume with the same sampler options"
            )
        draws = state_floats(state, "draws", (self.n_tasks,))
        seed = state.get("seed", self.seed)
        if not is_int(seed) or seed < 0:
            raise AdaptforgeError(f"{self.owner()}: malformed seed in the state: {seed!r}")
        rng = np.random.default_rng()
        try:
            rng.bit_generator.state = dict(state["rng"])
        except (KeyError, TypeError, ValueError):
            raise AdaptforgeError(f"{self.owner()}: malformed RNG state") from None
        evaluations = state.get("evaluations")
        if not is_int(evaluations) or evaluations < 0:
            raise AdaptforgeError(f"{self.owner()}: malformed 'evaluations' in the state: {evaluations!r}")
        self._load_state(state.get("state", {}), tensors or {})
        self._evaluations = int(evaluations)
        self._rng = rng
        self._draws = draws.astype(np.int64)
        self.seed = int(seed)


SAMPLERS: Registry[type[TaskSampler]] = Registry(
    "task sampler",
    base=TaskSampler,
    entries={
        "mpts": "adaptforge.train.samplers.mpts:MPTSSampler",
        "group_dro": "adaptforge.train.samplers.robust:GroupDROSampler",
        "drm": "adaptforge.train.samplers.robust:DRMSampler",
        "uniform": "adaptforge.train.samplers.static:UniformSampler",
        "proportional": "adaptforge.train.samplers.static:ProportionalSampler",
        "temperature": "adaptforge.train.samplers.static:TemperatureSampler",
    },
)


def make_sampler(
    name: str, tasks: Sequence[TaskInfo], config: SamplerConfig | Mapping[str, Any] | None = None, seed: int = 0
) -> TaskSampler:
    """``SAMPLERS.get(name)(config, tasks=tasks, seed=seed)``; ``config`` may be a plain dict of options."""
    return SAMPLERS.get(name)(config, tasks=tasks, seed=seed)


def draw_candidates(rng: np.random.Generator, n_tasks: int, count: int) -> NDArray[np.int64]:
    """``count`` task indices drawn uniformly: without replacement while ``count <= n_tasks``, the remainder
    with replacement (the finite-set analogue of the reference's fresh i.i.d. task identifiers)."""
    first = rng.permutation(n_tasks)[: min(count, n_tasks)]
    extra = rng.integers(0, n_tasks, size=max(0, count - n_tasks))
    return np.concatenate([first, extra]).astype(np.int64)
