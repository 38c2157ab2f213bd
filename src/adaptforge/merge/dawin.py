"""Per-input merging: routers that weight the adapters for each input, and DaWin.

A :class:`Router` holds the adapters it mixes and returns, for a list of examples of a task, one
coefficient row per example (``n x adapters``). :func:`evaluate_routed` scores each example with the
base model plus ``sum_i c_i dW_i`` for its own row (per-row low-rank hooks in batched forwards,
:mod:`adaptforge.lora.rows`; no weight rewrites): the label side of the scorer sees the same per-input model
as the text side.
The router contract and its registry live in :mod:`adaptforge.routing`.

DaWin (Oh et al. 2024, "DaWin: Training-free Dynamic Weight Interpolation for Robust Adaptation",
https://arxiv.org/abs/2410.03782) weights each adapter by the confidence of its own prediction on
the input: ``c_i(x) = scaling * softmax_i(log w_i - H_i(x) / T)`` with ``H_i`` the entropy of
adapter ``i``'s label distribution on ``x``. No training; it costs one pass per adapter plus the
routed pass.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from adaptforge.core import AdaptforgeError, LoraDelta
from adaptforge.evaluate import EvalResult, entropy, logits_of, result_from_logits, subset_of
from adaptforge.lora.factors import fold, truncate
from adaptforge.lora.rows import mixed_logits
from adaptforge.merge.base import MERGE_METHODS, DataMergeMethod, DataParams, MergeResult, is_finite_number
from adaptforge.params import param
from adaptforge.routing import ROUTERS, Router
from adaptforge.scorers import Scorer
from adaptforge.tasks import Example, Task

log = logging.getLogger(__name__)

DAWIN_URL = "https://arxiv.org/abs/2410.03782"


def entropy_weights(
    adapter_logits: Sequence[torch.Tensor], temperature: float, prior: Sequence[float] | None = None
) -> torch.Tensor:
    """DaWin weights ``softmax_i(log w_i - H_i / T)`` per example (rows sum to 1), from each adapter's logits.

    https://arxiv.org/abs/2410.03782
    """
    if temperature <= 0:
        raise AdaptforgeError(f"temperature must be > 0, got {temperature!r}")
    scores = torch.stack([-entropy(x) / temperature for x in adapter_logits], dim=1)
    if prior is not None:
        scores = scores + torch.log(torch.tensor(list(prior), dtype=scores.dtype))
    return torch.softmax(scores, dim=1).float()


@ROUTERS.register
class EntropyRouter(Router):
    """DaWin's router (https://arxiv.org/abs/2410.03782): each adapter weighted by ``w_i exp(-H_i(x)/T)``,
    normalized over adapters, times ``scaling``."""

    name = "entropy"
    reference_url = DAWIN_URL

    def __init__(
        self,
        deltas: Sequence[LoraDelta],
        temperature: float = 0.1,
        scaling: float = 1.0,
        prior: Sequence[float] | None = None,
    ) -> None:
        super().__init__(deltas)
        if not is_finite_number(temperature) or temperature <= 0:
            raise AdaptforgeError(f"temperature must be a number > 0, got {temperature!r}")
        if prior is not None and (len(prior) != len(self.deltas) or any(w <= 0 for w in prior)):
            raise AdaptforgeError(f"DaWin prior weights must be one positive number per adapter, got {list(prior)}")
        self.temperature = float(temperature)
        self.scaling = float(scaling)
        self.prior = None if prior is None else [float(w) for w in prior]

    def adapter_logits(self, scorer: Scorer, task: Task, examples: Sequence[Example]) -> list[torch.Tensor]:
        """Each adapter's own logits on ``examples`` (one batched pass per adapter)."""
        out = []
        for delta in self.deltas:
            with scorer.backbone.applied(delta) as model:
                out.append(logits_of(scorer, task, examples, model))
        return out

    def from_logits(self, adapter_logits: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.scaling * entropy_weights(adapter_logits, self.temperature, self.prior)

    def route(self, scorer: Scorer, task: Task, examples: Sequence[Example]) -> torch.Tensor:
        return self.from_logits(self.adapter_logits(scorer, task, examples))

    def describe(self) -> dict[str, Any]:
        return {"router": self.name, "temperature": self.temperature, "scaling": self.scaling, "prior": self.prior}

    @classmethod
    def from_settings(cls, deltas: Sequence[LoraDelta], settings: Mapping[str, Any]) -> EntropyRouter:
        return cls(deltas, float(settings["temperature"]), float(settings["scaling"]), settings.get("prior"))

    def evaluate(
        self, scorer: Scorer, task: Task, split: str, limit: int | None = None, adapter: str | None = None
    ) -> EvalResult:
        return evaluate_routed(scorer, task, self, split, limit, adapter)[0]

    def logits(self, scorer: Scorer, task: Task, examples: Sequence[Example]) -> torch.Tensor:
        return routed_logits(scorer, task, self, examples)[0]


@torch.no_grad()
def evaluate_routed(
    scorer: Scorer,
    task: Task,
    router: Router,
    split: str = "test",
    limit: int | None = None,
    adapter: str | None = None,
    coefficients: torch.Tensor | None = None,
    seed: int = 0,
) -> tuple[EvalResult, torch.Tensor]:
    """Evaluate the per-input merge of ``router`` on a split (the same examples as :func:`~adaptforge.evaluate.evaluate`
    with that ``limit``); returns the result and the ``n x adapters`` coefficients used.

    ``coefficients`` skips routing (e.g. when the adapters' logits are already known). Each example is
    scored with its own merged model, its coefficient row applied at every target module
    (:class:`~adaptforge.lora.rows.RowMixture`, all examples in batched forwards).
    """
    examples = task.sample(split, limit, seed=seed)
    logits, coefs = routed_logits(scorer, task, router, examples, coefficients)
    gold = torch.tensor([task.labels.index(ex.label) for ex in examples], dtype=torch.long)
    return result_from_logits(task, split, adapter, logits, gold, subset_of(task, split, limit, seed)), coefs


@torch.no_grad()
def routed_logits(
    scorer: Scorer,
    task: Task,
    router: Router,
    examples: Sequence[Example],
    coefficients: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``[n, labels]`` logits of ``examples``, each under its own per-input merge, and the coefficients used:
    the routing passes (one batched pass per adapter), then one mixed pass with per-row coefficients
    (:func:`~adaptforge.lora.rows.mixed_logits`)."""
    coefs = router.route(scorer, task, examples) if coefficients is None else coefficients  # type: ignore[attr-defined]
    return mixed_logits(scorer, task, router.deltas, examples, coefs), coefs


@dataclass(frozen=True, kw_only=True)
class DawinParams(DataParams):
    """Adds ``temperature`` T of the entropy weights (smaller: closer to picking the most confident
    adapter). ``weights`` are a prior (positive); ``scaling`` multiplies the normalized weights. The
    data (inputs only, labels unused) give the static fallback: the mean routing weights."""

    temperature: float = param(0.1, gt=0, help="T of the entropy weights (smaller: closer to the most confident)")


@MERGE_METHODS.register
class Dawin(DataMergeMethod[DawinParams]):
    """DaWin multi-adapter interpolation (https://arxiv.org/abs/2410.03782): per input ``x``, the model is
    ``W + scaling * sum_i c_i(x) dW_i`` with ``c(x) = softmax_i(log w_i - H_i(x) / T)`` from each adapter's
    prediction entropy; training-free. Per-input weights cannot be one adapter, so the result carries
    ``router`` (used by ``--eval`` and :func:`evaluate_routed`) and, as its ``delta``, the static merge
    with the routing weights averaged over the given tasks' inputs (exact rank concatenation)."""

    name = "dawin"
    reference_url = DAWIN_URL

    def validate(self, deltas: list[LoraDelta], params: DawinParams) -> None:
        if params.weights is not None and any(w <= 0 for w in params.weights):
            raise AdaptforgeError(f"dawin: weights are a prior and must be positive, got {list(params.weights)}")

    def _fit(
        self, deltas: list[LoraDelta], weights: list[float], params: DawinParams, scorer: Scorer, tasks: list[Task]
    ) -> MergeResult:
        p = params
        prior = list(p.weights) if p.weights is not None else None
        router = EntropyRouter(deltas, temperature=p.temperature, scaling=p.scaling, prior=prior)
        per_task: dict[str, list[float]] = {}
        rows = []
        for task in tasks:
            coefs = router.route(scorer, task, task.sample(p.split, p.examples_per_task, seed=p.seed))
            per_task[task.name] = [round(float(v), 5) for v in coefs.mean(dim=0)]
            rows.append(coefs)
        mean = torch.cat(rows).mean(dim=0)
        n_modules = len(deltas[0])
        delta, errors = truncate(fold(deltas, mean.expand(n_modules, -1)), p.rank)
        info = {
            "router": router.describe(),
            "mean_weights": [round(float(v), 5) for v in mean],
            "mean_weights_per_task": per_task,
            "delta": "static merge with the mean routing weights; evaluate with the router for DaWin itself",
        }
        return MergeResult(delta, errors, info, router=router)
