"""LoRA at run time: adapters added to a frozen model's outputs through forward hooks, never into its weights.

Inside :class:`GatedLora`, every target ``nn.Linear`` computes

    y = W x + sum_i g_i(x) * s_i * B_i (A_i x)

with the factors of each module stacked once (:func:`~adaptforge.lora.factors.stack_modules`), so a
module costs two thin matmuls whatever the number of adapters. The gate ``g`` says who decides the mix:

* :class:`LoraMixture`: a coefficient matrix ``c`` (modules x adapters), the same for every input; it is
  the only tensor that may require gradients, which is what aTLAS (https://arxiv.org/abs/2407.18242) and
  LoraHub's search need, and a row broadcast over modules is DaWin's per-input interpolation
  (https://arxiv.org/abs/2410.03782);
* Arrow's router (:mod:`adaptforge.compose.arrow`): per token, from the module's input.

:func:`eval_mode` is the one way to run a model deterministically (no dropout) and give it back in the
mode it was in, whatever happens inside.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import Any

import torch

from adaptforge.adapters import check_compatible
from adaptforge.core import AdaptforgeError, LoraDelta
from adaptforge.lora.factors import Stacked, stack_modules

Gate = Callable[[int, torch.Tensor], torch.Tensor]  # (module index, module input) -> [..., adapters] weights


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """``model`` in eval mode for the block; its training flag is restored on exit, also after an error."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


class GatedLora:
    """Context manager adding ``sum_i g_i(x) dW_{i,m} x`` to each target module ``m``'s output.

    ``modules`` lists the target modules in sorted order (the row order of coefficient matrices); ``gate``
    is called at every forward with the module's index and input and returns one weight per adapter
    (broadcast over the input's leading dimensions).
    """

    def __init__(self, model: torch.nn.Module, deltas: Sequence[LoraDelta], gate: Gate) -> None:
        if not deltas:
            raise AdaptforgeError("a LoRA mixture needs at least one adapter")
        self.modules: list[str] = list(deltas[0])
        for i, delta in enumerate(deltas):
            if list(delta) != self.modules:
                raise AdaptforgeError(f"adapter {i} targets other modules than adapter 0; mix adapters of one kind")
            check_compatible(delta, model, what=f"adapter {i}")
        self.model = model
        self.n_adapters = len(deltas)
        self.gate = gate
        named = dict(model.named_modules())
        self._targets = [named[name] for name in self.modules]
        self._factors: list[Stacked] = [
            stack_modules([d[name] for d in deltas]).to(target.weight.dtype)
            for name, target in zip(self.modules, self._targets, strict=True)
        ]
        self._handles: list[Any] = []

    def _hook(self, index: int) -> Any:
        f = self._factors[index]

        def hook(module: torch.nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
            x = args[0].to(f.A.dtype)
            weight = self.gate(index, x).to(f.A.dtype)[..., f.owner]  # one weight per rank component
            return output + ((x @ f.A.T) * weight) @ f.B.T

        return hook

    def __enter__(self) -> GatedLora:
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


class LoraMixture(GatedLora):
    """A :class:`GatedLora` whose gate is a coefficient matrix ``c`` (modules x adapters): module ``m`` adds
    ``sum_i c[m, i] dW_{i,m}``. ``coefficients`` may be replaced between forward passes (same shape) or be a
    leaf tensor with ``requires_grad``; the hooks read it at call time. Its exact adapter is
    :func:`~adaptforge.lora.factors.fold`."""

    def __init__(self, model: torch.nn.Module, deltas: Sequence[LoraDelta], coefficients: torch.Tensor) -> None:
        super().__init__(model, deltas, lambda index, x: self.coefficients[index])
        self._check(coefficients)
        self.coefficients = coefficients

    def _check(self, coefficients: torch.Tensor) -> None:
        expected = (len(self.modules), self.n_adapters)
        if tuple(coefficients.shape) != expected:
            raise AdaptforgeError(
                f"coefficients have shape {tuple(coefficients.shape)}; expected (modules, adapters) = {expected}"
            )

    def set_coefficients(self, coefficients: torch.Tensor) -> None:
        self._check(coefficients)
        self.coefficients = coefficients
