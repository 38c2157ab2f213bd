"""What a LoRA target layer is: ``nn.Linear``, or the transposed ``Conv1D`` of GPT-2-style models.

``transformers.pytorch_utils.Conv1D`` (GPT-2, GPT-J's ancestors, DistilGPT-2, ...) computes ``x @ W + b``
with ``W`` stored ``(in, out)``, the transpose of ``nn.Linear``'s ``(out, in)``. LoRA factors mean the same
on both: ``A`` is ``r x in`` and ``B`` is ``out x r`` (PEFT's ``lora_A``/``lora_B`` are ``nn.Linear`` layers
whatever the base layer; its ``fan_in_fan_out=True`` only transposes ``dW`` before adding it to a
``Conv1D`` weight). So a :class:`~adaptforge.core.LoraDelta` is always in ``(out, in)`` terms, hooks on a
layer's input and output need no change, and only code that reads or writes a base weight must go through
:func:`weight_view`, the one place that knows the layout.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from transformers.pytorch_utils import Conv1D

LAYER_TYPES: tuple[type[torch.nn.Module], ...] = (torch.nn.Linear, Conv1D)


def is_lora_layer(module: torch.nn.Module) -> bool:
    """A layer LoRA can target: ``nn.Linear`` or GPT-2's ``Conv1D``."""
    return isinstance(module, LAYER_TYPES)


def is_transposed(module: torch.nn.Module) -> bool:
    """The layer stores its weight ``(in, out)`` (PEFT's ``fan_in_fan_out`` case)."""
    return isinstance(module, Conv1D)


def lora_layers(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Every layer of ``model`` LoRA can target, by module path."""
    return {name: m for name, m in model.named_modules() if is_lora_layer(m)}


def weight_view(module: torch.nn.Module) -> torch.Tensor:
    """The layer's weight as ``(out, in)``: the weight itself for ``nn.Linear``, its transpose (a view, so
    in-place writes such as ``add_`` or ``mul_`` reach the layer) for ``Conv1D``."""
    return module.weight.T if is_transposed(module) else module.weight


def base_weights(model: torch.nn.Module, modules: Iterable[str]) -> dict[str, torch.Tensor]:
    """The ``(out, in)`` weights (:func:`weight_view`, detached) of the named layers of ``model``: what merge
    methods that read the base (SLERP) take; a name the model lacks is left out (the method says which)."""
    named = dict(model.named_modules())
    return {name: weight_view(named[name]).detach() for name in modules if name in named}


def layer_type(module: torch.nn.Module) -> str:
    """A short name of the layer type for messages (``Conv1D`` says it is the GPT-2 transposed kind)."""
    if is_transposed(module):
        return "Conv1D (GPT-2 style, weight stored in x out)"
    return type(module).__name__


def transposed_layers(model: torch.nn.Module, names: list[str] | None = None) -> list[str]:
    """The module paths (of ``names``, or all) that are ``Conv1D`` layers."""
    named = dict(model.named_modules())
    return [n for n in (names if names is not None else list(named)) if n in named and is_transposed(named[n])]


def mostly_transposed(model: torch.nn.Module, names: list[str]) -> bool:
    """PEFT's ``fan_in_fan_out`` for LoRA on ``names``: true when most of them are ``Conv1D`` layers.

    One flag covers a whole PEFT config; PEFT corrects it per layer (with a warning) when a config mixes
    layer kinds, so the majority decides and the usual single-kind adapter loads without a warning.
    """
    return 2 * len(transposed_layers(model, names)) > len(names)
