"""The fast paths of the merge algebra against their slow definitions: threshold trim vs sort, and the
Gram-matrix truncated SVD vs ``torch.linalg.svd`` (wide, tall, rank-deficient, ties at the threshold)."""

from __future__ import annotations

import pytest
import torch

from adaptforge.lora.factors import dense_svd, truncation_error
from adaptforge.merge.ops import keep_count, magnitude_trim


@pytest.mark.parametrize("density", [0.05, 0.2, 0.5, 0.9])
def test_trim_matches_sorting(density):
    x = torch.randn(37, 23, generator=torch.Generator().manual_seed(0))
    k = keep_count(x.numel(), density)
    order = x.reshape(-1).abs().argsort(descending=True)[:k]
    expected = torch.zeros(x.numel())
    expected[order] = x.reshape(-1)[order]
    assert torch.equal(magnitude_trim(x, density), expected.reshape(x.shape))


def test_trim_keeps_exactly_k_with_ties_in_index_order():
    x = torch.tensor([1.0, -2.0, 2.0, 2.0, -2.0, 0.5])
    assert torch.equal(magnitude_trim(x, 0.5), torch.tensor([0.0, -2.0, 2.0, 2.0, 0.0, 0.0]))
    assert torch.count_nonzero(magnitude_trim(torch.ones(10), 0.3)) == 3
    assert torch.count_nonzero(magnitude_trim(torch.ones(10), 0.05)) == 0  # floor(0.5) = 0 entries


@pytest.mark.parametrize("shape", [(40, 12), (12, 40), (25, 25)])
@pytest.mark.parametrize("true_rank", [3, 12])
def test_gram_svd_matches_the_full_svd(shape, true_rank):
    g = torch.Generator().manual_seed(1)
    m = torch.randn(shape[0], true_rank, generator=g, dtype=torch.float64) @ torch.randn(
        true_rank, shape[1], generator=g, dtype=torch.float64
    )
    singular = torch.linalg.svdvals(m)
    for rank in (1, 3, 8):
        module, err = dense_svd(m, rank)
        U, S, Vh = torch.linalg.svd(m, full_matrices=False)
        best = (U[:, :rank] * S[:rank]) @ Vh[:rank]
        torch.testing.assert_close(module.dense().double(), best, rtol=1e-5, atol=1e-5 * float(S[0]))
        assert err == pytest.approx(truncation_error(singular, rank), rel=1e-5, abs=1e-6)  # float32 residual
        assert (
            torch.allclose(
                module.A.double() @ module.A.double().T, torch.eye(module.rank, dtype=torch.float64), atol=1e-5
            )
            or true_rank < rank
        )  # A = V_r^T has orthonormal rows (PEFT's convention)


@pytest.mark.parametrize("decay", ["low_rank_plus_noise", "flat"])
def test_block_iteration_gives_the_full_svd_truncation(monkeypatch, decay):
    """Large enough for the subspace iteration (n >= 3 x block): a fast-decaying spectrum (a sum of LoRA deltas
    plus small full-rank noise) converges in it; a flat one falls back to eigh. Both give the SVD's truncation."""
    import adaptforge.lora.factors as factors

    g = torch.Generator().manual_seed(3)
    m = torch.randn(300, 150, generator=g)
    if decay != "flat":
        m = torch.randn(300, 24, generator=g) @ torch.randn(24, 150, generator=g) + 0.01 * m
    sizes = []
    eigh = torch.linalg.eigh
    monkeypatch.setattr(torch.linalg, "eigh", lambda x: sizes.append(x.shape[0]) or eigh(x))
    for matrix in (m, m.T):
        module, err = factors.dense_svd(matrix, 8)
        U, S, Vh = torch.linalg.svd(matrix.double(), full_matrices=False)
        best = (U[:, :8] * S[:8]) @ Vh[:8]
        torch.testing.assert_close(module.dense().double(), best, rtol=1e-5, atol=1e-5 * float(S[0]))
        assert err == pytest.approx(truncation_error(S, 8), rel=1e-4)
    assert (150 in sizes) == (decay == "flat")  # the full eigendecomposition only as the fallback


def test_dense_of_a_full_rank_module_skips_the_identity_factor():
    from adaptforge.core import LoraModule

    m = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(LoraModule(A=torch.eye(4), B=m, scale=2.0).dense(), 2.0 * m)
    assert torch.equal(LoraModule(A=m, B=torch.eye(6), scale=1.0).dense(), m)
    square = torch.eye(4) + 0.5
    torch.testing.assert_close(LoraModule(A=square, B=m, scale=1.0).dense(), m @ square)


@pytest.mark.parametrize("sign_method", [None, "total", "count"])
def test_combining_one_task_at_a_time_equals_the_stacked_combine(sign_method):
    from adaptforge.merge.ops import combine, combine_each

    g = torch.Generator().manual_seed(0)
    tensors = [magnitude_trim(torch.randn(50, 30, generator=g), 0.3) for _ in range(4)]
    tensors.append(torch.zeros(50, 30))  # an all-zero task never agrees
    weights = [0.7, -0.4, 1.3, 0.2, 5.0]
    before = [t.clone() for t in tensors]
    assert torch.equal(combine_each(tensors, weights, sign_method), combine(torch.stack(tensors), weights, sign_method))
    assert all(torch.equal(a, b) for a, b in zip(tensors, before, strict=True))  # inputs untouched


@pytest.mark.parametrize("kind", ["gaussian", "many_ties", "mostly_zeros"])
def test_sampled_selection_is_the_exact_kth_largest(kind):
    """From 2^16 entries the threshold comes from a sampled bracket (or the full selection when it misses)."""
    from adaptforge.merge.ops import kth_largest

    g = torch.Generator().manual_seed(2)
    x = torch.randn(100_000, generator=g)
    if kind == "many_ties":
        x = torch.round(x * 3)
    elif kind == "mostly_zeros":
        x = torch.where(torch.rand(100_000, generator=g) < 0.9, torch.zeros(100_000), x)
    mag = x.abs()
    ordered = mag.sort(descending=True).values
    for k in (1, 2, 5_000, 20_000, 50_000, 99_999, 100_000):
        assert kth_largest(mag, k).item() == ordered[k - 1].item()
    for density in (0.05, 0.2, 0.5):
        keep = keep_count(mag.numel(), density)
        first = mag.argsort(descending=True, stable=True)[:keep]  # ties: the first by index
        expected = torch.zeros_like(x)
        expected[first] = x[first]
        assert torch.equal(magnitude_trim(x, density), expected)
