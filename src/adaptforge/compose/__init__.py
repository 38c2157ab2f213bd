"""An adapter for a new task from its description and k labelled examples, without full training.

Candidates come from the library (:func:`rank_candidates`: description similarity, then loss on the
shots); a registered :class:`Composer` turns them into a :class:`ComposeResult`:

- ``retrieval``: the single best candidate;
- ``lorahub``: weights over candidates by CMA-ES on the shot loss (https://arxiv.org/abs/2307.13269);
- ``atlas``: per-module coefficients by gradient, early-stopped on held-out shots (https://arxiv.org/abs/2407.18242);
- ``arrow``: per-token routing by the adapters' top singular directions, no labels (https://arxiv.org/abs/2405.11157);
- ``tuned``: a static composer's adapter plus a LoRA trained on the shots on top of it (https://arxiv.org/abs/2005.00628).

:func:`evaluate_composed` scores any result; :mod:`~adaptforge.compose.baselines` holds the class-prototype
classifier and a LoRA trained on the shots alone.
"""

from adaptforge.compose.arrow import Arrow, ArrowParams, ArrowRouter, arrow_prototype
from adaptforge.compose.atlas import FewShotAtlas, FewShotAtlasParams
from adaptforge.compose.base import (
    COMPOSERS,
    Candidate,
    ComposeParams,
    Composer,
    ComposeResult,
    compose,
    evaluate_composed,
    shot_losses,
)
from adaptforge.compose.baselines import prototype_eval, train_on_shots
from adaptforge.compose.lorahub import LoraHub, LoraHubObjective, LoraHubParams
from adaptforge.compose.retrieval import Retrieval, rank_candidates
from adaptforge.compose.shots import Shots, draw_shots
from adaptforge.compose.tuned import Tuned, TunedParams

__all__ = [
    "COMPOSERS",
    "Arrow",
    "ArrowParams",
    "ArrowRouter",
    "Candidate",
    "ComposeParams",
    "ComposeResult",
    "Composer",
    "FewShotAtlas",
    "FewShotAtlasParams",
    "LoraHub",
    "LoraHubObjective",
    "LoraHubParams",
    "Retrieval",
    "Shots",
    "Tuned",
    "TunedParams",
    "arrow_prototype",
    "compose",
    "draw_shots",
    "evaluate_composed",
    "prototype_eval",
    "rank_candidates",
    "shot_losses",
    "train_on_shots",
]
