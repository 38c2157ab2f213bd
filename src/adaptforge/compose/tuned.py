"""Compose, then tune: a LoRA trained on the shots on top of a composed adapter.

Composition alone can only recombine what the library knows; a LoRA trained on 16 shots alone starts
from nothing. Starting the shot LoRA from the composed adapter (the base model with the composed delta
folded in, the new LoRA trained on top) is intermediate-task transfer (Pruksachatkun et al. 2020,
https://arxiv.org/abs/2005.00628) with the intermediate model picked, or composed, from the library by the
shots. The result is the exact sum of the two (task arithmetic at weight 1: the factors concatenated),
on the composed adapter's target modules, so it stores and reloads like any LoRA.
"""

from __future__ import annotations

from dataclasses import dataclass

from adaptforge.compose.base import (
    COMPOSERS,
    Candidate,
    ComposeParams,
    Composer,
    ComposeResult,
)
from adaptforge.compose.baselines import SHOT_TRAIN_DEFAULTS, train_on_shots
from adaptforge.compose.shots import Shots
from adaptforge.merge import merge
from adaptforge.params import param
from adaptforge.scorers import Scorer
from adaptforge.train.config import TrainConfig

TUNED_URL = "https://arxiv.org/abs/2005.00628"
STATIC_INNER = ("retrieval", "lorahub", "atlas")  # per-input methods have no single adapter to tune from


@dataclass(frozen=True, kw_only=True)
class TunedParams(ComposeParams):
    """``inner``: the composer whose adapter is the starting point (run with its defaults and this seed);
    ``epochs``, ``batch_size``, ``lr`` (``None``: the backbone's default) and ``rank`` of the shot LoRA,
    whose other settings are the shot baseline's (:data:`SHOT_TRAIN_DEFAULTS`)."""

    inner: str = param("retrieval", choices=STATIC_INNER, help="composer whose adapter is the starting point")
    epochs: int = param(SHOT_TRAIN_DEFAULTS["epochs"], ge=1, help="epochs of the shot LoRA")
    batch_size: int = param(SHOT_TRAIN_DEFAULTS["batch_size"], ge=1, help="batch size of the shot LoRA")
    lr: float | None = param(None, gt=0, help="learning rate of the shot LoRA (null: the backbone's default)")
    rank: int = param(8, ge=1, help="rank of the shot LoRA")


@COMPOSERS.register
class Tuned(Composer[TunedParams]):
    """The ``inner`` composer's adapter plus a LoRA trained on all k shots with it folded into the base
    (https://arxiv.org/abs/2005.00628). ``weights`` are the inner composer's; ``info`` holds its info under
    ``inner`` and the shot LoRA's training settings and final loss under ``tune``."""

    name = "tuned"
    reference_url = TUNED_URL
    needs_shots = True

    def _compose(self, candidates: list[Candidate], scorer: Scorer, shots: Shots, params: TunedParams) -> ComposeResult:
        p = params
        start = COMPOSERS.get(p.inner)().compose(candidates, scorer, shots, {"seed": p.seed})
        cfg = TrainConfig(
            **{**SHOT_TRAIN_DEFAULTS, "epochs": p.epochs, "batch_size": p.batch_size},
            lr=p.lr,
            rank=p.rank,
            alpha=2.0 * p.rank,
            targets=tuple(start.delta.targets),
            seed=p.seed,
        )
        with scorer.backbone.applied(start.delta):
            result = train_on_shots(scorer.backbone, shots, cfg, scorer=scorer)
        tune = {"config": result.config.to_dict(), "steps": len(result.history), "final_loss": result.history[-1][2]}
        total = merge("task_arithmetic", [start.delta, result.delta])  # exact: factors concatenated
        return ComposeResult(total.delta, start.weights, {"inner": start.info, "tune": tune})
