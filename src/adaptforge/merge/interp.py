"""Base interpolation: shrink a merged (or single) delta toward the base model to keep what it could do.

``W(alpha) = W_base + alpha * dW`` is the weight-space interpolation of WiSE-FT (Wortsman et al. 2022,
https://arxiv.org/abs/2109.01903) and of "merge pre- and post-tuning weights" to keep an aligned
model's safety (Farn et al. 2024, https://arxiv.org/abs/2412.19512). ``alpha`` is chosen on a grid:
the largest mean target-task accuracy among the values whose retention-task accuracy stays within
``tolerance`` of the base model's (``alpha = 0``, always allowed), on the ``dev`` splits: the mean over
retention tasks (``retention_rule="mean"``) or every retention task on its own (``"each"``, stricter:
one task may not pay for another's gain). Two rules read no retention label (pre/post-tuning merging without
extra labelled data): ``"agreement"`` (the share of inputs on which the model predicts what the base
predicts) and ``"expected"`` (the model's accuracy estimated with the base's own probabilities as soft labels,
relative to the base's estimate of its own accuracy).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from adaptforge.core import AdaptforgeError, LoraDelta, LoraModule
from adaptforge.evaluate import accuracy, logits_of
from adaptforge.merge.base import (
    MERGE_METHODS,
    DataMergeMethod,
    DataParams,
    MergeResult,
    run,
)
from adaptforge.params import param
from adaptforge.scorers import Scorer
from adaptforge.tasks import Example, Task

log = logging.getLogger(__name__)

WISE_FT_URL = "https://arxiv.org/abs/2109.01903"
RULES = ("mean", "each", "agreement", "expected")
LABEL_FREE = ("agreement", "expected")
DEFAULT_GRID = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


@dataclass(frozen=True, kw_only=True)
class BaseInterpParams(DataParams):
    """``inner``/``inner_params``: the merge whose delta is shrunk (``task_arithmetic`` of one adapter is
    the adapter itself); ``weights`` and ``scaling`` go to it. ``retention``: names of the given tasks
    whose accuracy must stay within ``tolerance`` (absolute; of the mean over those tasks, or of each task
    with ``retention_rule="each"``) of the base model's; the other tasks are the targets. With
    ``retention_rule="agreement"`` no retention label is read: retention is the share of retention inputs
    (the first ``examples_per_task`` of the split, not a label-stratified sample) on which the model predicts
    what the base predicts, and it must stay >= 1 - ``tolerance`` (pre/post-tuning merging without extra
    labelled data, https://arxiv.org/abs/2412.19512). ``retention_rule="expected"`` reads no label either and
    estimates what the labelled rules measure, accuracy retention: with ``p`` the base's softmax probabilities
    on an input and ``y`` the model's prediction, ``p[y]`` is the model's expected accuracy if the base's
    probabilities are calibrated, and ``max p`` the base's own; per retention task
    ``mean p[y] / mean max p``, averaged over tasks, must stay >= 1 - ``tolerance``. Agreement is a stricter
    (sufficient) condition: a changed prediction on an input where the base itself was unsure costs
    agreement a full point but expected accuracy little. ``grid``: the alphas tried."""

    inner: str = param("task_arithmetic", help="the merge whose delta is shrunk toward the base")
    inner_params: Mapping[str, Any] = param(default_factory=dict, help="params of the inner merge")
    retention: tuple[str, ...] = param((), help="names of the --data tasks whose base accuracy is kept")
    tolerance: float = param(0.01, ge=0, help="allowed absolute drop of retention accuracy")
    retention_rule: str = param(
        "mean",
        choices=RULES,
        help="retention: mean accuracy over retention tasks, each task's accuracy, or label-free: agreement with "
        "the base's predictions, or expected accuracy under the base's probabilities relative to the base's",
    )
    grid: tuple[float, ...] = param(DEFAULT_GRID, help="the alphas tried (0 is always added)")
    examples_per_task: int | None = param(200, ge=1, help="label-stratified seeded sample per task (null: all)")

    def check(self) -> None:
        known = ", ".join(n for n in MERGE_METHODS.names() if _shrinkable(n))
        self.require("inner", self.inner in MERGE_METHODS, f"a merge method ({known})")
        static = (
            f"a method with one static delta of the adapters alone, {known} (base_interp and dawin cannot be "
            "shrunk toward the base; slerp reads the base itself)"
        )
        self.require("inner", _shrinkable(self.inner), static)
        for key in ("weights", "scaling"):
            self.require("inner_params", key not in self.inner_params, f"without {key!r} (give it at the top level)")
        self.require("grid", bool(self.grid), "a non-empty list of numbers")
        object.__setattr__(self, "grid", tuple(sorted(set(self.grid) | {0.0})))


def _shrinkable(name: str) -> bool:
    return name not in ("base_interp", "dawin") and not MERGE_METHODS.get(name).needs_base


def scale_delta(delta: LoraDelta, alpha: float) -> LoraDelta:
    """``alpha * dW`` exactly: the scale of every module multiplied by ``alpha``."""
    return LoraDelta({n: LoraModule(m.A, m.B, float(m.scale) * alpha) for n, m in delta.modules.items()})


@MERGE_METHODS.register
class BaseInterpolation(DataMergeMethod[BaseInterpParams]):
    """Shrink a merged delta toward the base, ``W_base + alpha * dW`` (WiSE-FT weight interpolation,
    https://arxiv.org/abs/2109.01903; pre-/post-tuning merging for safety, https://arxiv.org/abs/2412.19512).
    ``dW`` is the ``inner`` merge of the adapters. ``alpha`` maximises mean target accuracy on ``split``
    subject to mean retention accuracy >= base - ``tolerance``; ``info`` records the chosen alpha and
    the whole curve. Exact in LoRA form (``alpha`` folded into each module's scale)."""

    name = "base_interp"
    reference_url = WISE_FT_URL

    def validate_data(self, params: BaseInterpParams, tasks: Sequence[Task]) -> None:
        p = params
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
        self, deltas: list[LoraDelta], weights: list[float], params: BaseInterpParams, scorer: Scorer, tasks: list[Task]
    ) -> MergeResult:
        p = params
        targets = [t for t in tasks if t.name not in p.retention]
        retention = [t for t in tasks if t.name in p.retention]
        inner_params = {**dict(p.inner_params), "weights": weights, "scaling": 1.0}
        inner = run(p.inner, deltas, inner_params, scorer, targets if MERGE_METHODS.get(p.inner).needs_data else None)
        label_free = p.retention_rule in LABEL_FREE
        examples = {
            t.name: list(t.split(p.split)[: p.examples_per_task])  # no label is read, not even to stratify
            if label_free and t.name in p.retention
            else t.sample(p.split, p.examples_per_task, seed=p.seed)
            for t in tasks
        }

        def logits(alpha: float) -> dict[str, torch.Tensor]:
            with scorer.backbone.applied(inner.delta if alpha else None, weight=alpha) as model:
                return {t.name: logits_of(scorer, t, examples[t.name], model) for t in tasks}

        base_logits = logits(0.0)
        base_predictions = {k: v.argmax(-1).tolist() for k, v in base_logits.items()}
        base_probs = {k: v.double().softmax(-1) for k, v in base_logits.items()}
        gold = {
            t.name: base_predictions[t.name]
            if label_free and t.name in p.retention
            else list(_gold(t, examples[t.name]))
            for t in tasks
        }

        def accuracies(alpha: float) -> dict[str, float]:
            found = base_predictions if alpha == 0 else {k: v.argmax(-1).tolist() for k, v in logits(alpha).items()}
            acc = {t.name: accuracy(found[t.name], gold[t.name]) for t in tasks}
            if p.retention_rule == "expected":
                acc.update({n: expected_retention(base_probs[n], found[n]) for n in p.retention})
            return acc

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
            if label_free:
                return row["retention_accuracy"] >= 1.0 - p.tolerance - 1e-12
            if p.retention_rule == "each":
                return all(row["per_task"][n] >= base["per_task"][n] - p.tolerance - 1e-9 for n in p.retention)
            return row["retention_accuracy"] >= base["retention_accuracy"] - p.tolerance - 1e-12

        allowed = [r for r in curve if keeps(r)]
        best = max(allowed, key=lambda r: (r["target_accuracy"], -r["alpha"]))
        alpha = float(best["alpha"])
        info = {
            "alpha": alpha,
            "retention_measure": {
                "agreement": "agreement with the base",
                "expected": "expected accuracy under the base's probabilities, relative to the base's",
            }.get(p.retention_rule, "accuracy"),
            "base_retention_accuracy": curve[0]["retention_accuracy"],
            "curve": curve,
            "inner": {"method": p.inner, "info": _jsonable(inner.info)},
        }
        return MergeResult(scale_delta(inner.delta, alpha), dict(inner.reconstruction_error), info)


def expected_retention(base_probs: torch.Tensor, predictions: Sequence[int]) -> float:
    """``mean_i p_i[y_i] / mean_i max p_i``: the expected accuracy of predictions ``y`` when the base's
    probabilities ``p`` (``[n, labels]``) are taken as soft labels, relative to the base's own expected
    accuracy under them (1 for the base's predictions)."""
    if not len(predictions):
        return float("nan")
    chosen = base_probs.gather(1, torch.tensor(list(predictions)).unsqueeze(1)).squeeze(1)
    return float(chosen.mean() / base_probs.max(-1).values.mean())


def _gold(task: Task, examples: Sequence[Example]) -> list[int]:
    return [task.labels.index(ex.label) for ex in examples]


def _mean(values: Any) -> float:
    values = list(values)
    return float(sum(values) / len(values)) if values else float("nan")


def _jsonable(info: Mapping[str, Any]) -> dict[str, Any]:
    """Drop what does not belong in a recipe (tensors)."""
    return {k: v for k, v in info.items() if not isinstance(v, torch.Tensor)}
