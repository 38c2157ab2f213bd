"""Tokenized splits and length-bucketed, dynamically padded batches.

Padding each batch only to its longest member, and grouping examples of similar length into the
same batch, is most of the training speed on short texts (tweets are ~30 tokens, not 128).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class EncodedSplit:
    """Token ids of each example (no padding) and the index of its gold label."""

    ids: tuple[tuple[int, ...], ...]
    targets: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.ids)

    def lengths(self) -> list[int]:
        return [len(x) for x in self.ids]


@dataclass(frozen=True)
class Batch:
    """Indices into an :class:`EncodedSplit` plus their gold labels as a tensor."""

    index: tuple[int, ...]
    ids: tuple[tuple[int, ...], ...]
    targets: torch.Tensor


def pad(seqs: Sequence[Sequence[int]], pad_id: int, left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad to the longest sequence; returns (input_ids, attention_mask)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if not s:
            continue
        if left:
            ids[i, width - len(s) :] = torch.tensor(s)
            mask[i, width - len(s) :] = 1
        else:
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
    return ids, mask


def batch_order(
    lengths: Sequence[int],
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
    bucket_batches: int = 50,
) -> list[list[int]]:
    """Split example indices into batches of similar length.

    With ``shuffle``, examples are permuted, cut into chunks of ``bucket_batches`` batches, sorted by
    length inside each chunk, batched, and the batches shuffled again: near-uniform padding with
    the randomness of ordinary shuffling kept across chunks. Without it, a global length sort
    (inference: fewest pad tokens).
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    n = len(lengths)
    if not shuffle:
        order = sorted(range(n), key=lambda i: (lengths[i], i))
        return [order[i : i + batch_size] for i in range(0, n, batch_size)]
    perm = torch.randperm(n, generator=generator).tolist()
    chunk = batch_size * bucket_batches
    batches: list[list[int]] = []
    for start in range(0, n, chunk):
        part = sorted(perm[start : start + chunk], key=lambda i: lengths[i])
        batches.extend(part[i : i + batch_size] for i in range(0, len(part), batch_size))
    shuffled = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in shuffled]


def make_batch(split: EncodedSplit, index: Sequence[int]) -> Batch:
    return Batch(
        index=tuple(index),
        ids=tuple(split.ids[i] for i in index),
        targets=torch.tensor([split.targets[i] for i in index], dtype=torch.long),
    )
