"""Length-bucketed batch orders, batches of an encoded split, and dynamic padding."""

from __future__ import annotations

import random

import pytest
import torch

from adaptforge.batching import Batch, EncodedSplit, batch_order, make_batch, pad


def random_lengths(n: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(1, 60) for _ in range(n)]


def flat(batches: list[list[int]]) -> list[int]:
    return [i for batch in batches for i in batch]


# ------------------------------------------------------------------------------------------ batch_order


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize(("n", "batch_size"), [(0, 4), (1, 4), (10, 3), (64, 8), (257, 16), (30, 100)])
def test_batch_order_covers_every_index_exactly_once(n: int, batch_size: int, shuffle: bool) -> None:
    gen = torch.Generator().manual_seed(1)
    batches = batch_order(random_lengths(n), batch_size, shuffle=shuffle, generator=gen, bucket_batches=2)
    assert sorted(flat(batches)) == list(range(n))
    assert all(1 <= len(b) <= batch_size for b in batches)
    assert len(batches) >= -(-n // batch_size)


def test_unshuffled_batches_are_sorted_by_length_with_ties_in_index_order() -> None:
    lengths = [5, 3, 9, 3, 1, 5, 7, 2, 9, 4]
    batches = batch_order(lengths, 3, shuffle=False)
    order = flat(batches)
    assert order == sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    assert [len(b) for b in batches] == [3, 3, 3, 1]
    assert [[lengths[i] for i in b] for b in batches] == [[1, 2, 3], [3, 4, 5], [5, 7, 9], [9]]


def test_unshuffled_order_ignores_the_generator() -> None:
    lengths = random_lengths(40)
    a = batch_order(lengths, 6, shuffle=False, generator=torch.Generator().manual_seed(0))
    b = batch_order(lengths, 6, shuffle=False, generator=torch.Generator().manual_seed(99))
    assert a == b


def test_shuffled_order_is_deterministic_for_a_seed_and_varies_across_seeds() -> None:
    lengths = random_lengths(200)

    def order(seed: int) -> list[list[int]]:
        return batch_order(lengths, 8, shuffle=True, generator=torch.Generator().manual_seed(seed), bucket_batches=5)

    assert order(7) == order(7)
    assert order(7) != order(8)
    assert order(7) != batch_order(lengths, 8, shuffle=False)


def test_shuffled_batches_are_length_sorted_inside_each_batch() -> None:
    """Examples of similar length share a batch: each batch is sorted by length within its bucket."""
    lengths = random_lengths(160, seed=3)
    batches = batch_order(lengths, 8, shuffle=True, generator=torch.Generator().manual_seed(0), bucket_batches=4)
    for batch in batches:
        batch_lengths = [lengths[i] for i in batch]
        assert batch_lengths == sorted(batch_lengths)


def test_bucketing_reduces_padding_compared_to_plain_shuffling() -> None:
    lengths = random_lengths(400, seed=5)
    gen = torch.Generator().manual_seed(0)
    bucketed = batch_order(lengths, 8, shuffle=True, generator=gen, bucket_batches=10)
    perm = torch.randperm(400, generator=torch.Generator().manual_seed(0)).tolist()
    plain = [perm[i : i + 8] for i in range(0, 400, 8)]

    def padding(batches: list[list[int]]) -> int:
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)

    assert padding(bucketed) < padding(plain) / 2


@pytest.mark.parametrize("batch_size", [0, -1])
def test_batch_order_refuses_a_batch_size_below_one(batch_size: int) -> None:
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        batch_order([1, 2, 3], batch_size, shuffle=False)


# ------------------------------------------------------------------------------------------ make_batch


def test_make_batch_takes_ids_and_targets_of_the_index() -> None:
    split = EncodedSplit(ids=((1, 2), (3,), (4, 5, 6), (7,)), targets=(0, 2, 1, 2))
    batch = make_batch(split, [2, 0, 3])
    assert isinstance(batch, Batch)
    assert batch.index == (2, 0, 3)
    assert batch.ids == ((4, 5, 6), (1, 2), (7,))
    assert batch.targets.dtype == torch.long
    assert batch.targets.tolist() == [1, 0, 2]


def test_encoded_split_lengths() -> None:
    split = EncodedSplit(ids=((1, 2), (3,), ()), targets=(0, 1, 0))
    assert len(split) == 3
    assert split.lengths() == [2, 1, 0]


# ------------------------------------------------------------------------------------------------- pad


def test_pad_right_pads_to_the_longest_with_a_mask() -> None:
    ids, mask = pad([(5, 6, 7), (8,), (9, 10)], pad_id=0)
    assert ids.shape == mask.shape == (3, 3)
    assert ids.dtype == mask.dtype == torch.long
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0], [9, 10, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0], [1, 1, 0]]


def test_pad_left_puts_every_sequence_at_the_end() -> None:
    ids, mask = pad([(5, 6, 7), (8,), (9, 10)], pad_id=99, left=True)
    assert ids.tolist() == [[5, 6, 7], [99, 99, 8], [99, 9, 10]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 1, 1]]


def test_pad_uses_the_given_pad_id_and_masks_it_even_when_it_is_a_real_token() -> None:
    ids, mask = pad([(3, 3), (3,)], pad_id=3)
    assert ids.tolist() == [[3, 3], [3, 3]]
    assert mask.tolist() == [[1, 1], [1, 0]]


def test_pad_of_an_empty_sequence_is_all_padding() -> None:
    ids, mask = pad([(), (4, 2)], pad_id=1)
    assert ids.tolist() == [[1, 1], [4, 2]]
    assert mask.tolist() == [[0, 0], [1, 1]]


def test_padded_batch_round_trips_to_the_original_ids() -> None:
    seqs = [tuple(range(1, n + 1)) for n in random_lengths(20, seed=2)]
    for left in (False, True):
        ids, mask = pad(seqs, pad_id=0, left=left)
        assert ids.shape == (20, max(len(s) for s in seqs))
        assert mask.sum(1).tolist() == [len(s) for s in seqs]
        assert [tuple(row[m.bool()].tolist()) for row, m in zip(ids, mask, strict=True)] == seqs
