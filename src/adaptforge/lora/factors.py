"""LoRA factor algebra: stacking adapters' factors, exact weighted sums, and re-factoring to a rank.

Shared by merge, compose, generate and the runtime hooks (:mod:`adaptforge.lora.hooks`), so the
convention for scales and rank concatenation lives in one place.

From a weighted sum of LoRA modules (or a dense delta) back to one LoRA module:

``sum_i w_i s_i B_i A_i`` is exactly one LoRA module of rank ``R = sum_i r_i`` (rank concatenation).
To a smaller rank ``r`` it is re-factored by truncated SVD without forming the ``out x in`` matrix:
``B = Q_b R_b`` and ``A^T = Q_a R_a`` (thin QR), so ``B A = Q_b (R_b R_a^T) Q_a^T`` and only the small
``R x R`` core is decomposed. The relative Frobenius error of a rank-``r`` truncation follows from the
singular values: ``sqrt(sum_{i>r} s_i^2 / sum_i s_i^2)`` (Eckart-Young). The convention for the
factors matches PEFT's SVD merges: ``B = U_r diag(s_r)``, ``A = V_r^T``, scale 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from adaptforge.core import LoraDelta, LoraModule

_WORK = torch.float64  # QR and SVD run in float64; the factors are returned in float32


@dataclass(frozen=True)
class Stacked:
    """The factors of several adapters' modules side by side: ``A = vstack(s_i A_i)`` (scales folded in),
    ``B = hstack(B_i)`` and ``owner[j]``, the adapter of rank component ``j``; so
    ``B diag(g[owner]) A = sum_i g_i s_i B_i A_i`` for any per-adapter gate ``g``."""

    A: torch.Tensor
    B: torch.Tensor
    owner: torch.Tensor

    def to(self, dtype: torch.dtype) -> Stacked:
        return Stacked(self.A.to(dtype), self.B.to(dtype), self.owner)


def stack_modules(modules: Sequence[LoraModule]) -> Stacked:
    """Float32 stacked factors of ``modules`` (the one builder behind rank concatenation and the hooks)."""
    if not modules:
        raise ValueError("nothing to stack: no LoRA modules")
    A = torch.cat([m.A.float() * float(m.scale) for m in modules], dim=0)
    B = torch.cat([m.B.float() for m in modules], dim=1)
    owner = torch.cat([torch.full((m.rank,), i, dtype=torch.long) for i, m in enumerate(modules)])
    return Stacked(A, B, owner)


def concat_modules(modules: Sequence[LoraModule], weights: Sequence[float]) -> LoraModule:
    """Exact rank concatenation: ``A = vstack(w_i s_i A_i)``, ``B = hstack(B_i)``, scale 1, so that
    ``B @ A = sum_i w_i s_i B_i A_i`` with rank ``sum_i r_i`` (PEFT's ``cat``; task arithmetic,
    https://arxiv.org/abs/2212.04089)."""
    if len(modules) != len(weights) or not modules:
        raise ValueError(f"{len(weights)} weights for {len(modules)} modules")
    A = torch.cat([m.A.float() * (float(w) * float(m.scale)) for m, w in zip(modules, weights, strict=True)], dim=0)
    B = torch.cat([m.B.float() for m in modules], dim=1)
    return LoraModule(A=A, B=B, scale=1.0)


def fold(deltas: Sequence[LoraDelta], coefficients: torch.Tensor) -> LoraDelta:
    """The exact adapter of a coefficient matrix (modules x adapters, sorted module order): module ``m`` is
    ``sum_i c[m, i] dW_{i,m}`` by rank concatenation."""
    names = list(deltas[0])
    c = coefficients.detach().double()
    return LoraDelta(
        {name: concat_modules([d[name] for d in deltas], [float(v) for v in c[row]]) for row, name in enumerate(names)}
    )


def truncate(delta: LoraDelta, rank: int | None) -> tuple[LoraDelta, dict[str, float]]:
    """Re-factor every module to ``rank`` by SVD through QR of the factors (``None``: unchanged, exact);
    returns the adapter and each module's relative Frobenius error."""
    if rank is None:
        return delta, {}
    modules, errors = {}, {}
    for name in delta:
        modules[name], errors[name] = lowrank_svd(delta[name], rank)
    return LoraDelta(modules), errors


def truncation_error(singular_values: torch.Tensor, rank: int) -> float:
    """Relative Frobenius error ``||M - M_r|| / ||M||`` of keeping the top ``rank`` singular values (0 for M = 0)."""
    energy = singular_values.double().pow(2)
    total = float(energy.sum())
    return 0.0 if total == 0.0 else float(energy[rank:].sum() / total) ** 0.5


def _truncate(U: torch.Tensor, S: torch.Tensor, Vh: torch.Tensor, rank: int) -> tuple[LoraModule, float]:
    rank = max(1, min(rank, S.numel()))
    B = (U[:, :rank] * S[:rank]).float()
    A = Vh[:rank].float()
    return LoraModule(A=A.contiguous(), B=B.contiguous(), scale=1.0), truncation_error(S, rank)


def lowrank_svd(module: LoraModule, rank: int) -> tuple[LoraModule, float]:
    """Best rank-``rank`` LoRA module for ``s B A`` (truncated SVD through QR of the factors, never
    forming the dense ``out x in`` matrix), and its relative Frobenius error.

    ``B = Q_b R_b``, ``A^T = Q_a R_a``, ``R_b R_a^T = U S V^T``, so ``s B A = (Q_b U) (s S) (Q_a V)^T``.
    The output rank is ``min(rank, R, out, in)``: asking for more than the module holds is exact.
    """
    Qb, Rb = torch.linalg.qr(module.B.to(_WORK))
    Qa, Ra = torch.linalg.qr(module.A.to(_WORK).T)
    U, S, Vh = torch.linalg.svd((Rb @ Ra.T) * float(module.scale), full_matrices=False)
    return _truncate(Qb @ U, S, Vh @ Qa.T, rank)


def dense_svd(delta: torch.Tensor, rank: int) -> tuple[LoraModule, float]:
    """Best rank-``rank`` LoRA module for a dense ``out x in`` delta (truncated SVD), and its relative
    Frobenius error; used by methods whose merge is elementwise on dense ``dW`` (TIES, DARE, TALL).

    Computed from the eigendecomposition of the smaller Gram matrix (``M^T M = V S^2 V^T``, then
    ``B = M V_r``, ``A = V_r^T``; or ``M M^T`` when ``out < in``), which gives the same truncation as a
    full SVD (Eckart-Young) in a fraction of the time: only the kept directions are formed, and
    ``B = M V_r`` is the exact projection of ``M`` on them whatever the conditioning. The Gram matrix is
    formed in float32 and its leading eigenvectors found by :func:`top_eigenvectors`: an error in the
    kept directions moves the projection only at second order, within the 1e-5 parity with PEFT's full
    SVD. The error is measured on the residual ``M - B A`` itself (float32 eigenvalues cannot resolve a
    residual below ~3e-4 of ``||M||``).
    """
    if delta.ndim != 2:
        raise ValueError(f"a dense delta is a matrix, got shape {tuple(delta.shape)}")
    M = delta.float()
    out_dim, in_dim = M.shape
    rank = max(1, min(rank, out_dim, in_dim))
    if rank == min(out_dim, in_dim):  # full rank: M itself times an identity, exact and free
        eye = torch.eye(rank, dtype=M.dtype)
        B, A = (M, eye) if in_dim <= out_dim else (eye, M)
        return LoraModule(A=A.contiguous(), B=B.contiguous(), scale=1.0), 0.0
    if in_dim <= out_dim:
        V = top_eigenvectors(M.T @ M, rank)
        B, A = M @ V, V.T
    else:
        U = top_eigenvectors(M @ M.T, rank)
        rows = U.T @ M  # diag(s) V^T
        norms = rows.norm(dim=1, keepdim=True)
        A = torch.where(norms > 0, rows / norms.clamp(min=torch.finfo(M.dtype).tiny), torch.zeros_like(rows))
        B = U * norms.T
    module = LoraModule(A=A.contiguous(), B=B.contiguous(), scale=1.0)
    norm = float(M.norm())
    return module, 0.0 if norm == 0.0 else float(torch.dist(M, B @ A)) / norm


def top_eigenvectors(gram: torch.Tensor, rank: int, max_iter: int = 8, tol: float = 1e-9) -> torch.Tensor:
    """The ``rank`` leading eigenvectors (columns, eigenvalue descending, float32) of a symmetric PSD matrix.

    Block subspace iteration (Golub & Van Loan, "Matrix Computations", 4th ed., section 8.2.4) in float64 with a
    block of ``4 rank + 8`` columns from a fixed seed, squaring the matrix per step and Rayleigh-Ritz after
    each, stopped when every kept Ritz pair has ``||G v - l v|| <= tol * l_max``: the same subspace as a full
    eigendecomposition to that residual, at ``O(n^2 block)`` per step instead of ``O(n^3)``. A residual
    shrinks by about ``(l_block / l_rank)^2`` per step; when that rate says ``max_iter`` steps will not do,
    or the block is not much smaller than ``G``, ``torch.linalg.eigh`` decides instead.
    """
    n = gram.shape[0]
    block = min(n, 4 * rank + 8)
    if 3 * block <= n:
        G = gram.double()
        start = torch.randn(n, block, generator=torch.Generator().manual_seed(0), dtype=G.dtype)
        Q = torch.linalg.qr(G @ start).Q
        for step in range(max_iter):
            Q = torch.linalg.qr(G @ (G @ Q)).Q
            GQ = G @ Q
            values, vectors = torch.linalg.eigh(Q.T @ GQ)  # ascending
            kept = vectors[:, -rank:].flip(1)
            V, lam = Q @ kept, values[-rank:].flip(0)
            residual = float((GQ @ kept - V * lam).norm(dim=0).max())
            target = tol * float(values[-1])
            if residual <= target or float(values[-1]) <= 0:
                return V.float()
            rate = (float(values[0]) / float(lam[-1])) ** 2 if float(lam[-1]) > 0 else 1.0
            if rate >= 1 or (rate > 0 and math.log(target / residual) / math.log(rate) > max_iter - step - 1):
                break  # too slow a decay for the remaining budget
    return torch.linalg.eigh(gram).eigenvectors[:, -rank:].flip(1)
