"""Per-row LoRA mixtures: every row of one forward pass runs on its own merge of the same adapters.

A per-input router (DaWin, https://arxiv.org/abs/2410.03782) gives each input ``x`` its own coefficients, so
``x`` is scored by ``W + sum_i c_i(x) dW_i``. Rather than one forward per input, :class:`RowMixture` hooks
every target module once (:class:`~adaptforge.lora.hooks.GatedLora`: the adapters' factors stacked, two thin
matmuls per module) and gives each row of a forward the coefficient row :meth:`RowMixture.select` picked for
it. :func:`mixed_logits` is the one routed scoring path (``eval``, ``predict``, ``serve``, DaWin merges):
it lays out each scorer's rows so every row carries its input's coefficients:

* encoder: the label strings are embedded under each input's own model (as scoring that input alone does):
  the ``inputs x labels`` label rows sorted by length (short rows, little padding), then the texts by chunk,
  each input keeping the logits against its own label embeddings;
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
        contexts = _label_contexts(scorer, model, mixture, labels, len(examples), batch_size)
        for index in batch_order(encoded.lengths(), batch_size, shuffle=False):
            batch = make_batch(encoded, index)
            if contexts is not None:
                mixture.select(index)
                wide = scorer.logits(model, batch, contexts[index].reshape(len(index) * n_labels, -1))
                rows = torch.arange(len(index))
                out[index] = wide.view(len(index), len(index), n_labels)[rows, rows].float()  # own labels only
            else:
                mixture.select([i for i in index for _ in range(n_labels)])  # prompt-major, one row per label
                out[index] = scorer.logits(model, batch, labels).float()
    return out


def _label_contexts(
    scorer: Scorer, model: torch.nn.Module, mixture: RowMixture, labels: LabelInputs, n: int, batch_size: int
) -> torch.Tensor | None:
    """The encoder's ``[n, labels, dim]`` label embeddings, each input's labels under its own coefficients: all
    ``n x labels`` label rows sorted by length (least padding), ``batch_size x labels`` rows per forward.
    ``None`` for the causal LM, whose label context needs no forward."""
    if not isinstance(scorer, EncoderScorer):
        return None
    n_labels = len(labels.ids)
    order = sorted(range(n * n_labels), key=lambda r: (len(labels.ids[r % n_labels]), r))
    contexts: torch.Tensor | None = None
    for start in range(0, len(order), batch_size * n_labels):
        part = order[start : start + batch_size * n_labels]
        mixture.select([r // n_labels for r in part])
        chunk = LabelInputs(
            tuple(labels.labels[r % n_labels] for r in part), tuple(labels.ids[r % n_labels] for r in part)
        )
        embedded = scorer.label_context(model, chunk)
        if contexts is None:
            contexts = embedded.new_empty(n, n_labels, embedded.shape[-1])
        rows = torch.tensor(part)
        contexts[rows // n_labels, rows % n_labels] = embedded
    return contexts  # None only for no inputs, when nothing is scored
