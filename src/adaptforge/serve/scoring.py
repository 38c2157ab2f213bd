"""Scoring rows that each carry their own adapter selection, through the scorers' public calls.

A *selection* is whatever decides the LoRA term of a forward's rows: the gathered adapters of
:class:`~adaptforge.serve.batched.MixedLora` (per-input routers score through :mod:`adaptforge.lora.rows`, whose
:class:`~adaptforge.lora.rows.RowMixture` has the same interface). ``select(entries)``: model row ``i`` of the next
forward uses entry ``entries[i]``. The functions here only have to know how each scorer lays out its rows:

* the encoder scores ``embed(description + text) . embed(label) / T``, and ``adaptforge eval`` embeds the labels
  under the same adapter as the text, so each (adapter, labels) group's label embeddings are computed once with
  that group's selection (and cached: they do not depend on the text), then one forward embeds every text row
  and each row keeps the columns of its own group;
* the causal LM scores each (prompt, label) sequence, prompt-major (``CausalLMScorer.logits``), so a group of
  rows sharing a label set is one forward with each row's selection repeated once per label.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field

import torch

from adaptforge.batching import Batch
from adaptforge.core import AdaptforgeError
from adaptforge.lora.hooks import eval_mode
from adaptforge.scorers import CausalLMScorer, EncoderScorer, LabelInputs, Scorer
from adaptforge.serve.cache import Lru
from adaptforge.tasks import Example, Task

Select = Callable[[Sequence[int]], None]


@dataclass(frozen=True)
class Head:
    """What rows are scored against: a task's description and label set (tokenized once), as the scorer
    sees a task. ``key`` identifies it in caches."""

    task: Task
    labels: LabelInputs = field(compare=False)

    @property
    def key(self) -> tuple[str, str, tuple[str, ...]]:
        return (self.task.name, self.task.description, self.task.labels)

    @classmethod
    def build(cls, scorer: Scorer, name: str, description: str, labels: Sequence[str]) -> Head:
        task = Task(name, description, tuple(labels), {})
        return cls(task, scorer.encode_labels(task))

    def encode(self, scorer: Scorer, texts: Sequence[str]) -> list[tuple[int, ...]]:
        """Model input ids of ``texts`` for this head (the description prefix or prompt included)."""
        dummy = self.task.labels[0]  # encode needs a label per example; it is not part of the input
        return list(scorer.encode(self.task, [Example(t, dummy) for t in texts]).ids)


@dataclass(frozen=True)
class ScoreRow:
    """One text to classify: its ids for ``head``, the selection ``entry`` it uses, and ``label_key``, the
    cache identity of its label embeddings under that selection (``None``: a selection used once, not cached)."""

    ids: tuple[int, ...]
    head: Head
    entry: int
    label_key: Hashable | None


def _batch(ids: Sequence[tuple[int, ...]]) -> Batch:
    return Batch(tuple(range(len(ids))), tuple(ids), torch.zeros(len(ids), dtype=torch.long))


def _chunks(order: Sequence[int], size: int) -> list[list[int]]:
    return [list(order[i : i + size]) for i in range(0, len(order), size)]


@torch.no_grad()
def classify(
    scorer: Scorer,
    model: torch.nn.Module,
    select: Select,
    rows: Sequence[ScoreRow],
    chunk: int,
    label_cache: Lru[Hashable, torch.Tensor] | None = None,
) -> list[torch.Tensor]:
    """Logits (one tensor of ``len(head.labels)`` per row, in order) of every row under its own selection;
    forwards hold at most ``chunk`` rows (texts sorted by length, as ``adaptforge eval`` batches them)."""
    with eval_mode(model):
        if isinstance(scorer, EncoderScorer):
            return _classify_encoder(scorer, model, select, rows, chunk, label_cache)
        if isinstance(scorer, CausalLMScorer):
            return _classify_causal(scorer, model, select, rows, chunk)
    raise AdaptforgeError(f"serving has no row layout for scorer {type(scorer).__name__}")


def _classify_encoder(
    scorer: EncoderScorer,
    model: torch.nn.Module,
    select: Select,
    rows: Sequence[ScoreRow],
    chunk: int,
    label_cache: Lru[Hashable, torch.Tensor] | None,
) -> list[torch.Tensor]:
    group_of = [(r.label_key if r.label_key is not None else ("row", i), r.head.key) for i, r in enumerate(rows)]
    contexts: dict[Hashable, torch.Tensor] = {}
    missing: dict[Hashable, ScoreRow] = {}
    for group, row in zip(group_of, rows, strict=True):
        if group in contexts or group in missing:
            continue
        cached = label_cache.get(group) if label_cache is not None and row.label_key is not None else None
        if cached is not None:
            contexts[group] = cached
        else:
            missing[group] = row
    # label rows of every missing group: one forward per chunk, each label row with its group's selection
    label_rows = [(group, row.entry, ids) for group, row in missing.items() for ids in row.head.labels.ids]
    parts = []
    for part in _chunks(range(len(label_rows)), chunk):
        select([label_rows[i][1] for i in part])
        ids = tuple(label_rows[i][2] for i in part)
        parts.append(scorer.label_context(model, LabelInputs(tuple(str(i) for i in part), ids)))
    if parts:
        embedded = torch.cat(parts)
        start = 0
        for group, row in missing.items():
            n = len(row.head.labels.ids)
            contexts[group] = embedded[start : start + n]
            start += n
            if label_cache is not None and row.label_key is not None:
                label_cache.put(group, contexts[group])
    out: list[torch.Tensor] = [torch.empty(0)] * len(rows)
    order = sorted(range(len(rows)), key=lambda i: (len(rows[i].ids), i))
    for part in _chunks(order, chunk):
        groups = list(dict.fromkeys(group_of[i] for i in part))
        offsets, start = {}, 0
        for group in groups:
            offsets[group] = start
            start += contexts[group].shape[0]
        select([rows[i].entry for i in part])
        logits = scorer.logits(model, _batch([rows[i].ids for i in part]), torch.cat([contexts[g] for g in groups]))
        for j, i in enumerate(part):
            begin = offsets[group_of[i]]
            out[i] = logits[j, begin : begin + len(rows[i].head.labels.ids)].float()
    return out


def _classify_causal(
    scorer: CausalLMScorer, model: torch.nn.Module, select: Select, rows: Sequence[ScoreRow], chunk: int
) -> list[torch.Tensor]:
    out: list[torch.Tensor] = [torch.empty(0)] * len(rows)
    by_head: dict[Hashable, list[int]] = {}
    for i, row in enumerate(rows):
        by_head.setdefault(row.head.key, []).append(i)
    for members in by_head.values():
        head = rows[members[0]].head
        n_labels = len(head.labels.ids)
        order = sorted(members, key=lambda i: (len(rows[i].ids), i))
        for part in _chunks(order, max(1, chunk // n_labels)):
            select([rows[i].entry for i in part for _ in range(n_labels)])  # prompt-major: row i, then its labels
            logits = scorer.logits(model, _batch([rows[i].ids for i in part]), head.labels)
            for j, i in enumerate(part):
                out[i] = logits[j].float()
    return out


@torch.no_grad()
def embed(
    scorer: Scorer, model: torch.nn.Module, select: Select, texts: Sequence[str], entries: Sequence[int], chunk: int
) -> torch.Tensor:
    """``[n, dim]`` unit-norm embeddings of ``texts`` (the scorer's ``embed_texts``), row ``i`` under
    ``entries[i]``; forwards of at most ``chunk`` texts."""
    with eval_mode(model):
        parts = []
        for part in _chunks(range(len(texts)), chunk):
            select([entries[i] for i in part])
            parts.append(scorer.embed_texts([texts[i] for i in part], batch_size=len(part)))
    return torch.cat(parts)
