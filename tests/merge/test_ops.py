"""Merge tensor ops and LoRA re-factoring on toy tensors with hand-computed answers, and input validation."""

from __future__ import annotations

import pytest
import torch

from adaptforge.core import AdaptforgeError, LoraDelta, LoraModule
from adaptforge.lora.factors import concat_modules, dense_svd, lowrank_svd, truncation_error
from adaptforge.merge import MERGE_METHODS, TiesParams, merge
from adaptforge.merge.ops import (
    agreement_mask,
    combine,
    consensus_mask,
    disjoint_mean,
    elect_sign,
    keep_count,
    magnitude_trim,
    random_drop,
    sparsify_merge,
    tall_masks,
    weighted_sum,
)

T = torch.tensor


# Three task tensors of three entries: column sums -2, 1, 1; sign counts +1, -1, -1.
TASKS = T([[1.0, -2.0, 3.0], [2.0, -1.0, -1.0], [-5.0, 4.0, -1.0]])


def test_magnitude_trim_keeps_the_largest_entries():
    x = T([[3.0, -1.0], [0.5, -4.0]])
    assert torch.equal(magnitude_trim(x, 0.5), T([[3.0, 0.0], [0.0, -4.0]]))
    assert torch.equal(magnitude_trim(x, 0.25), T([[0.0, 0.0], [0.0, -4.0]]))
    assert torch.equal(magnitude_trim(x, 1.0), x)
    assert keep_count(100, 0.29) == 29 and keep_count(10, 0.7) == 7 and keep_count(3, 0.1) == 0


def test_random_drop_is_seeded_and_rescales():
    x = torch.full((20_000,), 2.0)
    a = random_drop(x, 0.25, torch.Generator().manual_seed(3))
    b = random_drop(x, 0.25, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert set(a.unique().tolist()) == {0.0, 8.0}  # kept entries are divided by the density
    assert (a != 0).float().mean().item() == pytest.approx(0.25, abs=0.01)
    assert a.mean().item() == pytest.approx(2.0, rel=0.05)  # unbiased
    assert set(random_drop(x, 0.25, torch.Generator().manual_seed(3), rescale=False).unique().tolist()) == {0.0, 2.0}
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    assert torch.equal(random_drop(x, 1.0, g), x) and torch.equal(g.get_state(), state)  # density 1 draws nothing


def test_sign_election_by_total_mass_and_by_count():
    assert torch.equal(elect_sign(TASKS, "total"), T([-1.0, 1.0, 1.0]))
    assert torch.equal(elect_sign(TASKS, "count"), T([1.0, -1.0, -1.0]))
    assert torch.equal(elect_sign(T([[0.0], [0.0]])), T([1.0]))  # ties elect +1
    with pytest.raises(ValueError, match="frequency"):
        elect_sign(TASKS, "frequency")  # type: ignore[arg-type]


def test_disjoint_mean_averages_only_agreeing_tasks():
    mask = agreement_mask(TASKS, T([-1.0, 1.0, 1.0]))
    assert torch.equal(mask, T([[False, False, True], [False, False, False], [True, True, False]]))
    assert torch.equal(disjoint_mean(TASKS, mask), T([-5.0, 4.0, 3.0]))
    count_mask = agreement_mask(TASKS, elect_sign(TASKS, "count"))
    assert torch.equal(disjoint_mean(TASKS, count_mask), T([1.5, -1.5, -1.0]))
    zeros = T([[0.0], [2.0]])  # a zero never agrees, so it does not dilute the mean
    assert torch.equal(disjoint_mean(zeros, agreement_mask(zeros, elect_sign(zeros))), T([2.0]))
    nobody = T([[1.0], [-1.0]])
    assert torch.equal(disjoint_mean(nobody, torch.zeros(2, 1, dtype=torch.bool)), T([0.0]))


def test_weighted_sum_and_weighted_disjoint_mean():
    assert torch.equal(weighted_sum(TASKS, [1.0, 0.5, -1.0]), T([7.0, -6.5, 3.5]))
    # The sign is elected on the unweighted tensors, the mean is taken over the weighted ones.
    assert torch.equal(combine(TASKS, [2.0, 1.0, 1.0], "total"), T([-5.0, 4.0, 6.0]))
    with pytest.raises(ValueError, match="2 weights for 3"):
        weighted_sum(TASKS, [1.0, 1.0])


def test_ties_on_toy_tensors():
    tasks = T([[4.0, -1.0, 0.5, -3.0], [-2.0, 3.0, 1.0, -0.1]])
    # trim to 2 of 4 -> [4,0,0,-3], [-2,3,0,0]; total [2,3,0,-3] elects [+,+,+,-]; disjoint mean:
    assert torch.equal(sparsify_merge(tasks, [1.0, 1.0], "magnitude", 0.5, "total"), T([4.0, 3.0, 0.0, -3.0]))
    assert torch.equal(sparsify_merge(tasks, [1.0, 1.0]), T([2.0, 2.0, 1.5, -3.1]))  # plain task arithmetic


def test_tall_masks_and_consensus():
    tau = T([[1.0, 2.0, -1.0], [1.0, -0.5, 3.0]])
    masks = tall_masks(tau, tau.sum(0), lam=1.0)
    # task 1: |tau_1| >= |tau_2| -> [1>=1, 2>=0.5, 1>=3]; task 2: |tau_2| >= |tau_1|.
    assert torch.equal(masks, T([[True, True, False], [True, False, True]]))
    assert torch.equal(consensus_mask(masks, 2), T([True, False, False]))
    assert torch.equal(consensus_mask(masks, 1), T([True, True, True]))
    assert torch.equal(tall_masks(tau, tau.sum(0), lam=0.0), torch.ones(2, 3, dtype=torch.bool))


def _modules(seed: int = 0) -> list[LoraModule]:
    g = torch.Generator().manual_seed(seed)
    return [
        LoraModule(torch.randn(r, 24, generator=g), torch.randn(20, r, generator=g), s)
        for r, s in ((4, 2.0), (8, 0.5), (2, -1.0))
    ]


def test_rank_concatenation_is_the_exact_weighted_sum():
    mods, weights = _modules(), [0.7, -1.2, 2.0]
    cat = concat_modules(mods, weights)
    dense = sum(w * m.dense() for w, m in zip(weights, mods, strict=True))
    assert cat.rank == 14 and cat.scale == 1.0
    torch.testing.assert_close(cat.dense(), dense, rtol=1e-5, atol=1e-5)


def test_lowrank_svd_without_the_dense_matrix():
    cat = concat_modules(_modules(), [0.7, -1.2, 2.0])
    dense = cat.dense().double()
    full, err = lowrank_svd(cat, 14)
    assert err == pytest.approx(0.0, abs=1e-6)
    assert ((full.dense().double() - dense).norm() / dense.norm()).item() < 1e-5
    for rank in (1, 5, 9):
        low, err = lowrank_svd(cat, rank)
        assert low.rank == rank
        actual = ((low.dense().double() - dense).norm() / dense.norm()).item()
        assert err == pytest.approx(actual, rel=1e-4)
        assert err == pytest.approx(truncation_error(torch.linalg.svdvals(dense), rank), rel=1e-6)
    assert lowrank_svd(cat, 100)[0].rank == 14  # never more than the module holds


def test_dense_svd_and_its_error():
    g = torch.Generator().manual_seed(1)
    dense = torch.randn(12, 7, generator=g, dtype=torch.float64)
    full, err = dense_svd(dense, 7)
    assert err == pytest.approx(0.0, abs=1e-7) and full.rank == 7
    torch.testing.assert_close(full.dense().double(), dense, rtol=1e-5, atol=1e-5)
    low, err = dense_svd(dense, 3)
    assert err == pytest.approx(((low.dense().double() - dense).norm() / dense.norm()).item(), rel=1e-4)
    zero, err = dense_svd(torch.zeros(4, 5), 2)
    assert err == 0.0 and torch.count_nonzero(zero.dense()) == 0
    assert truncation_error(T([3.0, 4.0]), 1) == pytest.approx(0.8)


# ---------------------------------------------------------------- validation: clear errors, nothing computed


def _delta(shapes: dict[str, tuple[int, int]], rank: int = 2) -> LoraDelta:
    return LoraDelta({n: LoraModule(torch.randn(rank, i), torch.randn(o, rank), 1.0) for n, (o, i) in shapes.items()})


@pytest.fixture
def no_compute(monkeypatch):
    def boom(self):
        raise AssertionError("dense delta computed before validation finished")

    monkeypatch.setattr(LoraModule, "dense", boom)


@pytest.mark.parametrize("method", MERGE_METHODS.names())
def test_invalid_inputs_raise_before_computing(method, no_compute):
    a = _delta({"q": (4, 6), "v": (4, 6)})
    with pytest.raises(AdaptforgeError, match="empty"):
        merge(method, [])
    with pytest.raises(AdaptforgeError, match=r"adapters 0 and 1 target different modules.*lacks \['v'\]"):
        merge(method, [a, _delta({"q": (4, 6)})])
    with pytest.raises(AdaptforgeError, match=r"module 'v': adapter 0 has delta shape \(4, 6\) but adapter 2"):
        merge(method, [a, a, _delta({"q": (4, 6), "v": (4, 7)})])
    with pytest.raises(AdaptforgeError, match="3 weights for 2 adapters"):
        merge(method, [a, a], {"weights": [1, 1, 1]})
    with pytest.raises(AdaptforgeError, match=rf"merge method '{method}': unknown parameter 'wieghts'.*'weights'"):
        merge(method, [a, a], {"wieghts": [1, 1]})


@pytest.mark.parametrize("density", [0.0, -0.1, 1.5, "0.5", float("nan")])
def test_density_outside_the_unit_interval_is_rejected(density):
    for method in ("ties", "dare_ties", "magnitude_prune_factors"):
        with pytest.raises(AdaptforgeError, match=r"'density' must be .*in \(0, 1\]"):
            MERGE_METHODS.get(method)().parse_params({"density": density})


def test_params_are_typed_frozen_and_strict():
    params = TiesParams.from_dict({"weights": [1, 2], "density": 0.3})
    assert params.weights == (1.0, 2.0) and params.to_dict()["weights"] == [1.0, 2.0]
    with pytest.raises(AdaptforgeError, match="Did you mean 'density'"):
        TiesParams.from_dict({"densty": 0.3})
    with pytest.raises(AdaptforgeError, match="'count' here"):
        TiesParams(majority_sign="frequency")  # type: ignore[arg-type]
    with pytest.raises(AdaptforgeError, match="'rank' must be >= 1"):
        TiesParams(rank=0)
    with pytest.raises(AdaptforgeError, match="unknown parameter 'seed'"):
        merge("ties", [_delta({"q": (4, 6)})], {"seed": 1})  # DARE's seed means nothing to TIES
    with pytest.raises(AdaptforgeError, match="takes TiesParams"):
        merge("ties", [_delta({"q": (4, 6)})], MERGE_METHODS.get("dare_ties").params_type())
    with pytest.raises(AdaptforgeError, match="min_agree=3 but only 2 adapters"):
        merge("tall", [_delta({"q": (4, 6)})] * 2, {"min_agree": 3})
    with pytest.raises(AdaptforgeError, match="Did you mean 'ties'"):
        MERGE_METHODS.get("tie")


DATA_FREE = [n for n in MERGE_METHODS.names() if not MERGE_METHODS.get(n).needs_data]  # data ones: test_merge_data


@pytest.mark.parametrize("method", DATA_FREE)
def test_different_ranks_are_accepted(method):
    a, b = _delta({"q": (8, 6)}, rank=2), _delta({"q": (8, 6)}, rank=5)
    base = {"q": torch.randn(8, 6)} if MERGE_METHODS.get(method).needs_base else None
    result = merge(method, [a, b], base=base)
    assert result.delta["q"].shape == (8, 6)
    assert result.info["method"] == method and "params" in result.info
