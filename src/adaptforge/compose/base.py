"""The compose contract: candidates in, one result type out, typed params, the composer registry.

A composer builds an adapter for a new task from a list of :class:`Candidate` adapters (retrieved from
the library, see :mod:`adaptforge.compose.retrieval`), a :class:`~adaptforge.scorers.Scorer` and the
task's :class:`~adaptforge.compose.shots.Shots` (k labelled examples, possibly none). Every method returns
a :class:`ComposeResult`: the adapter to store, one weight per candidate and ``info`` (method, params,
curves, seconds). Per-input methods (Arrow) also set ``routing``; :func:`evaluate_composed` evaluates
through it, so callers treat every method alike.

Shot losses are computed on the frozen base model plus adapters in low-rank form
(:class:`~adaptforge.merge.lowrank.LoraMixture`): no model reload, no dense weight rewrite per candidate
weighting.
"""

from __future__ import annotations

import contextlib
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import torch
import torch.nn.functional as F

from adaptforge.adapters import check_compatible
from adaptforge.batching import EncodedSplit, batch_order, make_batch
from adaptforge.core import AdaptforgeError, LoraDelta, Registry
from adaptforge.evaluate import EvalResult, evaluate
from adaptforge.merge.base import is_finite_number, params_from_dict
from adaptforge.merge.lowrank import LoraMixture
from adaptforge.scorers import LabelInputs, Scorer
from adaptforge.tasks import Example, Task

if TYPE_CHECKING:
    from adaptforge.compose.shots import Shots
    from adaptforge.routing import Router

P = TypeVar("P", bound="ComposeParams")
C = TypeVar("C", bound="type[Composer]")


@dataclass
class Candidate:
    """An adapter that may help the new task: its name and tensors, the task it was trained on, the cosine of
    its task description to the new one, and its mean cross-entropy on the shots (when k > 0)."""

    name: str
    delta: LoraDelta
    task: str | None = None
    similarity: float | None = None
    shot_loss: float | None = None

    def summary(self) -> dict[str, Any]:
        """Everything but the tensors, as JSON (recipes and ``--json`` output)."""
        return {"name": self.name, "task": self.task, "similarity": self.similarity, "shot_loss": self.shot_loss}


@dataclass
class ComposeResult:
    """The composed adapter. ``weights`` has one entry per candidate (per-module methods: the mean over
    modules). ``routing`` is set by per-input methods; ``delta`` is then their static fallback."""

    delta: LoraDelta
    weights: list[float]
    info: dict[str, Any] = field(default_factory=dict)
    routing: Router | None = None


def check_int(value: object, what: str, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise AdaptforgeError(f"{what} must be an integer >= {minimum}, got {value!r}")


def check_number(value: object, what: str, minimum: float | None = None, strict: bool = False) -> None:
    ok = is_finite_number(value)
    if ok and minimum is not None:
        ok = value > minimum if strict else value >= minimum  # type: ignore[operator]
    if not ok:
        bound = "" if minimum is None else f" {'>' if strict else '>='} {minimum}"
        raise AdaptforgeError(f"{what} must be a finite number{bound}, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class ComposeParams:
    """Parameters every composer takes: ``seed`` of everything random in the method."""

    seed: int = 0

    def __post_init__(self) -> None:
        check_int(self.seed, "seed", minimum=0)

    @classmethod
    def from_dict(cls: type[P], data: Mapping[str, Any]) -> P:
        """Build from a recipe mapping; an unknown key is an error naming the closest known key."""
        return params_from_dict(cls, data)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


class Composer(ABC):
    """Candidate adapters + shots -> an adapter for the new task. Subclasses set the class attributes and
    implement ``_compose``; :meth:`compose` validates inputs and records method, params and seconds."""

    name: ClassVar[str]
    reference_url: ClassVar[str]
    params_type: ClassVar[type[ComposeParams]] = ComposeParams
    needs_shots: ClassVar[bool] = False

    def parse_params(self, params: ComposeParams | Mapping[str, Any] | None) -> ComposeParams:
        """Typed params from ``None`` (defaults), a mapping (unknown keys rejected) or a params instance."""
        if params is None:
            return self.params_type()
        if isinstance(params, Mapping):
            try:
                return self.params_type.from_dict(params)
            except (AdaptforgeError, TypeError) as err:
                raise AdaptforgeError(f"composer {self.name!r}: {err}") from None
        if type(params) is not self.params_type:
            raise AdaptforgeError(
                f"composer {self.name!r} takes {self.params_type.__name__}, got {type(params).__name__}"
            )
        return params

    def compose(
        self,
        candidates: list[Candidate],
        scorer: Scorer,
        shots: Shots,
        params: ComposeParams | Mapping[str, Any] | None = None,
    ) -> ComposeResult:
        typed = self.parse_params(params)
        check_candidates(candidates, scorer, shots.task)
        if self.needs_shots and shots.k == 0:
            raise AdaptforgeError(
                f"composer {self.name!r} needs k > 0 labelled examples of task {shots.task.name!r}; "
                "use retrieval, arrow or generate for k=0"
            )
        start = time.perf_counter()
        result = self._compose(candidates, scorer, shots, typed)
        if len(result.weights) != len(candidates):  # pragma: no cover - a composer bug, not bad input
            raise AssertionError(f"{self.name}: {len(result.weights)} weights for {len(candidates)} candidates")
        result.info = {
            "method": self.name,
            "params": typed.to_dict(),
            "task": shots.task.name,
            "k": shots.k,
            "candidates": [c.name for c in candidates],
            **result.info,
            "seconds": round(time.perf_counter() - start, 2),
        }
        return result

    @abstractmethod
    def _compose(
        self, candidates: list[Candidate], scorer: Scorer, shots: Shots, params: ComposeParams
    ) -> ComposeResult:
        """Compose validated inputs."""


COMPOSERS: Registry[type[Composer]] = Registry("composer")


def register_composer(cls: C) -> C:
    """Class decorator: register ``cls`` under ``cls.name`` after checking it declares its contract."""
    if not getattr(cls, "reference_url", "").startswith("https://"):
        raise ValueError(f"composer {cls.__name__} must set reference_url to the paper's https link")
    if not issubclass(cls.params_type, ComposeParams):
        raise ValueError(f"composer {cls.__name__}: params_type must subclass ComposeParams")
    return COMPOSERS.register(cls.name)(cls)


def compose(
    method: str,
    candidates: list[Candidate],
    scorer: Scorer,
    shots: Shots,
    params: ComposeParams | Mapping[str, Any] | None = None,
) -> ComposeResult:
    """Compose with the registered method ``method`` (e.g. ``compose("lorahub", cands, scorer, shots)``)."""
    return COMPOSERS.get(method)().compose(candidates, scorer, shots, params)


def check_candidates(candidates: Sequence[Candidate], scorer: Scorer, task: Task) -> None:
    """Raise unless there is at least one candidate, names are unique, all target the same modules, and
    every candidate fits the scorer's base model."""
    backbone = scorer.backbone
    if not candidates:
        raise AdaptforgeError(
            f"no candidate adapters to compose task {task.name!r}: none in the library is compatible with base "
            f"{backbone.name!r} (fingerprint {backbone.fingerprint}); train or import adapters for this base first"
        )
    names = [c.name for c in candidates]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise AdaptforgeError(f"candidate {twice[0]!r} is given more than once; give each adapter once")
    first = candidates[0]
    for cand in candidates[1:]:
        if set(cand.delta.modules) != set(first.delta.modules):
            lacks = sorted(set(first.delta.modules) - set(cand.delta.modules))
            extra = sorted(set(cand.delta.modules) - set(first.delta.modules))
            raise AdaptforgeError(
                f"candidates {first.name!r} and {cand.name!r} target different modules ({cand.name!r} lacks "
                f"{lacks[:3]}, has extra {extra[:3]}); compose adapters trained on the same target modules"
            )
    for cand in candidates:
        check_compatible(cand.delta, backbone.model, what=f"candidate {cand.name!r}")


def deltas_of(candidates: Sequence[Candidate]) -> list[LoraDelta]:
    return [c.delta for c in candidates]


# ----------------------------------------------------------------------------------- losses on shots


def encode_examples(scorer: Scorer, task: Task, examples: Sequence[Example]) -> tuple[EncodedSplit, LabelInputs]:
    """Token ids of ``examples`` and of ``task``'s labels, encoded once per compose run."""
    return scorer.encode(task, examples), scorer.encode_labels(task)


def mean_loss(
    scorer: Scorer, model: torch.nn.Module, encoded: EncodedSplit, labels: LabelInputs, batch_size: int = 8
) -> torch.Tensor:
    """Mean cross-entropy over all ``encoded`` examples under ``model`` as it is (hooks included); label
    context computed once. Differentiable when gradients are enabled."""
    context = scorer.label_context(model, labels)
    total = torch.zeros(())
    for index in batch_order(encoded.lengths(), batch_size, shuffle=False):
        batch = make_batch(encoded, index)
        total = total + F.cross_entropy(scorer.logits(model, batch, context).float(), batch.targets, reduction="sum")
    return total / len(encoded)


@contextlib.contextmanager
def mixture(scorer: Scorer, deltas: Sequence[LoraDelta], coefficients: torch.Tensor) -> Iterator[LoraMixture]:
    """The scorer's base model in eval mode (deterministic loss: no dropout) with ``sum_i c[m, i] dW_i``
    hooked into every target module; training mode and hooks restored after."""
    model = scorer.backbone.model
    was_training = model.training
    model.eval()
    try:
        with LoraMixture(model, deltas, coefficients) as mix:
            yield mix
    finally:
        model.train(was_training)


@torch.no_grad()
def shot_losses(scorer: Scorer, shots: Shots, deltas: Sequence[LoraDelta], batch_size: int = 8) -> list[float]:
    """Mean cross-entropy of all shots under each adapter alone (one forward over the shots per adapter)."""
    if shots.k == 0:
        raise AdaptforgeError(f"task {shots.task.name!r}: no shots to compute a loss on (k = 0)")
    encoded, labels = encode_examples(scorer, shots.task, shots.examples)
    out = []
    for delta in deltas:
        with mixture(scorer, [delta], torch.ones(len(delta), 1)):
            out.append(float(mean_loss(scorer, scorer.backbone.model, encoded, labels, batch_size)))
    return out


def evaluate_composed(
    scorer: Scorer,
    task: Task,
    result: ComposeResult,
    split: str = "test",
    limit: int | None = None,
    adapter: str | None = None,
) -> EvalResult:
    """Evaluate a composition on one split: through its routing (per-token hooks) when it has one, else its
    delta added to the base weights (same examples as :func:`~adaptforge.evaluate.evaluate` with ``limit``)."""
    if result.routing is None:
        return evaluate(scorer, task, split, result.delta, adapter=adapter, limit=limit)
    return result.routing.evaluate(scorer, task, split, limit, adapter)
