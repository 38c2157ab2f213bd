"""The in-context task vector: the base model's hidden state over k demonstrations of a task, averaged.

ICM-LoRA (Shao et al. 2025, https://arxiv.org/abs/2501.17635; reference ``ICL/last_time_step_icl.py``) hooks
the last layer of the base model while it reads demonstrations of the task and keeps the last time step's
hidden state, averaged over about 30 examples. Here a demonstration is the input exactly as the scorer
formats it (description + text for the encoder; the causal LM's prompt) followed by its label, and the vector
is the scorer's own reading of it: for the encoder the mean-pooled, normalised last hidden state (what it
scores with); for a causal LM the last token's last-layer hidden state. Description-only conditioning
(``description_vector``) reads ``description + label names`` the same way, for a task with no examples.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from adaptforge.batching import pad
from adaptforge.core import AdaptforgeError
from adaptforge.scorers import CausalLMScorer, EncoderScorer, Scorer
from adaptforge.tasks import Example, Task

_BATCH = 16


def demonstration_ids(scorer: Scorer, task: Task, examples: Sequence[Example]) -> list[list[int]]:
    """Token ids of each example as the scorer formats its input, followed by its label's tokens."""
    missing = [i for i, e in enumerate(examples) if e.label is None or str(e.label) not in task.labels]
    if missing:
        e = examples[missing[0]]
        raise AdaptforgeError(
            f"demonstration {missing[0] + 1} of task {task.name!r} has label {e.label!r}, not one of "
            f"{list(task.labels)}; every demonstration needs a label from the task's label set"
        )
    inputs = scorer.encode(task, examples).ids
    labels = dict(zip(task.labels, scorer.encode_labels(task).ids, strict=True))
    if isinstance(scorer, EncoderScorer):  # [CLS] input [SEP] + [CLS] label [SEP] -> [CLS] input label [SEP]
        return [list(x[:-1]) + list(labels[str(e.label)][1:]) for x, e in zip(inputs, examples, strict=True)]
    return [list(x) + list(labels[str(e.label)]) for x, e in zip(inputs, examples, strict=True)]


@torch.no_grad()
def read_vectors(scorer: Scorer, ids: Sequence[Sequence[int]]) -> torch.Tensor:
    """``[n, d]``: the encoder's pooled embedding, or a causal LM's last-token last-layer hidden state."""
    model = scorer.backbone.model
    parts = []
    for i in range(0, len(ids), _BATCH):
        chunk = ids[i : i + _BATCH]
        if isinstance(scorer, CausalLMScorer):
            input_ids, mask = pad(chunk, scorer.tokenizer.pad_token_id, left=True)
            position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
            # the base model's last hidden state, not output_hidden_states (see CausalLMScorer.embed_texts)
            out = model.base_model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids)
            parts.append(out.last_hidden_state[:, -1].float())
        else:
            input_ids, mask = pad(chunk, scorer.tokenizer.pad_token_id)
            hidden = model(input_ids=input_ids, attention_mask=mask).last_hidden_state
            pooled = (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
            parts.append(F.normalize(pooled.float(), dim=-1))
    return torch.cat(parts)


def task_vector(scorer: Scorer, task: Task, examples: Sequence[Example]) -> np.ndarray:
    """The mean hidden state over the demonstrations ``examples`` (at least one)."""
    if not examples:
        raise AdaptforgeError(f"task {task.name!r}: no demonstrations given for the in-context task vector")
    return read_vectors(scorer, demonstration_ids(scorer, task, examples)).mean(0).numpy().astype(np.float32)


def description_vector(scorer: Scorer, task: Task) -> np.ndarray:
    """Description-only condition: ``description Labels: a, b.`` read like one demonstration's input."""
    text = f"{task.description} Labels: {', '.join(task.labels)}."
    ids = scorer.tokenizer([text], truncation=True, max_length=scorer.max_length)["input_ids"]
    return read_vectors(scorer, [list(ids[0])])[0].numpy().astype(np.float32)
