"""Many LoRA adapters to one: registered merge methods over pure tensor ops.

``MERGE_METHODS`` maps a name to a :class:`MergeMethod` class; ``merge(name, deltas, params)`` runs
one. ``ops`` holds the tensor algebra, ``refactor`` the exact and low-rank ways back to LoRA factors.
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
from adaptforge.merge.tall import TallParams

__all__ = [
    "MERGE_METHODS",
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
