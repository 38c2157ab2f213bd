"""Arrow: route every token, at every adapted layer, to the adapters whose input directions it aligns with.

Arrow (Ostapenko et al. 2024, "Towards Modular LLMs by Building and Reusing a Library of LoRAs",
https://arxiv.org/abs/2405.11157) needs no training and no labels. For each target module ``m`` and
adapter ``i``, the prototype ``v_{i,m}`` is the top right singular vector of ``dW_{i,m} = s_i B_i A_i``: the
input direction the adapter changes most. A token's input ``x`` to module ``m`` scores every adapter by
``|<v_{i,m}, x>|`` (absolute value: a singular vector's sign is arbitrary), keeps the ``top_k`` best, and
weights them by ``softmax(score / temperature)`` over those, so the module computes

    y = W x + sum_{i in top_k(x)} g_i(x) s_i B_i A_i x.

Prototypes come from the LoRA factors (QR of ``B`` and ``A^T``, SVD of the small core; never a dense SVD
of the ``out x in`` delta) and the mixture runs in low-rank form through forward hooks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from adaptforge.compose.base import (
    COMPOSERS,
    Candidate,
    ComposeParams,
    Composer,
    ComposeResult,
    deltas_of,
)
from adaptforge.compose.shots import Shots
from adaptforge.core import AdaptforgeError, LoraDelta, LoraModule
from adaptforge.evaluate import EvalResult, logits_of, predict_logits, result_from_logits, subset_of
from adaptforge.lora.factors import fold, lowrank_svd
from adaptforge.lora.hooks import GatedLora
from adaptforge.params import param
from adaptforge.routing import ROUTERS, Router
from adaptforge.scorers import Scorer
from adaptforge.tasks import Example, Task

ARROW_URL = "https://arxiv.org/abs/2405.11157"


def arrow_prototype(module: LoraModule) -> torch.Tensor:
    """Unit top right singular vector (length ``in``) of ``s B A``, from the rank-1 truncation computed
    through QR of the factors (:func:`~adaptforge.lora.factors.lowrank_svd`). Its sign is arbitrary."""
    top, _ = lowrank_svd(module, 1)
    return top.A[0].float()


@ROUTERS.register
class ArrowRouter(Router):
    """Per-token top-k routing over ``deltas`` at every target module (Arrow). Prototypes and the
    concatenated factors are computed once; :meth:`applied` installs the hooks on a model."""

    name = "arrow"
    reference_url = ARROW_URL

    def __init__(self, deltas: Sequence[LoraDelta], top_k: int = 4, temperature: float = 1.0) -> None:
        super().__init__(deltas)
        ArrowParams(top_k=top_k, temperature=temperature)  # the same checks as the composer's params
        self.modules: list[str] = list(deltas[0])
        for i, delta in enumerate(self.deltas):
            if list(delta) != self.modules:
                raise AdaptforgeError(f"adapter {i} targets other modules than adapter 0; route adapters of one kind")
        self.top_k = min(top_k, len(self.deltas))
        self.temperature = float(temperature)
        self.prototypes: dict[str, torch.Tensor] = {  # module -> [adapters, in]
            name: torch.stack([arrow_prototype(d[name]) for d in self.deltas]) for name in self.modules
        }

    def gates(self, module: str, x: torch.Tensor) -> torch.Tensor:
        """``[..., adapters]`` routing weights of the inputs ``x`` (``[..., in]``) to ``module``: softmax of
        ``|<v_i, x>| / temperature`` over the ``top_k`` adapters, zero elsewhere; each token's row sums to 1."""
        scores = (x.float() @ self.prototypes[module].T).abs()
        top, index = scores.topk(self.top_k, dim=-1)
        return torch.zeros_like(scores).scatter(-1, index, torch.softmax(top / self.temperature, dim=-1))

    @contextlib.contextmanager
    def applied(self, model: torch.nn.Module) -> Iterator[torch.nn.Module]:
        """``model`` with Arrow's per-token gates on every target module (hooks removed on exit; weights untouched)."""
        with GatedLora(model, self.deltas, lambda index, x: self.gates(self.modules[index], x)):
            yield model

    def describe(self) -> dict[str, Any]:
        """JSON-able settings (stored with the composed adapter so the routing can be rebuilt)."""
        return {"router": self.name, "top_k": self.top_k, "temperature": self.temperature, "adapters": len(self.deltas)}

    @classmethod
    def from_settings(cls, deltas: Sequence[LoraDelta], settings: Mapping[str, Any]) -> ArrowRouter:
        return cls(deltas, top_k=int(settings["top_k"]), temperature=float(settings["temperature"]))

    def logits(self, scorer: Scorer, task: Task, examples: Sequence[Example]) -> torch.Tensor:
        with self.applied(scorer.backbone.model) as model:
            return logits_of(scorer, task, examples, model)

    def evaluate(
        self, scorer: Scorer, task: Task, split: str, limit: int | None = None, adapter: str | None = None
    ) -> EvalResult:
        """The base model with the per-token hooks on one split (same examples as ``evaluate`` with ``limit``)."""
        with self.applied(scorer.backbone.model) as model:
            logits, gold = predict_logits(scorer, task, split, model, limit=limit)
        return result_from_logits(task, split, adapter, logits, gold, subset_of(task, split, limit))


@dataclass(frozen=True, kw_only=True)
class ArrowParams(ComposeParams):
    """``top_k``: adapters mixed per token and layer (capped at the number of candidates; the paper uses 4);
    ``temperature`` of the softmax over their scores."""

    top_k: int = param(4, ge=1, help="adapters mixed per token and layer (capped at the candidates)")
    temperature: float = param(1.0, gt=0, help="temperature of the softmax over the adapters' scores")


@COMPOSERS.register
class Arrow(Composer[ArrowParams]):
    """Arrow routing (https://arxiv.org/abs/2405.11157): training-free, label-free per-token routing over the
    candidates, so it works at k = 0 (shots are not used). Per-token weights are not one adapter: the result
    carries ``router`` (used by :func:`~adaptforge.compose.base.evaluate_composed`) and, as its ``delta``,
    the static fallback: the uniform mean of the candidates (exact rank concatenation)."""

    name = "arrow"
    reference_url = ARROW_URL

    def _compose(self, candidates: list[Candidate], scorer: Scorer, shots: Shots, params: ArrowParams) -> ComposeResult:
        p = params
        deltas = deltas_of(candidates)
        routing = ArrowRouter(deltas, top_k=p.top_k, temperature=p.temperature)
        n = len(deltas)
        delta = fold(deltas, torch.full((len(deltas[0]), n), 1.0 / n))
        info = {
            "routing": routing.describe(),
            "delta": "static fallback (uniform mean); evaluate with the routing for Arrow itself",
        }
        return ComposeResult(delta, [1.0 / n] * n, info, router=routing)
