"""``--pattern ffn``: remove whole feed-forward neurons, the same number in every block, so the result is a
smaller dense model that plain ``transformers`` loads from its config (``intermediate_size`` shrinks) and
that runs faster on CPU, unlike zeroed weights.

A neuron is one row of each input projection (BERT's ``intermediate.dense``; LLaMA's ``gate_proj`` and
``up_proj``) and one column of the output projection (``output.dense``; ``down_proj``). Its importance is
the sum of the method's weight importances over those rows and that column (the structured form of the
method's criterion, as in LLM-Pruner's neuron grouping, https://arxiv.org/abs/2305.11627).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from adaptforge.backbone import Backbone
from adaptforge.core import AdaptforgeError
from adaptforge.layers import layer_type, transposed_layers

# model_type -> (block prefix pattern, input projections, output projection), relative to the block
_FFN_LAYOUT = {
    "bert": ("encoder.layer.{i}.", ("intermediate.dense",), "output.dense"),
    "roberta": ("encoder.layer.{i}.", ("intermediate.dense",), "output.dense"),
    "llama": ("model.layers.{i}.mlp.", ("gate_proj", "up_proj"), "down_proj"),
    "mistral": ("model.layers.{i}.mlp.", ("gate_proj", "up_proj"), "down_proj"),
    "qwen2": ("model.layers.{i}.mlp.", ("gate_proj", "up_proj"), "down_proj"),
}


@dataclass(frozen=True)
class FfnBlock:
    """The names of one block's feed-forward projections."""

    inputs: tuple[str, ...]
    output: str


def ffn_blocks(backbone: Backbone) -> list[FfnBlock]:
    """Every block's feed-forward projections, in block order."""
    named = dict(backbone.model.named_modules())
    transposed = transposed_layers(backbone.model)
    if transposed:  # the surgery below builds nn.Linear layers
        raise AdaptforgeError(
            f"--pattern ffn supports nn.Linear layers only; {backbone.name} holds {len(transposed)} "
            f"{layer_type(named[transposed[0]])} layers (e.g. {transposed[0]!r}); use unstructured, 2:4 or 4:8"
        )
    layout = _FFN_LAYOUT.get(backbone.model_type)
    if layout is None:
        known = ", ".join(sorted(_FFN_LAYOUT))
        raise AdaptforgeError(
            f"--pattern ffn knows the feed-forward layout of {known}; {backbone.name} is {backbone.model_type!r}"
        )
    prefix, inputs, output = layout
    blocks = []
    i = 0
    while prefix.format(i=i) + output in named:
        p = prefix.format(i=i)
        blocks.append(FfnBlock(tuple(p + name for name in inputs), p + output))
        i += 1
    if not blocks:
        raise AdaptforgeError(f"{backbone.name}: found no feed-forward blocks to prune")
    return blocks


def neuron_scores(block: FfnBlock, importance: Callable[[str], torch.Tensor]) -> torch.Tensor:
    """Importance of each neuron of ``block``: its rows in the input projections plus its output column."""
    score = sum(importance(name).sum(dim=1) for name in block.inputs)
    return score + importance(block.output).sum(dim=0)


def shrink(backbone: Backbone, blocks: list[FfnBlock], keep: list[torch.Tensor]) -> int:
    """Replace every block's projections by smaller ``nn.Linear`` holding only the kept neurons (sorted
    indices, the same count in every block) and set the config's ``intermediate_size``; returns it."""
    width = {int(k.numel()) for k in keep}
    if len(width) != 1:
        raise AssertionError(f"ffn pruning keeps one width for all blocks, got {sorted(width)}")  # pragma: no cover
    model = backbone.model
    for block, index in zip(blocks, keep, strict=True):
        for name in block.inputs:
            old = model.get_submodule(name)
            new = torch.nn.Linear(old.in_features, len(index), bias=old.bias is not None, dtype=old.weight.dtype)
            with torch.no_grad():
                new.weight.copy_(old.weight[index])
                if old.bias is not None:
                    new.bias.copy_(old.bias[index])
            _replace(model, name, new)
        old = model.get_submodule(block.output)
        new = torch.nn.Linear(len(index), old.out_features, bias=old.bias is not None, dtype=old.weight.dtype)
        with torch.no_grad():
            new.weight.copy_(old.weight[:, index])
            if old.bias is not None:
                new.bias.copy_(old.bias)
        _replace(model, block.output, new)
    size = width.pop()
    model.config.intermediate_size = size
    model.requires_grad_(False)
    return size


def _replace(model: torch.nn.Module, name: str, module: torch.nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)
