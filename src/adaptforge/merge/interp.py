"""Base interpolation: shrink a merged (or single) delta toward the base model to keep what it could do.

``W(alpha) = W_base + alpha * dW`` is the weight-space interpolation of WiSE-FT (Wortsman et al. 2022,
https://arxiv.org/abs/2109.01903) and of "merge pre- and post-tuning weights" to keep an aligned
model's safety (Farn et al. 2024, https://arxiv.org/abs/2412.19512). ``alpha`` is chosen on a grid:
the largest mean target-task accuracy among the values whose retention-task accuracy stays within
``tolerance`` of the base model's (``alpha = 0``, always allowed), on the ``dev`` splits: the mean over
retention tasks (``retention_rule="mean"``) or every retention task on its own (``"each"``, stricter:
one task may not pay for another's gain).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import torch

from adaptforge.core import AdaptforgeError, LoraDelta, LoraModule
from adaptforge.evaluate import accuracy
from adaptforge.merge.base import MERGE_METHODS, MergeParams, MergeResult, is_finite_number, register_method
from adaptforge.merge.learned import DataMergeMethod, DataParams, run
from adaptforge.merge.routing import logits_for
from adaptforge.scorers import Scorer
from adaptforge.tasks import Task

log = logging.getLogger(__name__)

WISE_FT_URL = "https://arxiv.org/abs/2109.01903"
DEFAULT_GRID = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


@dataclass(frozen=True, kw_only=True)
class BaseInterpParams(DataParams):
    """``inner``/``inner_params``: the merge whose delta is shrunk (``task_arithmetic`` of one adapter is
    the adapter itself); ``weights`` and ``scaling`` go to it. ``retention``: names of the given tasks
    whose accuracy must stay within ``tolerance`` (absolute; of the mean over those tasks, or of each task
    with ``retention_rule="each"``) of the base model's; the other tasks are the targets. ``grid``: the
    alphas tried."""

    inner: str = "task_arithmetic"
    inner_params: Mapping[str, Any] = field(default_factory=dict)
    retention: tuple[str, ...] = ()
    tolerance: float = 0.01
    retention_rule: str = "mean"
    grid: tuple[float, ...] = DEFAULT_GRID
    examples_per_task: int | None = 200

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.inner, str) or self.inner not in MERGE_METHODS:
            known = ", ".join(n for n in MERGE_METHODS.names() if n != "base_interp")
            raise AdaptforgeError(f"inner must name a merge method ({known}), got {self.inner!r}")
        if self.inner in ("base_interp", "dawin"):
            raise AdaptforgeError(f"inner {self.inner!r} cannot be shrunk toward the base (needs one static delta)")
        if not isinstance(self.inner_params, Mapping):
            raise AdaptforgeError(f"inner_params must be a mapping of parameters, got {self.inner_params!r}")
        for key in ("weights", "scaling"):
            if key in self.inner_params:
                raise AdaptforgeError(f"give {key!r} at the top level of base_interp's params, not in inner_params")
        if isinstance(self.retention, str) or not all(isinstance(t, str) for t in self.retention):
            raise AdaptforgeError(f"retention must be a list of task names, got {self.retention!r}")
        object.__setattr__(self, "retention", tuple(self.retention))
        if self.retention_rule not in ("mean", "each"):
            raise AdaptforgeError(f"retention_rule must be 'mean' or 'each', got {self.retention_rule!r}")
        if not is_finite_number(self.tolerance) or self.tolerance < 0:
            raise AdaptforgeError(f"tolerance must be a number >= 0, got {self.tolerance!r}")
        if isinstance(self.grid, (str, bytes)) or not self.grid or not all(is_finite_number(a) for a in self.grid):
            raise AdaptforgeError(f"grid must be a non-empty list of numbers, got {self.grid!r}")
        object.__setattr__(self, "grid", tuple(sorted({float(a) for a in self.grid} | {0.0})))

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out.update(inner_params=dict(self.inner_params), retention=list(self.retention), grid=list(self.grid))
        return out


def scale_delta(delta: LoraDelta, alpha: float) -> LoraDelta:
    """``alpha * dW`` exactly: the scale of every module multiplied by ``alpha``."""
    return LoraDelta({n: LoraModule(m.A, m.B, float(m.scale) * alpha) for n, m in delta.modules.items()})


@register_method
class BaseInterpolation(DataMergeMethod):
    """Shrink a merged delta toward the base, ``W_base + alpha * dW`` (WiSE-FT weight interpolation,
    https://arxiv.org/abs/2109.01903; pre-/post-tuning merging for safety, https://arxiv.org/abs/2412.19512).
    ``dW`` is the ``inner`` merge of the adapters. ``alpha`` maximises mean target accuracy on ``split``
    subject to mean retention accuracy >= base - ``tolerance``; ``info`` records the chosen alpha and
    the whole curve. Exact in LoRA form (``alpha`` folded into each module's scale)."""

    name = "base_interp"
    reference_url = WISE_FT_URL
    params_type = BaseInterpParams

    def validate_data(self, params: MergeParams, tasks: Sequence[Task]) -> None:
        p = cast(BaseInterpParams, params)
        names = {t.name for t in tasks}
        if not p.retention:
            raise AdaptforgeError(
                "base_interp needs retention tasks: set params.retention to the names of given tasks whose "
                "base-model accuracy must be kept (on the command line: --retain TASK_DIR)"
            )
        missing = [r for r in p.retention if r not in names]
        if missing:
            raise AdaptforgeError(f"base_interp: retention task(s) {missing} are not among the data ({sorted(names)})")
        if not names - set(p.retention):
            raise AdaptforgeError("base_interp: every task is a retention task; give at least one target task")

    def _fit(
        self, deltas: list[LoraDelta], weights: list[float], params: MergeParams, scorer: Scorer, tasks: list[Task]
    ) -> MergeResult:
        p = cast(BaseInterpParams, params)
        targets = [t for t in tasks if t.name not in p.retention]
        retention = [t for t in tasks if t.name in p.retention]
        inner_params = {**dict(p.inner_params), "weights": weights, "scaling": 1.0}
        inner = run(p.inner, deltas, inner_params, scorer, targets if MERGE_METHODS.get(p.inner).needs_data else None)
        examples = {t.name: t.sample(p.split, p.examples_per_task, seed=p.seed) for t in tasks}
        gold = {t.name: scorer.encode(t, examples[t.name]).targets for t in tasks}

        def accuracies(alpha: float) -> dict[str, float]:
            with scorer.backbone.applied(inner.delta if alpha else None, weight=alpha) as model:
                return {
                    t.name: accuracy(logits_for(scorer, t, examples[t.name], model).argmax(-1).tolist(), gold[t.name])
                    for t in tasks
                }

        curve = []
        for alpha in p.grid:
            acc = accuracies(alpha)
            row = {
                "alpha": alpha,
                "target_accuracy": _mean(acc[t.name] for t in targets),
                "retention_accuracy": _mean(acc[t.name] for t in retention),
                "per_task": {k: round(v, 5) for k, v in acc.items()},
            }
            curve.append(row)
            log.info("base_interp alpha=%.2f target %.4f retention %.4f", alpha, *list(row.values())[1:3])
        base = curve[0]  # alpha = 0 is first: the grid is sorted

        def keeps(row: dict[str, Any]) -> bool:
            if p.retention_rule == "each":
                return all(row["per_task"][n] >= base["per_task"][n] - p.tolerance - 1e-9 for n in p.retention)
            return row["retention_accuracy"] >= base["retention_accuracy"] - p.tolerance - 1e-12

        allowed = [r for r in curve if keeps(r)]
        best = max(allowed, key=lambda r: (r["target_accuracy"], -r["alpha"]))
        alpha = float(best["alpha"])
        info = {
            "alpha": alpha,
            "base_retention_accuracy": curve[0]["retention_accuracy"],
            "curve": curve,
            "inner": {"method": p.inner, "info": _jsonable(inner.info)},
        }
        return MergeResult(scale_delta(inner.delta, alpha), dict(inner.reconstruction_error), info)


def _mean(values: Any) -> float:
    values = list(values)
    return float(sum(values) / len(values)) if values else float("nan")


def _jsonable(info: Mapping[str, Any]) -> dict[str, Any]:
    """Drop what does not belong in a recipe (tensors)."""
    return {k: v for k, v in info.items() if not isinstance(v, torch.Tensor)}
