"""Many LoRA adapters to one: registered merge methods over pure tensor ops.

``MERGE_METHODS`` maps a name to a :class:`MergeMethod` class; ``merge(name, deltas, params)`` runs
one. ``ops`` holds the tensor algebra, ``refactor`` the exact and low-rank ways back to LoRA factors.
Data-driven methods (``needs_data``: atlas, dawin, base_interp) are fitted with
``fit(deltas, params, scorer, tasks)``; ``run(name, deltas, params, scorer, tasks)`` calls either kind.
Per-input merging goes through a :class:`Router` (``ROUTERS``) and :func:`evaluate_routed`.
"""

from adaptforge.merge.base import (
    MERGE_METHODS,
    MergeMethod,
    MergeParams,
    MergeResult,
    check_mergeable,
    merge,
    register_method,
)
from adaptforge.merge.generalized import (
    DareParams,
    DareTiesParams,
    GeneralizedTaskArithmetic,
    MagnitudeParams,
    TiesParams,
)
from adaptforge.merge.interp import BaseInterpolation, BaseInterpParams
from adaptforge.merge.learned import Atlas, AtlasParams, DataMergeMethod, DataParams, run
from adaptforge.merge.lowrank import LoraMixture
from adaptforge.merge.routing import Dawin, DawinParams, EntropyRouter, evaluate_routed
from adaptforge.merge.tall import TallParams
from adaptforge.routing import ROUTERS, Router

__all__ = [
    "MERGE_METHODS",
    "ROUTERS",
    "Atlas",
    "AtlasParams",
    "BaseInterpParams",
    "BaseInterpolation",
    "DataMergeMethod",
    "DataParams",
    "Dawin",
    "DawinParams",
    "EntropyRouter",
    "LoraMixture",
    "Router",
    "evaluate_routed",
    "run",
    "DareParams",
    "DareTiesParams",
    "GeneralizedTaskArithmetic",
    "MagnitudeParams",
    "MergeMethod",
    "MergeParams",
    "MergeResult",
    "TallParams",
    "TiesParams",
    "check_mergeable",
    "merge",
    "register_method",
]
