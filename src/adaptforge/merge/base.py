"""The merge contract: typed params, one result type, the method bases and their registry.

A merge method is a :class:`~adaptforge.methods.Method` registered in :data:`MERGE_METHODS` by its
``name``: typed params (a :class:`MergeParams`), a ``reference_url``, and
``merge(deltas: list[LoraDelta], params) -> MergeResult``. Methods that learn from data subclass
:class:`DataMergeMethod` and are fitted with ``fit(deltas, params, scorer, tasks)``; methods that read the base
model's weights (SLERP between base and fine-tuned weights) subclass :class:`BaseMergeMethod` and are run with
``merge_with_base(deltas, params, base)``; :func:`run` calls every kind. Inputs are validated before anything
is computed: a non-empty list, the same target modules and delta shapes in every adapter, one weight per adapter.
Different ranks are fine.
"""

from __future__ import annotations

import time
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import torch

from adaptforge.adapters import check_compatible
from adaptforge.core import AdaptforgeError, LoraDelta, Registry
from adaptforge.methods import Method
from adaptforge.params import Params, is_finite_number, param
from adaptforge.scorers import Scorer
from adaptforge.tasks import Task

if TYPE_CHECKING:
    from adaptforge.routing import Router

__all__ = ["is_finite_number"]


@dataclass(frozen=True, kw_only=True)
class MergeParams(Params):
    """Parameters every merge method takes."""

    weights: tuple[float, ...] | None = param(None, help="one per adapter, in order (default all 1; < 0 subtracts)")
    scaling: float = param(1.0, help="global factor on the merged delta (task arithmetic's lambda)")
    rank: int | None = param(None, ge=1, help="output rank per module (default: the method's own, see its docs)")


@dataclass
class MergeResult:
    """A merged adapter, the relative Frobenius error of re-factoring each module to its rank (empty
    when the result is exact), and method-specific information (method, params, statistics).

    ``router`` is set by per-input methods (DaWin): the merge is then the router's per-input mixture,
    and ``delta`` its static fallback (documented by the method)."""

    delta: LoraDelta
    reconstruction_error: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    router: Router | None = None


def check_mergeable(deltas: Sequence[LoraDelta], weights: Sequence[float] | None) -> list[float]:
    """Raise unless ``deltas`` can be merged module by module; return one weight per adapter."""
    if not deltas:
        raise AdaptforgeError("nothing to merge: the list of adapters is empty")
    reference = set(deltas[0].modules)
    for i, delta in enumerate(deltas[1:], start=1):
        names = set(delta.modules)
        if names != reference:
            lacks, extra = sorted(reference - names), sorted(names - reference)
            raise AdaptforgeError(
                f"adapters 0 and {i} target different modules (adapter {i} lacks {lacks}, has extra {extra}); "
                "merge adapters trained on the same target modules"
            )
    for name in sorted(reference):
        shape = deltas[0][name].shape
        for i, delta in enumerate(deltas[1:], start=1):
            if delta[name].shape != shape:
                raise AdaptforgeError(
                    f"module {name!r}: adapter 0 has delta shape {shape} but adapter {i} has {delta[name].shape}; "
                    "adapters of different base models cannot be merged"
                )
    if weights is None:
        return [1.0] * len(deltas)
    if len(weights) != len(deltas):
        raise AdaptforgeError(f"{len(weights)} weights for {len(deltas)} adapters; give exactly one weight per adapter")
    return [float(w) for w in weights]


MP = TypeVar("MP", bound=MergeParams)


class MergeMethod(Method[MP]):
    """Many LoRA adapters to one. Subclasses name their params (``MergeMethod[SlerpParams]``), set ``name`` and
    ``reference_url``, and implement ``_merge``."""

    kind = "merge method"
    params_base = MergeParams
    params_type: ClassVar[type[Params]] = MergeParams
    needs_data: ClassVar[bool] = False
    needs_base: ClassVar[bool] = False

    def merge(self, deltas: list[LoraDelta], params: MP | Mapping[str, Any] | None = None) -> MergeResult:
        """Validate everything, then merge one module at a time."""
        typed = self.parse_params(params)
        weights = check_mergeable(deltas, typed.weights)
        self.validate(deltas, typed)
        result = self._merge(deltas, [typed.scaling * w for w in weights], typed)
        result.info = {"method": self.name, "params": typed.to_dict(), **result.info}
        return result

    def validate(self, deltas: list[LoraDelta], params: MP) -> None:  # noqa: B027 - optional hook
        """Method-specific checks that need the inputs (the generic ones have passed)."""

    @abstractmethod
    def _merge(self, deltas: list[LoraDelta], weights: list[float], params: MP) -> MergeResult:
        """Merge validated inputs; ``weights`` already include ``params.scaling``."""


class BaseMergeMethod(MergeMethod[MP]):
    """A merge method that reads the base model's weights (``base``: module name -> weight as ``(out, in)``,
    see :func:`adaptforge.layers.base_weights`); call :meth:`merge_with_base` (``merge`` explains that)."""

    needs_base = True

    @classmethod
    def notes(cls) -> tuple[str, ...]:
        return ("reads the base model's weights (adaptforge merge loads the base)",)

    def merge(self, deltas: list[LoraDelta], params: MP | Mapping[str, Any] | None = None) -> MergeResult:
        """Validate the inputs like every method (so bad inputs get the same errors), then explain the base."""
        typed = self.parse_params(params)
        check_mergeable(deltas, typed.weights)
        self.validate(deltas, typed)
        raise AdaptforgeError(
            f"merge method {self.name!r} interpolates the base model's weights: call "
            "merge_with_base(deltas, params, base) with base = adaptforge.layers.base_weights(model, deltas[0]) "
            "(adaptforge merge loads the base model itself)"
        )

    def merge_with_base(
        self,
        deltas: list[LoraDelta],
        params: MP | Mapping[str, Any] | None,
        base: Mapping[str, torch.Tensor],
    ) -> MergeResult:
        """Validate inputs and that ``base`` holds every target module with the delta's shape, then merge."""
        typed = self.parse_params(params)
        weights = check_mergeable(deltas, typed.weights)
        self.validate(deltas, typed)
        for name in sorted(deltas[0].modules):
            if name not in base:
                raise AdaptforgeError(f"module {name!r}: the base model has no such layer; merge adapters of this base")
            shape = tuple(base[name].shape)
            if shape != deltas[0][name].shape:
                raise AdaptforgeError(
                    f"module {name!r}: the base weight has shape {shape} but the adapters' delta "
                    f"{deltas[0][name].shape}; adapters of another base model cannot be merged with it"
                )
        result = self._merge_base(deltas, [typed.scaling * w for w in weights], typed, base)
        result.info = {"method": self.name, "params": typed.to_dict(), **result.info}
        return result

    def _merge(self, deltas: list[LoraDelta], weights: list[float], params: MP) -> MergeResult:
        raise AssertionError("base-reading methods merge through merge_with_base()")  # pragma: no cover

    @abstractmethod
    def _merge_base(
        self, deltas: list[LoraDelta], weights: list[float], params: MP, base: Mapping[str, torch.Tensor]
    ) -> MergeResult:
        """Merge validated inputs against the base weights; ``weights`` already include ``params.scaling``."""


@dataclass(frozen=True, kw_only=True)
class DataParams(MergeParams):
    """Parameters of methods that learn from data: where the examples come from."""

    split: str = param("dev", choices=("train", "dev", "test"), help="split of each --data task fitted on")
    examples_per_task: int | None = param(128, ge=1, help="label-stratified seeded sample per task (null: all)")
    seed: int = param(0, help="seed of the example sample and of anything random in the fit")


DP = TypeVar("DP", bound=DataParams)


class DataMergeMethod(MergeMethod[DP]):
    """A merge method that needs a scorer and tasks; call :meth:`fit` (``merge`` explains that)."""

    needs_data = True
    params_base = DataParams
    params_type: ClassVar[type[Params]] = DataParams

    @classmethod
    def notes(cls) -> tuple[str, ...]:
        return ("needs --data TASK_DIR",)

    def merge(self, deltas: list[LoraDelta], params: DP | Mapping[str, Any] | None = None) -> MergeResult:
        """Validate the inputs like every method (so bad inputs get the same errors), then explain ``fit``."""
        typed = self.parse_params(params)
        check_mergeable(deltas, typed.weights)
        self.validate(deltas, typed)
        raise AdaptforgeError(
            f"merge method {self.name!r} learns from data: call fit(deltas, params, scorer, tasks) "
            "(on the command line, pass the tasks with --data TASK_DIR)"
        )

    def _merge(self, deltas: list[LoraDelta], weights: list[float], params: DP) -> MergeResult:
        raise AssertionError("data-driven methods merge through fit()")  # pragma: no cover

    def fit(
        self,
        deltas: list[LoraDelta],
        params: DP | Mapping[str, Any] | None,
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
        for task in tasks:
            task.split(typed.split)  # a missing split is an error naming the task
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

    def validate_data(self, params: DP, tasks: Sequence[Task]) -> None:  # noqa: B027 - optional hook
        """Method-specific checks of params against the tasks (e.g. retention names)."""

    @abstractmethod
    def _fit(
        self, deltas: list[LoraDelta], weights: list[float], params: DP, scorer: Scorer, tasks: list[Task]
    ) -> MergeResult:
        """Fit on validated inputs; ``weights`` already include ``params.scaling``."""


MERGE_METHODS: Registry[type[MergeMethod[Any]]] = Registry(
    "merge method",
    base=MergeMethod,
    entries={
        "atlas": "adaptforge.merge.atlas:Atlas",
        "dawin": "adaptforge.merge.dawin:Dawin",
        "task_arithmetic": "adaptforge.merge.generalized:TaskArithmetic",
        "linear": "adaptforge.merge.generalized:Linear",
        "linear_factors": "adaptforge.merge.generalized:LinearFactors",
        "magnitude_prune": "adaptforge.merge.generalized:MagnitudePrune",
        "magnitude_prune_factors": "adaptforge.merge.generalized:MagnitudePruneFactors",
        "ties": "adaptforge.merge.generalized:Ties",
        "ties_factors": "adaptforge.merge.generalized:TiesFactors",
        "dare_linear": "adaptforge.merge.generalized:DareLinear",
        "dare_linear_factors": "adaptforge.merge.generalized:DareLinearFactors",
        "dare_ties": "adaptforge.merge.generalized:DareTies",
        "dare_ties_factors": "adaptforge.merge.generalized:DareTiesFactors",
        "base_interp": "adaptforge.merge.interp:BaseInterpolation",
        "tall": "adaptforge.merge.tall:TallConsensus",
        "slerp": "adaptforge.merge.slerp:Slerp",
    },
)


def merge(
    method: str,
    deltas: list[LoraDelta],
    params: MergeParams | Mapping[str, Any] | None = None,
    base: Mapping[str, torch.Tensor] | None = None,
) -> MergeResult:
    """Merge ``deltas`` with a registered data-free method, e.g. ``merge("ties", deltas, {"density": 0.2})``;
    ``base`` (module name -> base weight) is for the methods that read it (``slerp``) and refused by the others."""
    impl = MERGE_METHODS.get(method)()
    if isinstance(impl, BaseMergeMethod) and base is not None:
        return impl.merge_with_base(deltas, params, base)
    if base is not None:
        raise AdaptforgeError(f"merge method {method!r} does not read the base weights; do not pass base")
    return impl.merge(deltas, params)


def run(
    method: str,
    deltas: list[LoraDelta],
    params: MergeParams | Mapping[str, Any] | None = None,
    scorer: Scorer | None = None,
    tasks: Sequence[Task] | None = None,
    base: Mapping[str, torch.Tensor] | None = None,
) -> MergeResult:
    """Run any registered method: ``merge`` for data-free ones, ``fit`` (which needs ``scorer`` and
    ``tasks``) for data-driven ones, ``merge_with_base`` (which needs ``base``) for those that read the base
    weights. Data given to a data-free method is an error, not silently unused."""
    impl = MERGE_METHODS.get(method)()
    if isinstance(impl, BaseMergeMethod):
        if tasks:
            raise AdaptforgeError(f"merge method {method!r} does not use data; drop --data / the recipe's 'data'")
        if base is None:
            return impl.merge(deltas, params)  # validates, then says what is missing
        return impl.merge_with_base(deltas, params, base)
    if base is not None:
        raise AdaptforgeError(f"merge method {method!r} does not read the base weights; do not pass base")
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
