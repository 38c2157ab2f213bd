"""The compose contract: candidates in, one result type out, typed params, the composer registry.

A composer builds an adapter for a new task from a list of :class:`Candidate` adapters (retrieved from
the library, see :mod:`adaptforge.compose.retrieval`), a :class:`~adaptforge.scorers.Scorer` and the
task's :class:`~adaptforge.compose.shots.Shots` (k labelled examples, possibly none). Every method returns
a :class:`ComposeResult`: the adapter to store, one weight per candidate and ``info`` (method, params,
curves, seconds). Per-input methods (Arrow) also set ``router``; :func:`evaluate_composed` evaluates
through it, so callers treat every method alike.

Shot losses are computed on the frozen base model plus adapters in low-rank form
(:class:`~adaptforge.lora.hooks.LoraMixture`): no model reload, no dense weight rewrite per candidate
weighting.
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
from adaptforge.evaluate import EvalResult, evaluate_task
from adaptforge.lora.objective import encode_examples, mean_loss, mixture
from adaptforge.methods import Method
from adaptforge.params import Params, param
from adaptforge.progress import Steps
from adaptforge.scorers import Scorer
from adaptforge.tasks import Task

if TYPE_CHECKING:
    from adaptforge.compose.shots import Shots
    from adaptforge.routing import Router


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
    modules). ``router`` is set by per-input methods; ``delta`` is then their static fallback."""

    delta: LoraDelta
    weights: list[float]
    info: dict[str, Any] = field(default_factory=dict)
    router: Router | None = None


@dataclass(frozen=True, kw_only=True)
class ComposeParams(Params):
    """Parameters every composer takes."""

    seed: int = param(0, ge=0, help="seed of everything random in the method")


CP = TypeVar("CP", bound=ComposeParams)


class Composer(Method[CP]):
    """Candidate adapters + shots -> an adapter for the new task. Subclasses set the class attributes and
    implement ``_compose``; :meth:`compose` validates inputs and records method, params and seconds."""

    kind = "composer"
    params_base = ComposeParams
    params_type: ClassVar[type[Params]] = ComposeParams
    needs_shots: ClassVar[bool] = False
    generative: ClassVar[bool] = False  # defined for generation tasks too (a loss on the shots' responses)

    @classmethod
    def notes(cls) -> tuple[str, ...]:
        return (("needs --shots K > 0",) if cls.needs_shots else ()) + (
            ("also generation tasks (response NLL)",) if cls.generative else ()
        )

    def compose(
        self,
        candidates: list[Candidate],
        scorer: Scorer,
        shots: Shots,
        params: CP | Mapping[str, Any] | None = None,
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
    def _compose(self, candidates: list[Candidate], scorer: Scorer, shots: Shots, params: CP) -> ComposeResult:
        """Compose validated inputs."""


COMPOSERS: Registry[type[Composer[Any]]] = Registry(
    "composer",
    base=Composer,
    entries={
        "arrow": "adaptforge.compose.arrow:Arrow",
        "atlas": "adaptforge.compose.atlas:FewShotAtlas",
        "lorahub": "adaptforge.compose.lorahub:LoraHub",
        "retrieval": "adaptforge.compose.retrieval:Retrieval",
        "tuned": "adaptforge.compose.tuned:Tuned",
    },
)


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


@torch.no_grad()
def shot_losses(scorer: Scorer, shots: Shots, deltas: Sequence[LoraDelta], batch_size: int = 8) -> list[float]:
    """Mean cross-entropy of all shots under each adapter alone (one forward over the shots per adapter)."""
    if shots.k == 0:
        raise AdaptforgeError(f"task {shots.task.name!r}: no shots to compute a loss on (k = 0)")
    encoded, labels = encode_examples(scorer, shots.task, shots.examples)
    out = []
    with Steps("shot loss of each candidate: adapters", len(deltas)) as steps:
        for delta in deltas:
            with mixture(scorer, [delta], torch.ones(len(delta), 1)):
                out.append(float(mean_loss(scorer, scorer.backbone.model, encoded, labels, batch_size)))
            steps.advance()
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
    if result.router is None:
        return evaluate_task(scorer, task, split, result.delta, adapter, limit)
    return result.router.evaluate(scorer, task, split, limit, adapter)
