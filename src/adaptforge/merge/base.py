"""The merge contract: typed params, one result type, the method base class and its registry.

A merge method is a small class registered in :data:`MERGE_METHODS` by its ``name``. It declares a
frozen params dataclass (``params_type``; unknown keys are rejected with a "did you mean" hint), a
``reference_url`` and ``needs_data``, and implements
``merge(deltas: list[LoraDelta], params) -> MergeResult``. Inputs are validated before anything is
computed: a non-empty list, the same target modules and delta shapes in every adapter, one weight
per adapter. Different ranks across adapters are fine.
"""

from __future__ import annotations

import difflib
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from adaptforge.core import AdaptforgeError, LoraDelta, Registry

if TYPE_CHECKING:
    from adaptforge.routing import Router

P = TypeVar("P", bound="MergeParams")
M = TypeVar("M", bound="type[MergeMethod]")


def is_finite_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


D = TypeVar("D")


def params_from_dict(cls: type[D], data: Mapping[str, Any], owner: str | None = None) -> D:
    """Build the params dataclass ``cls`` from a recipe mapping; an unknown key is an error naming the
    closest known key, prefixed with ``owner`` when given (shared by merge methods, composers and the
    generator config)."""
    known = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            prefix = f"{owner}: " if owner else ""
            raise AdaptforgeError(f"{prefix}unknown parameter {key!r}; known: {', '.join(known)}.{hint}")
    return cls(**dict(data))


@dataclass(frozen=True, kw_only=True)
class MergeParams:
    """Parameters every method takes.

    ``weights``: one per adapter (default all 1; negative subtracts an adapter);
    ``scaling``: a global factor on the merged delta (the lambda of task arithmetic);
    ``rank``: output rank per module (``None``: the method's default, see its docstring).
    """

    weights: tuple[float, ...] | None = None
    scaling: float = 1.0
    rank: int | None = None

    def __post_init__(self) -> None:
        if self.weights is not None:
            if isinstance(self.weights, (str, bytes)) or not isinstance(self.weights, Sequence):
                raise AdaptforgeError(f"weights must be a list of numbers, got {self.weights!r}")
            if not all(is_finite_number(w) for w in self.weights):
                raise AdaptforgeError(f"weights must be finite numbers, got {list(self.weights)!r}")
            object.__setattr__(self, "weights", tuple(float(w) for w in self.weights))
        if not is_finite_number(self.scaling):
            raise AdaptforgeError(f"scaling must be a finite number, got {self.scaling!r}")
        if self.rank is not None and (not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank < 1):
            raise AdaptforgeError(f"rank must be a positive integer or null, got {self.rank!r}")

    @classmethod
    def from_dict(cls: type[P], data: Mapping[str, Any]) -> P:
        """Build from a recipe mapping; an unknown key is an error naming the closest known key."""
        return params_from_dict(cls, data)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if out["weights"] is not None:
            out["weights"] = list(out["weights"])
        return out


def check_density(density: object) -> None:
    if not isinstance(density, (int, float)) or isinstance(density, bool) or not 0.0 < density <= 1.0:
        raise AdaptforgeError(f"density is the fraction of entries kept and must be in (0, 1], got {density!r}")


def check_sign_method(method: object) -> None:
    if method not in ("total", "count"):
        hint = " (PEFT's 'frequency' is 'count' here)" if method == "frequency" else ""
        raise AdaptforgeError(f"majority_sign must be 'total' or 'count', got {method!r}{hint}")


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


class MergeMethod(ABC):
    """Many LoRA adapters to one. Subclasses set the class attributes and implement ``_merge``."""

    name: ClassVar[str]
    reference_url: ClassVar[str]
    needs_data: ClassVar[bool] = False
    params_type: ClassVar[type[MergeParams]] = MergeParams

    def parse_params(self, params: MergeParams | Mapping[str, Any] | None) -> MergeParams:
        """Typed params from ``None`` (defaults), a mapping (unknown keys rejected) or a params instance."""
        if params is None:
            return self.params_type()
        if isinstance(params, Mapping):
            try:
                return self.params_type.from_dict(params)
            except AdaptforgeError as err:
                raise AdaptforgeError(f"merge method {self.name!r}: {err}") from None
        if type(params) is not self.params_type:
            raise AdaptforgeError(
                f"merge method {self.name!r} takes {self.params_type.__name__}, got {type(params).__name__}"
            )
        return params

    def merge(self, deltas: list[LoraDelta], params: MergeParams | Mapping[str, Any] | None = None) -> MergeResult:
        """Validate everything, then merge one module at a time."""
        typed = self.parse_params(params)
        weights = check_mergeable(deltas, typed.weights)
        self.validate(deltas, typed)
        result = self._merge(deltas, [typed.scaling * w for w in weights], typed)
        result.info = {"method": self.name, "params": typed.to_dict(), **result.info}
        return result

    def validate(self, deltas: list[LoraDelta], params: MergeParams) -> None:  # noqa: B027 - optional hook
        """Method-specific checks that need the inputs (the generic ones have passed)."""

    @abstractmethod
    def _merge(self, deltas: list[LoraDelta], weights: list[float], params: MergeParams) -> MergeResult:
        """Merge validated inputs; ``weights`` already include ``params.scaling``."""


MERGE_METHODS: Registry[type[MergeMethod]] = Registry("merge method")


def register_method(cls: M) -> M:
    """Class decorator: register ``cls`` under ``cls.name`` after checking it declares its contract."""
    if not getattr(cls, "reference_url", "").startswith("https://"):
        raise ValueError(f"merge method {cls.__name__} must set reference_url to the paper's https link")
    if not issubclass(cls.params_type, MergeParams):
        raise ValueError(f"merge method {cls.__name__}: params_type must subclass MergeParams")
    return MERGE_METHODS.register(cls.name)(cls)


def merge(method: str, deltas: list[LoraDelta], params: MergeParams | Mapping[str, Any] | None = None) -> MergeResult:
    """Merge ``deltas`` with the registered method ``method`` (e.g. ``merge("ties", deltas, {"density": 0.2})``)."""
    return MERGE_METHODS.get(method)().merge(deltas, params)
