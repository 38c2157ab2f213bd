"""Merge methods that look at data, and aTLAS (learned anisotropic scaling per block per adapter).

A :class:`DataMergeMethod` declares ``needs_data = True`` and is run with
``fit(deltas, params, scorer, tasks)``: the scorer (and through it the frozen base model) and the
tasks whose ``split`` (``dev`` by default) the method may read are explicit arguments, never globals.
:func:`run` dispatches to ``merge`` or ``fit`` by that flag, so callers handle every method alike.
"""

from __future__ import annotations

import logging
import math
import time
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch

from adaptforge.adapters import check_compatible
from adaptforge.batching import EncodedSplit, make_batch
from adaptforge.core import AdaptforgeError, LoraDelta
from adaptforge.merge.base import (
    MERGE_METHODS,
    MergeMethod,
    MergeParams,
    MergeResult,
    check_mergeable,
    is_finite_number,
    register_method,
)
from adaptforge.merge.lowrank import LoraMixture, fold
from adaptforge.merge.refactor import lowrank_svd
from adaptforge.scorers import LabelInputs, Scorer
from adaptforge.tasks import Task

log = logging.getLogger(__name__)

ATLAS_URL = "https://arxiv.org/abs/2407.18242"


def check_positive_int(value: object, what: str, allow_none: bool = False) -> None:
    if allow_none and value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise AdaptforgeError(f"{what} must be a positive integer{' or null' if allow_none else ''}, got {value!r}")


def check_split(value: object) -> None:
    if value not in ("train", "dev", "test"):
        raise AdaptforgeError(f"split must be 'train', 'dev' or 'test', got {value!r}")


@dataclass(frozen=True, kw_only=True)
class DataParams(MergeParams):
    """Adds where the data comes from: ``split`` of each task (``dev``: never fit on the test split) and
    ``examples_per_task`` (k, a label-stratified seeded sample; ``None``: the whole split)."""

    split: str = "dev"
    examples_per_task: int | None = 128
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_split(self.split)
        check_positive_int(self.examples_per_task, "examples_per_task", allow_none=True)
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise AdaptforgeError(f"seed must be an integer, got {self.seed!r}")


class DataMergeMethod(MergeMethod):
    """A merge method that needs a scorer and tasks; call :meth:`fit` (``merge`` explains that)."""

    needs_data = True
    params_type = DataParams

    def merge(self, deltas: list[LoraDelta], params: MergeParams | Mapping[str, Any] | None = None) -> MergeResult:
        """Validate the inputs like every method (so bad inputs get the same errors), then explain ``fit``."""
        typed = self.parse_params(params)
        check_mergeable(deltas, typed.weights)
        self.validate(deltas, typed)
        raise AdaptforgeError(
            f"merge method {self.name!r} learns from data: call fit(deltas, params, scorer, tasks) "
            "(on the command line, pass the tasks with --data TASK_DIR)"
        )

    def _merge(self, deltas: list[LoraDelta], weights: list[float], params: MergeParams) -> MergeResult:
        raise AssertionError("data-driven methods merge through fit()")  # pragma: no cover

    def fit(
        self,
        deltas: list[LoraDelta],
        params: MergeParams | Mapping[str, Any] | None,
        scorer: Scorer,
        tasks: Sequence[Task],
    ) -> MergeResult:
        """Validate inputs and data, then fit; ``result.info`` gets the method, params and seconds."""
        typed = self.parse_params(params)
        weights = check_mergeable(deltas, typed.weights)
        if not tasks:
            raise AdaptforgeError(f"merge method {self.name!r} needs at least one task to fit on (--data TASK_DIR)")
        names = [t.name for t in tasks]
        if len(set(names)) != len(names):
            raise AdaptforgeError(f"merge method {self.name!r}: a task is given twice ({names})")
        split = str(getattr(typed, "split", "dev"))
        for task in tasks:
            task.split(split)  # a missing split is an error naming the task
        for i, delta in enumerate(deltas):
            check_compatible(delta, scorer.backbone.model, what=f"adapter {i}")
        self.validate(deltas, typed)
        self.validate_data(typed, tasks)
        start = time.perf_counter()
        result = self._fit(deltas, [typed.scaling * w for w in weights], typed, scorer, list(tasks))
        info = {"method": self.name, "params": typed.to_dict(), "tasks": names, **result.info}
        info["seconds"] = round(time.perf_counter() - start, 2)
        result.info = info
        return result

    def validate_data(self, params: MergeParams, tasks: Sequence[Task]) -> None:  # noqa: B027 - optional hook
        """Method-specific checks of params against the tasks (e.g. retention names)."""

    @abstractmethod
    def _fit(
        self, deltas: list[LoraDelta], weights: list[float], params: MergeParams, scorer: Scorer, tasks: list[Task]
    ) -> MergeResult:
        """Fit on validated inputs; ``weights`` already include ``params.scaling``."""


def run(
    method: str,
    deltas: list[LoraDelta],
    params: MergeParams | Mapping[str, Any] | None = None,
    scorer: Scorer | None = None,
    tasks: Sequence[Task] | None = None,
) -> MergeResult:
    """Run any registered method: ``merge`` for data-free ones, ``fit`` (which needs ``scorer`` and
    ``tasks``) for data-driven ones. Data given to a data-free method is an error, not silently unused."""
    impl = MERGE_METHODS.get(method)()
    if isinstance(impl, DataMergeMethod):
        if scorer is None or not tasks:
            raise AdaptforgeError(
                f"merge method {method!r} learns from data: give the tasks to fit on (--data TASK_DIR, "
                "recipe key 'data')"
            )
        return impl.fit(deltas, params, scorer, tasks)
    if tasks:
        raise AdaptforgeError(f"merge method {method!r} does not use data; drop --data / the recipe's 'data'")
    return impl.merge(deltas, params)


def truncate(delta: LoraDelta, rank: int | None) -> tuple[LoraDelta, dict[str, float]]:
    """Re-factor every module to ``rank`` by SVD through QR of the factors (``None``: unchanged, exact)."""
    if rank is None:
        return delta, {}
    modules, errors = {}, {}
    for name in delta:
        modules[name], errors[name] = lowrank_svd(delta[name], rank)
    return LoraDelta(modules), errors


def encode_split(scorer: Scorer, task: Task, split: str, n: int | None, seed: int) -> EncodedSplit:
    return scorer.encode(task, task.sample(split, n, seed=seed))


# --------------------------------------------------------------------------------------------- aTLAS


@dataclass(frozen=True, kw_only=True)
class AtlasParams(DataParams):
    """aTLAS: every (module, adapter) coefficient starts at ``scaling * w_i`` (task arithmetic) and is
    learned with Adam (``lr``, ``steps``; each step sees ``batch_size`` examples of every task).
    ``rank`` re-factors the exact rank concatenation by SVD (reported error); ``None`` keeps it exact."""

    scaling: float = 0.3
    steps: int = 30
    lr: float = 0.05
    batch_size: int = 16

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive_int(self.steps, "steps")
        check_positive_int(self.batch_size, "batch_size")
        if not is_finite_number(self.lr) or self.lr <= 0:
            raise AdaptforgeError(f"lr must be a number > 0, got {self.lr!r}")


@register_method
class Atlas(DataMergeMethod):
    """aTLAS task addition (Zhang et al. 2024, "Knowledge Composition using Task Vectors with Learned
    Anisotropic Scaling", https://arxiv.org/abs/2407.18242): ``dW_m = sum_i lambda_{m,i} dW_{i,m}`` with
    one learned coefficient per block (target module) ``m`` per adapter ``i``, fitted by gradient descent
    on the cross-entropy of the tasks' ``split`` (``dev``) with base and adapters frozen. Only the
    ``modules x adapters`` coefficients get gradients: each target linear computes
    ``W x + sum_i lambda_{m,i} s_i B_i (A_i x)`` (:class:`~adaptforge.merge.lowrank.LoraMixture`).
    The result is exact in LoRA form (rank concatenation with the lambdas folded in); ``info`` holds the
    coefficients and the loss curve."""

    name = "atlas"
    reference_url = ATLAS_URL
    params_type = AtlasParams

    def _fit(
        self, deltas: list[LoraDelta], weights: list[float], params: MergeParams, scorer: Scorer, tasks: list[Task]
    ) -> MergeResult:
        p = cast(AtlasParams, params)
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
        was_training = model.training
        model.eval()  # no dropout: the loss is a deterministic function of the coefficients
        try:
            with LoraMixture(model, deltas, coef):
                for step in range(p.steps):
                    optimizer.zero_grad(set_to_none=True)
                    total = accumulate_step(scorer, model, data, orders, cursors, p.batch_size)
                    optimizer.step()
                    curve.append(round(total, 5))
                    log.info("atlas step %d/%d: mean task loss %.4f", step + 1, p.steps, total)
        finally:
            model.train(was_training)
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


def accumulate_step(
    scorer: Scorer,
    model: torch.nn.Module,
    data: Sequence[tuple[EncodedSplit, LabelInputs]],
    orders: Sequence[list[int]],
    cursors: list[int],
    batch_size: int,
) -> float:
    """Backpropagate the mean over tasks of one batch loss per task and return it; the caller zeroes the
    gradients and steps the optimizer. Each task's batch is the next ``batch_size`` of its fixed shuffled
    ``orders[t]`` (``cursors`` advance), and is backpropagated before the next task's batch, so only one
    task's activations are in memory at a time. Shared by aTLAS merging and few-shot aTLAS composition."""
    total = 0.0
    for t, (encoded, labels) in enumerate(data):
        index = _next_batch(orders[t], cursors, t, batch_size)
        loss = scorer.loss(model, make_batch(encoded, index), labels) / len(data)
        loss.backward()
        total += float(loss.detach())
    return total


def _next_batch(order: list[int], cursors: list[int], t: int, size: int) -> list[int]:
    """The next ``size`` indices of a task's shuffled order, wrapping around (fixed order, no reshuffle)."""
    n = len(order)
    out = [order[(cursors[t] + j) % n] for j in range(min(size, n))]
    cursors[t] = (cursors[t] + len(out)) % n
    return out
