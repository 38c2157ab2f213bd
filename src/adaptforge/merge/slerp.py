"""SLERP between the base weights and the fine-tuned ones, per module: the pre/post-tuning merge on the arc.

With ``W0`` a module's base weight and ``W1 = W0 + dW`` its fine-tuned weight (``dW`` the ``inner`` merge of the
adapters, by default their weighted sum), both flattened, ``theta`` the angle between them and ``t`` in [0, 1]:
``W(t) = sin((1-t) theta)/sin(theta) W0 + sin(t theta)/sin(theta) W1`` (Shoemake 1985; between pre- and
post-tuning weights in Farn et al. 2024, https://arxiv.org/abs/2412.19512). ``W(0) = W0``, ``W(1) = W1``, and
when ``|W0| = |W1|`` every ``W(t)`` keeps that norm. Where ``sin(theta) < eps`` (colinear or antiparallel
weights, or a zero one) it falls back to linear interpolation, ``W0 + t dW``.

The output is an adapter: the delta ``W(t) - W0 = (c0 + c1 - 1) W0 + c1 dW`` with ``c0, c1`` the two
coefficients. Its first term is a multiple of the full-rank base weight, which LoRA cannot hold exactly, so the
delta goes back to LoRA by truncated SVD to ``rank`` (default: the rank of ``dW`` in that module) and the
relative error is reported per module. The term is small for fine-tuning-sized updates:
``c0 + c1 - 1 = t (1-t) theta^2 / 2 + O(theta^4)``, so for small ``theta`` SLERP is linear interpolation with
``alpha = c1 = t (1 + (1 - t^2) theta^2 / 6 + ...)`` plus that base-proportional term. Where the term is zero
(``t`` of 0 or 1, or the linear fallback) the result is ``c1 dW`` in the inner delta's own factors, exactly.

Unlike mergekit's ``slerp`` (which falls back to linear interpolation when the normalised dot product exceeds
0.9995, i.e. below about 1.8 degrees, where most fine-tuning updates lie), the angle is computed in float64
as ``2 asin(|u0 - u1| / 2)`` of the unit vectors, which stays accurate for tiny angles, and the arc is followed
down to ``eps``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from adaptforge.core import LoraDelta, LoraModule
from adaptforge.lora.factors import dense_svd
from adaptforge.merge.base import MERGE_METHODS, BaseMergeMethod, MergeParams, MergeResult, merge
from adaptforge.params import param

SLERP_URL = "https://arxiv.org/abs/2412.19512"


@dataclass(frozen=True, kw_only=True)
class SlerpParams(MergeParams):
    """``t``: the position on the arc from the base (0) to the fine-tuned weights (1). ``inner`` /
    ``inner_params``: the data-free merge that gives ``dW`` (``weights`` and ``scaling`` go to it). ``eps``:
    below this ``sin(theta)``, interpolate linearly. ``rank``: output rank per module (default: ``dW``'s)."""

    t: float = param(0.5, ge=0, le=1, help="position on the arc: 0 the base weights, 1 the fine-tuned weights")
    inner: str = param("task_arithmetic", help="the data-free merge giving the fine-tuned endpoint W0 + dW")
    inner_params: Mapping[str, Any] = param(default_factory=dict, help="params of the inner merge")
    eps: float = param(1e-6, gt=0, lt=1, help="below this sin(angle) (nearly colinear), interpolate linearly")

    def check(self) -> None:
        known = ", ".join(n for n in MERGE_METHODS.names() if _plain(n))
        self.require("inner", self.inner in MERGE_METHODS and _plain(self.inner), f"a data-free merge method ({known})")
        for key in ("weights", "scaling"):
            self.require("inner_params", key not in self.inner_params, f"without {key!r} (give it at the top level)")


def _plain(name: str) -> bool:
    cls = MERGE_METHODS.get(name)
    return not cls.needs_data and not cls.needs_base


def slerp_coefficients(w0: torch.Tensor, w1: torch.Tensor, t: float, eps: float) -> tuple[float, float, float]:
    """``(c0, c1, theta)`` with ``W(t) = c0 w0 + c1 w1`` on the arc between ``w0`` and ``w1`` (float64);
    ``(1 - t, t, theta)`` where ``sin(theta) < eps`` or either tensor is zero."""
    a, b = w0.double().flatten(), w1.double().flatten()
    na, nb = float(a.norm()), float(b.norm())
    if na == 0.0 or nb == 0.0:
        return 1.0 - t, t, 0.0
    theta = 2.0 * math.asin(min(1.0, float((a / na - b / nb).norm()) / 2.0))
    if math.sin(theta) < eps:
        return 1.0 - t, t, theta
    s = math.sin(theta)
    return math.sin((1.0 - t) * theta) / s, math.sin(t * theta) / s, theta


@MERGE_METHODS.register
class Slerp(BaseMergeMethod[SlerpParams]):
    """Spherical interpolation between the base and the fine-tuned weights of each module (pre/post-tuning
    merging, https://arxiv.org/abs/2412.19512); the delta to the base is SVD-truncated back to LoRA rank."""

    name = "slerp"
    reference_url = SLERP_URL

    def _merge_base(
        self, deltas: list[LoraDelta], weights: list[float], params: SlerpParams, base: Mapping[str, torch.Tensor]
    ) -> MergeResult:
        p = params
        inner = merge(p.inner, deltas, {**dict(p.inner_params), "weights": weights, "scaling": 1.0})
        modules: dict[str, LoraModule] = {}
        errors = dict(inner.reconstruction_error)
        angles, fallback, coefficients = [], 0, []
        for name in sorted(inner.delta.modules):
            module = inner.delta[name]
            w0 = base[name].detach().double()
            dw = module.dense().double()
            c0, c1, theta = slerp_coefficients(w0, w0 + dw, p.t, p.eps)
            angles.append(math.degrees(theta))
            fallback += math.sin(theta) < p.eps
            gamma = c0 + c1 - 1.0
            coefficients.append((c1, gamma))
            if gamma == 0.0:
                modules[name] = LoraModule(module.A, module.B, float(module.scale) * c1)
                continue
            rank = p.rank or module.rank
            out, error = dense_svd((gamma * w0 + c1 * dw).float(), rank)
            modules[name] = LoraModule(out.A.to(module.A.dtype), out.B.to(module.B.dtype), out.scale)
            errors[name] = error
        info = {
            "angle_degrees": _summary(angles),
            "fallback_modules": int(fallback),
            "c1": _summary([c for c, _ in coefficients]),
            "base_coefficient": _summary([g for _, g in coefficients]),
            "inner": {"method": p.inner, "info": {k: v for k, v in inner.info.items() if k not in ("method",)}},
        }
        return MergeResult(LoraDelta(modules), errors, info)


def _summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {"min": min(values), "mean": sum(values) / len(values), "max": max(values)}
