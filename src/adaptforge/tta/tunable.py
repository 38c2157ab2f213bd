"""What a test-time method updates, as context managers that put the model back exactly on exit.

* :class:`NormAffine`: the task adapter added to the weights (``Backbone.applied``) and the affine
  parameters of every LayerNorm / RMSNorm made trainable (TENT's choice, https://arxiv.org/abs/2006.10726);
* :class:`AdapterFactors`: the task adapter's own LoRA factors, trained through forward hooks;
* :class:`FreshLora`: the task adapter added to the weights and a new low-rank delta on top (B = 0, so it
  starts as the task adapter), MOTIA's input-specific LoRA (https://arxiv.org/abs/2403.13745);
* :class:`Mixture`: aTLAS coefficients over several adapters (:class:`~adaptforge.lora.hooks.LoraMixture`).

Each can snapshot and restore its values (resets), and say which adapter it now amounts to
(:meth:`Tunable.delta`; ``None`` for norm parameters, which no LoRA adapter can hold).
"""

from __future__ import annotations

import contextlib
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any

import torch

from adaptforge.backbone import Backbone
from adaptforge.core import AdaptforgeError, LoraDelta, LoraModule
from adaptforge.lora.factors import concat_modules, fold
from adaptforge.lora.hooks import GatedLora, LoraMixture


class Tunable(ABC):
    """Trainable tensors hooked into (or written into) a model while entered; everything restored on exit."""

    def __init__(self) -> None:
        self._stack: contextlib.ExitStack | None = None

    @abstractmethod
    def parameters(self) -> list[torch.Tensor]:
        """The leaf tensors an optimizer updates (valid while entered)."""

    @abstractmethod
    def _enter(self, stack: contextlib.ExitStack) -> None:
        """Activate: register every undo on ``stack``."""

    def delta(self) -> LoraDelta | None:
        """The adapter the current values amount to, or ``None`` when no adapter can hold them."""
        return None

    def snapshot(self) -> list[torch.Tensor]:
        return [p.detach().clone() for p in self.parameters()]

    @torch.no_grad()
    def restore(self, values: Sequence[torch.Tensor]) -> None:
        for p, v in zip(self.parameters(), values, strict=True):
            p.copy_(v)

    def __enter__(self) -> Tunable:
        if self._stack is not None:
            raise AdaptforgeError(f"{type(self).__name__} is already active")
        with contextlib.ExitStack() as stack:
            self._enter(stack)
            self._stack = stack.pop_all()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._stack is not None:
            self._stack.close()
            self._stack = None


class LiveLora(GatedLora):
    """LoRA factors that train: :class:`~adaptforge.lora.hooks.GatedLora`'s hooks (same compatibility checks,
    same enter/exit), reading leaf tensors ``A``, ``B`` at call time instead of factors stacked once. Module
    ``m`` adds ``s_m * B_m (A_m x)`` to its output."""

    def __init__(self, model: torch.nn.Module, init: LoraDelta) -> None:
        super().__init__(model, [init], gate=lambda index, x: torch.ones(1))
        self.A = [init[name].A.detach().float().clone().requires_grad_(True) for name in self.modules]
        self.B = [init[name].B.detach().float().clone().requires_grad_(True) for name in self.modules]
        self.scales = [float(init[name].scale) for name in self.modules]

    def _hook(self, index: int) -> Any:
        def hook(module: torch.nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
            x = args[0]
            A, B = self.A[index].to(x.dtype), self.B[index].to(x.dtype)
            return output + ((x @ A.T) @ B.T) * self.scales[index]

        return hook

    def parameters(self) -> list[torch.Tensor]:
        return [*self.A, *self.B]

    def delta(self) -> LoraDelta:
        return LoraDelta(
            {
                name: LoraModule(A=a.detach().clone(), B=b.detach().clone(), scale=s)
                for name, a, b, s in zip(self.modules, self.A, self.B, self.scales, strict=True)
            }
        )


def norm_parameters(model: torch.nn.Module, where: Callable[[str], bool] | None = None) -> list[torch.Tensor]:
    """Affine parameters (weight, and bias when present) of every LayerNorm / RMSNorm (whose module path
    ``where`` accepts, when given), in module order."""
    out = []
    for path, module in model.named_modules():
        name = type(module).__name__
        if where is not None and not where(path):
            continue
        if isinstance(module, torch.nn.LayerNorm) or name.endswith(("LayerNorm", "RMSNorm")):
            for attr in ("weight", "bias"):
                p = getattr(module, attr, None)
                if isinstance(p, torch.nn.Parameter):
                    out.append(p)
    return out


def last_blocks(model: torch.nn.Module, n: int, name: str) -> Callable[[str], bool]:
    """Which module paths of ``model`` lie in its last ``n`` transformer blocks or after them (a final norm);
    every path when ``n`` is 0. The blocks are the longest ``nn.ModuleList`` (BERT's ``encoder.layer``,
    LLaMA's ``model.layers``, GPT-2's ``transformer.h``).

    Why: updating only there, the backward pass stops at the first of those blocks; nothing below them needs a
    gradient, so autograd records none of it. ``name`` is the model's name for the error."""
    if n == 0:
        return lambda path: True
    modules = list(model.named_modules())
    lists = [(len(m), path) for path, m in modules if isinstance(m, torch.nn.ModuleList)]
    if not lists:
        raise AdaptforgeError(f"last_blocks={n}: {name} has no list of transformer blocks (nn.ModuleList); use 0")
    size, stack = max(lists, key=lambda x: x[0])  # the first longest
    if n > size:
        raise AdaptforgeError(f"last_blocks={n}: {name} has {size} transformer blocks ({stack!r}); use 0 to {size}")
    order = [path for path, _ in modules]
    inside = tuple(f"{stack}.{i}." for i in range(size - n, size))
    after = max(i for i, path in enumerate(order) if path.startswith(f"{stack}.")) + 1
    later = set(order[after:])
    return lambda path: path.startswith(inside) or path in later


class NormAffine(Tunable):
    """The task adapter added to the base weights and the norm layers' affine parameters trained in place (every
    norm layer, or those of the last ``blocks`` blocks: :func:`last_blocks`); on exit their values and
    ``requires_grad`` flags are restored and the adapter taken out again."""

    def __init__(self, backbone: Backbone, adapter: LoraDelta, blocks: int = 0) -> None:
        super().__init__()
        self.backbone = backbone
        self.adapter = adapter
        self.blocks = blocks
        self._params: list[torch.Tensor] = []

    def _enter(self, stack: contextlib.ExitStack) -> None:
        model, name = self.backbone.model, self.backbone.name
        params = norm_parameters(model, last_blocks(model, self.blocks, name))
        if not params:
            where = f" in its last {self.blocks} blocks" if self.blocks else ""
            raise AdaptforgeError(f"update 'norm': {name} has no LayerNorm or RMSNorm layers{where}; use update 'lora'")
        stack.enter_context(self.backbone.applied(self.adapter))
        saved = [(p, p.detach().clone(), p.requires_grad) for p in params]

        @torch.no_grad()
        def put_back() -> None:
            for p, value, flag in saved:
                p.copy_(value)
                p.requires_grad_(flag)
                p.grad = None  # the session's gradients are not the base model's

        stack.callback(put_back)
        for p in params:
            p.requires_grad_(True)
        self._params = params
        stack.callback(self._params.clear)

    def parameters(self) -> list[torch.Tensor]:
        return list(self._params)


class AdapterFactors(Tunable):
    """The task adapter's LoRA factors, trained through hooks (the base weights are never written): every
    module's, or those in the last ``blocks`` blocks (:func:`last_blocks`; the others stay as they are)."""

    def __init__(self, model: torch.nn.Module, adapter: LoraDelta, blocks: int = 0, name: str = "the model") -> None:
        super().__init__()
        self.lora = LiveLora(model, adapter)
        within = last_blocks(model, blocks, name)
        self._trained = [i for i, module in enumerate(self.lora.modules) if within(module)]
        if not self._trained:
            raise AdaptforgeError(f"update 'lora': the adapter has no module in the last {blocks} blocks of {name}")
        for i in set(range(len(self.lora.modules))) - set(self._trained):
            self.lora.A[i].requires_grad_(False)
            self.lora.B[i].requires_grad_(False)

    def _enter(self, stack: contextlib.ExitStack) -> None:
        stack.enter_context(self.lora)

    def parameters(self) -> list[torch.Tensor]:
        return [*(self.lora.A[i] for i in self._trained), *(self.lora.B[i] for i in self._trained)]

    def delta(self) -> LoraDelta:
        return self.lora.delta()


def fresh_lora(like: LoraDelta, rank: int, alpha: float, generator: torch.Generator) -> LoraDelta:
    """A new LoRA on ``like``'s target modules that adds nothing yet (:func:`fresh_lora_on`)."""
    return fresh_lora_on({name: like[name].shape for name in like}, rank, alpha, generator)


def fresh_lora_on(
    shapes: Mapping[str, tuple[int, int]], rank: int, alpha: float, generator: torch.Generator
) -> LoraDelta:
    """A new LoRA on modules of weight shape ``(out, in)`` that adds nothing yet: ``A`` uniform in +-1/sqrt(in)
    (PEFT's Kaiming-uniform bound), ``B = 0``, scale ``alpha / rank``."""
    modules = {}
    for name, (out_dim, in_dim) in shapes.items():
        bound = 1.0 / math.sqrt(in_dim)
        A = (torch.rand(rank, in_dim, generator=generator) * 2 - 1) * bound
        modules[name] = LoraModule(A=A, B=torch.zeros(out_dim, rank), scale=alpha / rank)
    return LoraDelta(modules)


class FreshLora(Tunable):
    """The task adapter added to the base weights and a fresh low-rank delta (:func:`fresh_lora`) trained on
    top through hooks; :meth:`delta` is their exact sum (factors concatenated)."""

    def __init__(self, backbone: Backbone, adapter: LoraDelta, init: LoraDelta) -> None:
        super().__init__()
        self.backbone = backbone
        self.adapter = adapter
        self.lora = LiveLora(backbone.model, init)

    def _enter(self, stack: contextlib.ExitStack) -> None:
        stack.enter_context(self.backbone.applied(self.adapter))
        stack.enter_context(self.lora)

    def parameters(self) -> list[torch.Tensor]:
        return self.lora.parameters()

    def delta(self) -> LoraDelta:
        live = self.lora.delta()
        return LoraDelta({name: concat_modules([self.adapter[name], live[name]], [1.0, 1.0]) for name in live})


class Mixture(Tunable):
    """aTLAS coefficients ``c`` (modules x adapters) over ``deltas`` trained through a
    :class:`~adaptforge.lora.hooks.LoraMixture`; :meth:`delta` folds them into one exact adapter."""

    def __init__(self, model: torch.nn.Module, deltas: Sequence[LoraDelta], init: torch.Tensor) -> None:
        super().__init__()
        self.deltas = list(deltas)
        self.coefficients = init.detach().float().clone().requires_grad_(True)
        self.mixture = LoraMixture(model, self.deltas, self.coefficients)

    def _enter(self, stack: contextlib.ExitStack) -> None:
        stack.enter_context(self.mixture)

    def parameters(self) -> list[torch.Tensor]:
        return [self.coefficients]

    def delta(self) -> LoraDelta:
        return fold(self.deltas, self.coefficients)
