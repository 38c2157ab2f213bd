"""Per-row LoRA mixtures: every row of one forward pass runs on its own merge of the same adapters.

A per-input router (DaWin, https://arxiv.org/abs/2410.03782) gives each input ``x`` its own coefficients, so
``x`` is scored by ``W + sum_i c_i(x) dW_i``. Rather than one forward per input, :class:`RowMixture` hooks
every target module once (:class:`~adaptforge.lora.hooks.GatedLora`: the adapters' factors stacked, two thin
matmuls per module) and gives each row of a forward the coefficient row :meth:`RowMixture.select` picked for
it. :func:`mixed_logits` is the one routed scoring path (``eval``, ``predict``, ``serve``, DaWin merges):
it lays out each scorer's rows so every row carries its input's coefficients:

* encoder: the label strings are embedded under each input's own model (as scoring that input alone does),
  so a chunk of inputs is two forwards: its ``inputs x labels`` label rows, then its texts; each input keeps
  the logits against its own label embeddings;
* causal LM: one forward per chunk, prompt-major (``CausalLMScorer.logits``), each input's coefficients
  repeated once per label.

Inputs are chunked by length as :func:`~adaptforge.evaluate.logits_of` chunks them, so the cost is that of
plain batched scoring plus the encoder's label rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from adaptforge.batching import batch_order, make_batch
from adaptforge.core import AdaptforgeError, LoraDelta
from adaptforge.lora.hooks import GatedLora, eval_mode
from adaptforge.scorers import CausalLMScorer, EncoderScorer, LabelInputs, Scorer
from adaptforge.tasks import Example, Task


class RowMixture(GatedLora):
    """A :class:`GatedLora` whose gate is one coefficient row per forward row: ``coefficients`` is
    ``entries x adapters``, and after ``select(entries)`` row ``j`` of the next forward adds
    ``sum_i coefficients[entries[j], i] dW_i`` at every target module. A forward whose row count differs
    from the selection is refused, so a scorer that lays out rows differently fails loudly."""

    def __init__(self, model: torch.nn.Module, deltas: Sequence[LoraDelta], coefficients: torch.Tensor) -> None:
        super().__init__(model, deltas, self._gate)
        if coefficients.ndim != 2 or coefficients.shape[1] != self.n_adapters:
            raise AdaptforgeError(
                f"row coefficients have shape {tuple(coefficients.shape)}; expected (rows, {self.n_adapters})"
            )
        self.coefficients = coefficients.detach().float()
        self._current = self.coefficients[:0]

    def select(self, entries: Sequence[int]) -> None:
        """Row ``j`` of the next forward uses coefficient row ``entries[j]``."""
        self._current = self.coefficients[torch.as_tensor(list(entries), dtype=torch.long)]

    def _gate(self, index: int, x: torch.Tensor) -> torch.Tensor:
        w = self._current
        if x.shape[0] != w.shape[0]:
            raise RuntimeError(f"per-row LoRA: a module got {x.shape[0]} rows, {w.shape[0]} were selected")
        return w.reshape(w.shape[0], *([1] * (x.dim() - 2)), w.shape[1])


@torch.no_grad()
def mixed_logits(
    scorer: Scorer,
    task: Task,
    deltas: Sequence[LoraDelta],
    examples: Sequence[Example],
    coefficients: torch.Tensor,
    batch_size: int = 64,
) -> torch.Tensor:
    """``[n, labels]`` logits of ``examples``, example ``j`` under ``W + sum_i coefficients[j, i] dW_i``
    (labels included, for the encoder), in batched forwards (see the module docstring)."""
    if tuple(coefficients.shape) != (len(examples), len(deltas)):
        raise AdaptforgeError(
            f"routing coefficients have shape {tuple(coefficients.shape)}; expected ({len(examples)}, {len(deltas)})"
        )
    if not isinstance(scorer, EncoderScorer | CausalLMScorer):
        raise AdaptforgeError(f"per-input routing has no row layout for scorer {type(scorer).__name__}")
    model = scorer.backbone.model
    encoded = scorer.encode(task, examples)
    labels = scorer.encode_labels(task)
    n_labels = len(labels.ids)
    out = torch.empty(len(examples), n_labels)
    with eval_mode(model), RowMixture(model, deltas, coefficients) as mixture:
        for index in batch_order(encoded.lengths(), batch_size, shuffle=False):
            batch = make_batch(encoded, index)
            per_label = [i for i in index for _ in range(n_labels)]  # input-major, each input's labels in order
            if isinstance(scorer, EncoderScorer):
                mixture.select(per_label)
                context = scorer.label_context(model, LabelInputs(labels.labels * len(index), labels.ids * len(index)))
                mixture.select(index)
                wide = scorer.logits(model, batch, context).view(len(index), len(index), n_labels)
                rows = torch.arange(len(index))
                out[index] = wide[rows, rows].float()  # each input against its own label embeddings
            else:
                mixture.select(per_label)  # the causal scorer's sequences: prompt-major, one per label
                out[index] = scorer.logits(model, batch, labels).float()
    return out
