"""Scorers turn (texts, candidate labels) into logits, the same way for every task.

- :class:`EncoderScorer`: mean-pooled embedding of ``description + text`` against the embedding
  of each label string, cosine similarity divided by a temperature. Any label set works, so
  zero-shot on an unseen task is defined and adapters of different tasks can be merged.
- :class:`CausalLMScorer`: summed log-likelihood of each label continuation after a prompt built
  from the description and the text (as lm-evaluation-harness scores multiple choice).

Both are differentiable, so training minimises cross-entropy over the same logits that
evaluation takes the argmax of.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from adaptforge.backbone import Backbone
from adaptforge.batching import Batch, EncodedSplit, pad
from adaptforge.core import AdaptforgeError
from adaptforge.tasks import Example, Task


@dataclass(frozen=True)
class LabelInputs:
    """Token ids of each label string of one task, tokenized once."""

    labels: tuple[str, ...]
    ids: tuple[tuple[int, ...], ...]


class Scorer(ABC):
    """Interface shared by every scorer; ``model`` is the backbone's model or a PEFT wrap of it."""

    def __init__(self, backbone: Backbone, max_length: int = 128) -> None:
        self.backbone = backbone
        self.tokenizer = backbone.tokenizer
        self.max_length = max_length

    @abstractmethod
    def encode(self, task: Task, examples: Sequence[Example]) -> EncodedSplit:
        """Tokenize examples once; ids are the model input without the label."""

    @abstractmethod
    def encode_labels(self, task: Task) -> LabelInputs: ...

    @abstractmethod
    def label_context(self, model: torch.nn.Module, labels: LabelInputs) -> Any:
        """Whatever :meth:`logits` needs about the labels, computed once per batch (or per task at eval)."""

    @abstractmethod
    def logits(self, model: torch.nn.Module, batch: Batch, context: Any) -> torch.Tensor:
        """``[batch, n_labels]`` scores; higher is more likely."""

    @abstractmethod
    def embed_texts(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """Unit-norm sentence embeddings from the base model (task descriptions, retrieval)."""

    def loss(self, model: torch.nn.Module, batch: Batch, labels: LabelInputs) -> torch.Tensor:
        return F.cross_entropy(self.logits(model, batch, self.label_context(model, labels)), batch.targets)

    def summed_loss(self, model: torch.nn.Module, batch: Batch, context: Any) -> tuple[torch.Tensor, int]:
        """The loss of a batch summed over what it averages (examples here), and how many: what
        :func:`~adaptforge.lora.objective.mean_loss` adds up over a split."""
        return F.cross_entropy(self.logits(model, batch, context).float(), batch.targets, reduction="sum"), len(
            batch.ids
        )


def needs_causal(backbone: Backbone) -> str:
    """Why a generation task cannot run on an encoder, and what to pass instead."""
    return (
        f"generation tasks need a causal LM (--model smollm2, or a *ForCausalLM folder); {backbone.name} is an encoder"
    )


def classification_only(task: Task, what: str) -> None:
    """Refuse a generation task where only label scoring is defined, in one line that names both."""
    if task.generative:
        raise AdaptforgeError(
            f"{what} scores a label set (classification only); task {task.name!r} is a generation task"
        )


def _targets(task: Task, examples: Sequence[Example]) -> tuple[int, ...]:
    classification_only(task, "this method")
    index = {label: i for i, label in enumerate(task.labels)}
    unknown = sorted({e.label for e in examples} - set(index))
    if unknown:
        raise AdaptforgeError(f"task {task.name!r}: label(s) {unknown} are not among its labels {list(task.labels)}")
    return tuple(index[e.label] for e in examples)


def _mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


class EncoderScorer(Scorer):
    """Cosine similarity of text and label embeddings over a temperature (bi-encoder classification)."""

    def __init__(self, backbone: Backbone, max_length: int = 128, temperature: float = 0.05) -> None:
        super().__init__(backbone, max_length)
        if temperature <= 0:
            raise ValueError("temperature must be > 0")
        self.temperature = temperature

    def _tokenize(self, texts: Sequence[str]) -> list[tuple[int, ...]]:
        out = self.tokenizer(list(texts), truncation=True, max_length=self.max_length, add_special_tokens=True)
        return [tuple(x) for x in out["input_ids"]]

    def encode(self, task: Task, examples: Sequence[Example]) -> EncodedSplit:
        prefix = f"{task.description.strip()} " if task.description else ""
        return EncodedSplit(tuple(self._tokenize([prefix + e.text for e in examples])), _targets(task, examples))

    def encode_labels(self, task: Task) -> LabelInputs:
        return LabelInputs(tuple(task.labels), tuple(self._tokenize(task.labels)))

    def _embed(self, model: torch.nn.Module, ids: Sequence[Sequence[int]]) -> torch.Tensor:
        input_ids, mask = pad(ids, self.tokenizer.pad_token_id)
        hidden = model(input_ids=input_ids, attention_mask=mask).last_hidden_state
        return F.normalize(_mean_pool(hidden, mask), dim=-1)

    def label_context(self, model: torch.nn.Module, labels: LabelInputs) -> torch.Tensor:
        return self._embed(model, labels.ids)

    def logits(self, model: torch.nn.Module, batch: Batch, context: torch.Tensor) -> torch.Tensor:
        return self._embed(model, batch.ids) @ context.T / self.temperature

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        ids = self._tokenize(texts)
        parts = [self._embed(self.backbone.model, ids[i : i + batch_size]) for i in range(0, len(ids), batch_size)]
        return torch.cat(parts) if parts else torch.empty(0)


class CausalLMScorer(Scorer):
    """Log-likelihood of each label continuation after a prompt (multiple-choice scoring).

    Sequences are left-padded so every label ends at the last position; only the last
    ``max_label_len + 1`` positions go through the LM head, which keeps memory at
    ``batch x labels x label_len x vocab`` instead of the full sequence length.
    """

    PROMPT = "{description}\n\nInput: {text}\nAnswer:"

    def __init__(self, backbone: Backbone, max_length: int = 256, length_normalize: bool = False) -> None:
        super().__init__(backbone, max_length)
        self.length_normalize = length_normalize

    def encode(self, task: Task, examples: Sequence[Example]) -> EncodedSplit:
        head, tail = self.PROMPT.split("{text}")
        head_ids = self.tokenizer(head.format(description=task.description.strip()), add_special_tokens=True)[
            "input_ids"
        ]
        tail_ids = self.tokenizer(tail, add_special_tokens=False)["input_ids"]
        budget = max(1, self.max_length - len(head_ids) - len(tail_ids))
        texts = self.tokenizer([e.text for e in examples], add_special_tokens=False)["input_ids"]
        ids = tuple(tuple(head_ids + t[:budget] + tail_ids) for t in texts)
        return EncodedSplit(ids, _targets(task, examples))

    def encode_labels(self, task: Task) -> LabelInputs:
        ids = self.tokenizer([" " + label for label in task.labels], add_special_tokens=False)["input_ids"]
        return LabelInputs(tuple(task.labels), tuple(tuple(x) for x in ids))

    def label_context(self, model: torch.nn.Module, labels: LabelInputs) -> LabelInputs:
        return labels

    def logits(self, model: torch.nn.Module, batch: Batch, context: LabelInputs) -> torch.Tensor:
        n, n_labels = len(batch.ids), len(context.ids)
        seqs = [prompt + label for prompt in batch.ids for label in context.ids]
        input_ids, mask = pad(seqs, self.tokenizer.pad_token_id, left=True)
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        keep = max(len(label) for label in context.ids) + 1
        try:
            out = model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids, logits_to_keep=keep)
        except TypeError:  # models without logits_to_keep: slice afterwards
            out = model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids)
        logp = F.log_softmax(out.logits[:, -keep:-1].float(), dim=-1)  # predicts the last keep-1 tokens
        targets = input_ids[:, -(keep - 1) :]
        token_logp = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        lengths = torch.tensor([len(label) for label in context.ids]).repeat(n)
        positions = torch.arange(keep - 1).expand(len(seqs), -1)
        label_mask = positions >= (keep - 1 - lengths).unsqueeze(-1)
        scores = (token_logp * label_mask).sum(-1)
        if self.length_normalize:
            scores = scores / lengths
        return scores.view(n, n_labels)

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str], batch_size: int = 16) -> torch.Tensor:
        parts = []
        ids = [tuple(x) for x in self.tokenizer(list(texts), truncation=True, max_length=self.max_length)["input_ids"]]
        for i in range(0, len(ids), batch_size):
            input_ids, mask = pad(ids[i : i + batch_size], self.tokenizer.pad_token_id)
            # the base model's last hidden state is the LM's hidden_states[-1]; output_hidden_states would make
            # transformers hook every layer of the shared model for the rest of the process
            hidden = self.backbone.model.base_model(input_ids=input_ids, attention_mask=mask).last_hidden_state
            parts.append(F.normalize(_mean_pool(hidden, mask), dim=-1))
        return torch.cat(parts) if parts else torch.empty(0)


def make_scorer(
    backbone: Backbone, max_length: int | None = None, temperature: float = 0.05, generative: bool = False
) -> Scorer:
    """The scorer of a backbone; ``generative``: for generation tasks (supervised fine-tuning, causal LMs only)."""
    if generative:
        from adaptforge.generation import SFTScorer  # the generation module builds on this one

        if backbone.kind != "causal":
            raise AdaptforgeError(needs_causal(backbone))
        return SFTScorer(backbone, max_length=max_length or 256)
    if backbone.kind == "causal":
        return CausalLMScorer(backbone, max_length=max_length or 256)
    return EncoderScorer(backbone, max_length=max_length or 128, temperature=temperature)


def describe(scorer: Scorer, task: Task) -> np.ndarray:
    """Embedding of a task's description and label set: what the catalog stores with an adapter, what
    retrieval ranks by and what the generator is conditioned on."""
    text = f"{task.description} Labels: {', '.join(task.labels)}." if task.labels else task.description
    return scorer.embed_texts([text])[0].numpy().astype(np.float32)
