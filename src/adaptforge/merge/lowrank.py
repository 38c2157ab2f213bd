"""A weighted mixture of LoRA adapters applied in low-rank form, with coefficients that can be learned.

Inside :class:`LoraMixture`, every target ``nn.Linear`` of the (frozen) base model computes

    y = W x + sum_i c[m, i] * s_i * B_i (A_i x)

through a forward hook, with the factors of module ``m`` concatenated once
(``A = vstack(s_i A_i)``, ``B = hstack(B_i)``), so one module costs two thin matmuls whatever the
number of adapters. The coefficient matrix ``c`` (modules x adapters) is the only thing that may
require gradients, which is what aTLAS needs (https://arxiv.org/abs/2407.18242): a learned
coefficient per block per adapter with base and adapters frozen. Setting ``c`` to one row broadcast
over modules gives the per-input interpolation of DaWin (https://arxiv.org/abs/2410.03782).

The merged delta of a coefficient matrix is exact in LoRA form: module ``m`` is the rank
concatenation with weights ``c[m, :]`` (see :func:`fold`).
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Any

import torch

from adaptforge.adapters import check_compatible
from adaptforge.core import AdaptforgeError, LoraDelta, LoraModule
from adaptforge.merge.refactor import concat_modules


class LoraMixture:
    """Context manager adding ``sum_i c[m, i] dW_{i,m}`` to each target module's output, in low-rank form.

    ``modules`` lists the target modules in the row order of ``coefficients`` (sorted names). The
    ``coefficients`` attribute may be replaced between forward passes (same shape) or be a leaf
    tensor with ``requires_grad``; the hooks read it at call time.
    """

    def __init__(self, model: torch.nn.Module, deltas: Sequence[LoraDelta], coefficients: torch.Tensor) -> None:
        if not deltas:
            raise AdaptforgeError("a LoRA mixture needs at least one adapter")
        self.modules: list[str] = list(deltas[0])
        for i, delta in enumerate(deltas):
            if list(delta) != self.modules:
                raise AdaptforgeError(f"adapter {i} targets other modules than adapter 0; mix adapters of one kind")
            check_compatible(delta, model, what=f"adapter {i}")
        self.model = model
        self.n_adapters = len(deltas)
        self.coefficients = coefficients
        self._check(coefficients)
        named = dict(model.named_modules())
        self._targets = [named[name] for name in self.modules]
        self._factors: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        for name, target in zip(self.modules, self._targets, strict=True):
            parts = [d[name] for d in deltas]
            weight = target.weight
            A = torch.cat([m.A.float() * float(m.scale) for m in parts]).to(weight.dtype)
            B = torch.cat([m.B.float() for m in parts], dim=1).to(weight.dtype)
            owner = torch.cat([torch.full((m.rank,), i, dtype=torch.long) for i, m in enumerate(parts)])
            self._factors.append((A, B, owner))
        self._handles: list[Any] = []

    def _check(self, coefficients: torch.Tensor) -> None:
        expected = (len(self.modules), self.n_adapters)
        if tuple(coefficients.shape) != expected:
            raise AdaptforgeError(
                f"coefficients have shape {tuple(coefficients.shape)}; expected (modules, adapters) = {expected}"
            )

    def set_coefficients(self, coefficients: torch.Tensor) -> None:
        self._check(coefficients)
        self.coefficients = coefficients

    def _hook(self, index: int) -> Any:
        A, B, owner = self._factors[index]

        def hook(module: torch.nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
            x = args[0]
            gate = self.coefficients[index].to(A.dtype)[owner]  # one coefficient per rank component
            return output + ((x.to(A.dtype) @ A.T) * gate) @ B.T

        return hook

    def __enter__(self) -> LoraMixture:
        if self._handles:
            raise AdaptforgeError("this LoRA mixture is already active")
        self._handles = [m.register_forward_hook(self._hook(i)) for i, m in enumerate(self._targets)]
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def fold(deltas: Sequence[LoraDelta], coefficients: torch.Tensor) -> LoraDelta:
    """The exact LoRA adapter of a mixture: module ``m`` is ``sum_i c[m, i] dW_{i,m}`` by rank concatenation."""
    names = list(deltas[0])
    c = coefficients.detach().double()
    modules: dict[str, LoraModule] = {}
    for row, name in enumerate(names):
        modules[name] = concat_modules([d[name] for d in deltas], [float(v) for v in c[row]])
    return LoraDelta(modules)
