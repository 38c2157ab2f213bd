"""Many LoRA adapters to one: registered merge methods over pure tensor ops.

``MERGE_METHODS`` maps a name to a :class:`MergeMethod` class; ``merge(name, deltas, params)`` runs
one. ``ops`` holds the elementwise tensor algebra; the factor algebra shared with compose and generate is
:mod:`adaptforge.lora`. Data-driven methods (``needs_data``: atlas, dawin, base_interp) are fitted with
``fit(deltas, params, scorer, tasks)``; SLERP (``needs_base``) reads the base weights,
``merge_with_base(deltas, params, base)``; ``run(name, deltas, params, scorer, tasks, base)`` calls every kind.
DaWin's per-input merge is a :class:`~adaptforge.routing.Router` (``entropy``). This package holds merge
methods only; ``adaptforge merge`` itself is :mod:`adaptforge.pipelines.merge`.
"""

from adaptforge.merge.atlas import Atlas, AtlasParams
from adaptforge.merge.base import (
    MERGE_METHODS,
    BaseMergeMethod,
    DataMergeMethod,
    DataParams,
    MergeMethod,
    MergeParams,
    MergeResult,
    check_mergeable,
    merge,
    run,
)
from adaptforge.merge.dawin import Dawin, DawinParams, EntropyRouter, evaluate_routed
from adaptforge.merge.generalized import (
    DareParams,
    DareTiesParams,
    GeneralizedTaskArithmetic,
    MagnitudeParams,
    TiesParams,
)
from adaptforge.merge.interp import BaseInterpolation, BaseInterpParams
from adaptforge.merge.slerp import Slerp, SlerpParams
from adaptforge.merge.tall import TallParams

__all__ = [
    "MERGE_METHODS",
    "Atlas",
    "AtlasParams",
    "BaseInterpParams",
    "BaseInterpolation",
    "BaseMergeMethod",
    "DataMergeMethod",
    "DataParams",
    "Dawin",
    "DawinParams",
    "EntropyRouter",
    "evaluate_routed",
    "run",
    "DareParams",
    "DareTiesParams",
    "GeneralizedTaskArithmetic",
    "MagnitudeParams",
    "MergeMethod",
    "MergeParams",
    "MergeResult",
    "Slerp",
    "SlerpParams",
    "TallParams",
    "TiesParams",
    "check_mergeable",
    "merge",
]
