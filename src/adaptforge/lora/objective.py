"""Losses of a LoRA mixture on labelled data: what every method that fits mixing coefficients minimises.

aTLAS merging, few-shot aTLAS and LoraHub composition all evaluate the cross-entropy of the frozen base
model plus a :class:`~adaptforge.lora.hooks.LoraMixture` on some examples; the pieces live here once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch

from adaptforge.batching import EncodedSplit, batch_order, make_batch
from adaptforge.core import LoraDelta
from adaptforge.lora.hooks import LoraMixture, eval_mode
from adaptforge.scorers import LabelInputs, Scorer
from adaptforge.tasks import Example, Task


def encode_examples(scorer: Scorer, task: Task, examples: Sequence[Example]) -> tuple[EncodedSplit, LabelInputs]:
    """Token ids of ``examples`` and of ``task``'s labels, encoded once per fit."""
    return scorer.encode(task, examples), scorer.encode_labels(task)


def encode_split(scorer: Scorer, task: Task, split: str, n: int | None, seed: int) -> EncodedSplit:
    """A label-stratified seeded sample of ``n`` examples of a split (``None``: all), encoded."""
    return scorer.encode(task, task.sample(split, n, seed=seed))


@contextlib.contextmanager
def mixture(scorer: Scorer, deltas: Sequence[LoraDelta], coefficients: torch.Tensor) -> Iterator[LoraMixture]:
    """The scorer's base model in eval mode (deterministic loss: no dropout) with ``sum_i c[m, i] dW_i``
    hooked into every target module; training mode and hooks restored after."""
    with eval_mode(scorer.backbone.model) as model, LoraMixture(model, deltas, coefficients) as mix:
        yield mix


def mean_loss(
    scorer: Scorer, model: torch.nn.Module, encoded: EncodedSplit, labels: LabelInputs, batch_size: int = 8
) -> torch.Tensor:
    """Mean loss over all ``encoded`` examples under ``model`` as it is (hooks included): cross-entropy per
    example, or for a generation scorer the NLL per response token (the SFT loss); label context computed
    once. Differentiable when gradients are enabled."""
    context = scorer.label_context(model, labels)
    total, count = torch.zeros(()), 0
    for index in batch_order(encoded.lengths(), batch_size, shuffle=False):
        batch_total, n = scorer.summed_loss(model, make_batch(encoded, index), context)
        total, count = total + batch_total, count + n
    return total / max(count, 1)


def accumulate_step(
    scorer: Scorer,
    model: torch.nn.Module,
    data: Sequence[tuple[EncodedSplit, LabelInputs]],
    orders: Sequence[list[int]],
    cursors: list[int],
    batch_size: int,
) -> float:
    """Backpropagate the mean over tasks of one batch loss per task and return it; the caller zeroes the
    gradients and steps the optimizer. Each task's batch is the next ``batch_size`` of its fixed shuffled
    ``orders[t]`` (``cursors`` advance), and is backpropagated before the next task's batch, so only one
    task's activations are in memory at a time. Shared by aTLAS merging and few-shot aTLAS composition."""
    total = 0.0
    for t, (encoded, labels) in enumerate(data):
        index = _next_batch(orders[t], cursors, t, batch_size)
        loss = scorer.loss(model, make_batch(encoded, index), labels) / len(data)
        loss.backward()
        total += float(loss.detach())
    return total


def _next_batch(order: list[int], cursors: list[int], t: int, size: int) -> list[int]:
    """The next ``size`` indices of a task's shuffled order, wrapping around (fixed order, no reshuffle)."""
    n = len(order)
    out = [order[(cursors[t] + j) % n] for j in range(min(size, n))]
    cursors[t] = (cursors[t] + len(out)) % n
    return out
