"""Task arithmetic, TIES and DARE as settings of one generalized task-arithmetic merge.

A method is a choice of sparsification (none, magnitude trim, random drop-and-rescale), sign
consensus (none, or elect a sign and take the disjoint mean) and the space it works in:

- ``dense``: on each module's ``dW_i = s_i B_i A_i``, built one module at a time; the merged ``dW``
  goes back to LoRA by truncated SVD to ``rank`` (default: the largest input rank of that module),
  and the relative Frobenius error is reported. Without sparsification or consensus (task
  arithmetic) the sum is formed exactly by rank concatenation instead, and is SVD-truncated through
  QR of the factors (no dense matrix) only when ``rank`` is given.
- ``factors``: on ``A_i`` and ``B_i`` separately, as PEFT's factor-space combination types do. With
  ``c_i = w_i s_i``: ``A = op(sign(c_i) sqrt|c_i| A_i)``, ``B = op(sqrt|c_i| B_i)``; note
  ``(sum B)(sum A) != sum B A``, so this is an approximation of the weighted sum by design. The output
  rank is the largest input rank (smaller factors are zero-padded, which leaves ``dW_i`` unchanged);
  ``rank`` truncates it by SVD through QR of the factors.

Random drops draw from one ``torch.Generator`` seeded with ``seed``, consumed module by module in
sorted module order and, per module, adapter by adapter (in factor space: all A's, then all B's).
Papers: task arithmetic https://arxiv.org/abs/2212.04089, TIES https://arxiv.org/abs/2306.01708,
DARE https://arxiv.org/abs/2311.03099.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from adaptforge.core import LoraDelta, LoraModule
from adaptforge.lora.factors import concat_modules, dense_svd, lowrank_svd
from adaptforge.merge.base import MERGE_METHODS, MP, MergeMethod, MergeParams, MergeResult
from adaptforge.merge.ops import SignMethod, Sparsify, combine, combine_each, sparsify
from adaptforge.params import param

TASK_ARITHMETIC_URL = "https://arxiv.org/abs/2212.04089"
TIES_URL = "https://arxiv.org/abs/2306.01708"
DARE_URL = "https://arxiv.org/abs/2311.03099"


def _density(default: float, what: str) -> float:
    return param(default, gt=0, le=1, help=what)  # type: ignore[no-any-return]


def _sign() -> str:
    return param(  # type: ignore[no-any-return]
        "total",
        choices=("total", "count"),
        hints={"frequency": "PEFT's 'frequency' is 'count' here"},
        help="elect each entry's sign by total mass (TIES) or by count of signs",
    )


@dataclass(frozen=True, kw_only=True)
class MagnitudeParams(MergeParams):
    """Adds ``density``: the fraction of entries of each task tensor kept by magnitude (TIES uses 0.2)."""

    density: float = _density(0.2, "fraction of each task tensor's entries kept, by magnitude")


@dataclass(frozen=True, kw_only=True)
class TiesParams(MagnitudeParams):
    """Adds ``majority_sign``: elect the sign by ``total`` mass (TIES) or by ``count`` of signs."""

    majority_sign: str = _sign()


@dataclass(frozen=True, kw_only=True)
class DareParams(MergeParams):
    """Adds ``density`` (probability of keeping an entry; kept entries are divided by it) and ``seed``."""

    density: float = _density(0.5, "probability of keeping an entry (kept entries are divided by it)")
    seed: int = param(0, help="seed of the random drops")


@dataclass(frozen=True, kw_only=True)
class DareTiesParams(DareParams):
    """DARE's drop-and-rescale followed by TIES's sign election (``majority_sign``: ``total`` or ``count``)."""

    majority_sign: str = _sign()


@dataclass(frozen=True)
class Knobs:
    """The params fields the family's knobs read: the kept fraction, the sign rule, the seed of random drops."""

    density: float = 1.0
    majority_sign: str = "total"  # a params choice: "total" or "count"
    seed: int = 0


class GeneralizedTaskArithmetic(MergeMethod[MP]):
    """One implementation for the whole family; subclasses choose the class attributes below (the knobs) and
    read the fields those need from their own params in :meth:`knobs`."""

    sparsify: ClassVar[Sparsify] = "none"
    sign_consensus: ClassVar[bool] = False
    space: ClassVar[Literal["dense", "factors"]] = "dense"

    @classmethod
    def required_fields(cls) -> tuple[str, ...]:
        needs: tuple[str, ...] = ("density",) if cls.sparsify != "none" else ()
        needs += ("seed",) if cls.sparsify == "random" else ()
        return needs + (("majority_sign",) if cls.sign_consensus else ())

    def knobs(self, params: MP) -> Knobs:
        """The knob values of ``params`` (no sparsification, no sign election: none to read)."""
        return Knobs()

    def _merge(self, deltas: list[LoraDelta], weights: list[float], params: MP) -> MergeResult:
        knobs = self.knobs(params)
        density = knobs.density
        sign: SignMethod | None = None
        if self.sign_consensus:
            sign = "count" if knobs.majority_sign == "count" else "total"
        generator = None
        if self.sparsify == "random":
            generator = torch.Generator().manual_seed(knobs.seed)
        modules: dict[str, LoraModule] = {}
        errors: dict[str, float] = {}
        for name in deltas[0]:  # sorted module order; one module x N adapters in memory at a time
            inputs = [d[name] for d in deltas]
            if self.space == "factors":
                module = self._merge_factors(inputs, weights, density, sign, generator)
                if params.rank is not None:
                    module, errors[name] = lowrank_svd(module, params.rank)
            elif self.sparsify == "none" and sign is None:
                module = concat_modules(inputs, weights)
                if params.rank is not None:
                    module, errors[name] = lowrank_svd(module, params.rank)
            else:
                # one adapter at a time (draws in adapter order, as one draw for the stack would be);
                # DARE rescales once after combining, which is homogeneous in the inputs
                rescale = self.sparsify == "random" and density < 1
                sparse = [sparsify(m.dense(), self.sparsify, density, generator, rescale=False) for m in inputs]
                merged = combine_each(sparse, weights, sign)
                if rescale:
                    merged /= density
                module, errors[name] = dense_svd(merged, params.rank or max(m.rank for m in inputs))
            modules[name] = module
        return MergeResult(LoraDelta(modules), errors, {"space": self.space})

    def _merge_factors(
        self,
        inputs: list[LoraModule],
        weights: list[float],
        density: float,
        sign: SignMethod | None,
        generator: torch.Generator | None,
    ) -> LoraModule:
        coef = [w * float(m.scale) for w, m in zip(weights, inputs, strict=True)]
        weights_a = [math.copysign(math.sqrt(abs(c)), c) for c in coef]
        weights_b = [math.sqrt(abs(c)) for c in coef]
        rank = max(m.rank for m in inputs)
        # Sparsify each factor at its own size, A's first, then pad to the common rank with zeros.
        sparse_a = [_pad(sparsify(m.A.float(), self.sparsify, density, generator), rank, 0) for m in inputs]
        sparse_b = [_pad(sparsify(m.B.float(), self.sparsify, density, generator), rank, 1) for m in inputs]
        A = combine(torch.stack(sparse_a), weights_a, sign)
        B = combine(torch.stack(sparse_b), weights_b, sign)
        return LoraModule(A=A.contiguous(), B=B.contiguous(), scale=1.0)


def _pad(x: torch.Tensor, rank: int, dim: int) -> torch.Tensor:
    """Zero rows (``dim=0``, for A) or columns (``dim=1``, for B) up to ``rank``: ``B A`` is unchanged."""
    missing = rank - x.shape[dim]
    if missing == 0:
        return x
    shape = (missing, x.shape[1]) if dim == 0 else (x.shape[0], missing)
    return torch.cat([x, x.new_zeros(shape)], dim=dim)


@MERGE_METHODS.register
class TaskArithmetic(GeneralizedTaskArithmetic[MergeParams]):
    """Task arithmetic, ``dW = scaling * sum_i w_i dW_i`` (https://arxiv.org/abs/2212.04089).

    Exact: the result is the rank concatenation ``A = vstack(scaling w_i s_i A_i)``, ``B = hstack(B_i)``
    (PEFT's ``cat``). With ``rank`` it is truncated by SVD computed from the factors, never the dense
    matrix (PEFT's ``svd``), and the error is reported.
    """

    name = "task_arithmetic"
    reference_url = TASK_ARITHMETIC_URL


@MERGE_METHODS.register
class Linear(TaskArithmetic):
    """Same as ``task_arithmetic`` (exact weighted sum of dense deltas). PEFT's ``linear``, which mixes
    A and B separately, is ``linear_factors``."""

    name = "linear"


@MERGE_METHODS.register
class LinearFactors(GeneralizedTaskArithmetic[MergeParams]):
    """Weighted sum in factor space, ``A = sum_i sign(c_i) sqrt|c_i| A_i``, ``B = sum_i sqrt|c_i| B_i``
    with ``c_i = scaling w_i s_i``; equals PEFT's ``linear``. Not the weighted sum of ``dW_i`` unless
    one adapter is given; output rank is the largest input rank (https://arxiv.org/abs/2212.04089)."""

    name = "linear_factors"
    reference_url = TASK_ARITHMETIC_URL
    space = "factors"


@MERGE_METHODS.register
class MagnitudePrune(GeneralizedTaskArithmetic[MagnitudeParams]):
    """On dense ``dW_i``: trim each to ``density`` by magnitude, then ``scaling * sum_i w_i trim(dW_i)``;
    truncated SVD to ``rank`` (default: largest input rank). PEFT's ``magnitude_prune_svd``."""

    name = "magnitude_prune"
    reference_url = TIES_URL
    sparsify = "magnitude"

    def knobs(self, params: MagnitudeParams) -> Knobs:
        return Knobs(density=params.density)


@MERGE_METHODS.register
class MagnitudePruneFactors(MagnitudePrune):
    """``magnitude_prune`` applied to A and B separately (PEFT's ``magnitude_prune``); output rank is
    the largest input rank."""

    name = "magnitude_prune_factors"
    space = "factors"


@MERGE_METHODS.register
class Ties(GeneralizedTaskArithmetic[TiesParams]):
    """TIES on dense ``dW_i`` (https://arxiv.org/abs/2306.01708): trim each to ``density`` by magnitude,
    elect the sign per entry on the trimmed deltas, then ``scaling * sum_i w_i t_i [agree] / #agree``
    (the disjoint mean, so equal weights give the paper's mean times lambda = ``w * scaling``).
    Back to LoRA by truncated SVD to ``rank`` (default: largest input rank, as PEFT's ``ties_svd``)."""

    name = "ties"
    reference_url = TIES_URL
    sparsify = "magnitude"
    sign_consensus = True

    def knobs(self, params: TiesParams) -> Knobs:
        return Knobs(density=params.density, majority_sign=params.majority_sign)


@MERGE_METHODS.register
class TiesFactors(Ties):
    """TIES on A and B separately, as PEFT's ``ties`` combination type; output rank is the largest input
    rank (https://arxiv.org/abs/2306.01708)."""

    name = "ties_factors"
    space = "factors"


@MERGE_METHODS.register
class DareLinear(GeneralizedTaskArithmetic[DareParams]):
    """DARE on dense ``dW_i`` (https://arxiv.org/abs/2311.03099): keep each entry with probability
    ``density`` (seeded), divide by ``density``, then ``scaling * sum_i w_i dare(dW_i)``. Back to LoRA
    by truncated SVD to ``rank`` (default: largest input rank, as PEFT's ``dare_linear_svd``)."""

    name = "dare_linear"
    reference_url = DARE_URL
    sparsify = "random"

    def knobs(self, params: DareParams) -> Knobs:
        return Knobs(density=params.density, seed=params.seed)


@MERGE_METHODS.register
class DareLinearFactors(DareLinear):
    """``dare_linear`` on A and B separately, as PEFT's ``dare_linear``; output rank is the largest input rank."""

    name = "dare_linear_factors"
    space = "factors"


@MERGE_METHODS.register
class DareTies(GeneralizedTaskArithmetic[DareTiesParams]):
    """DARE drop-and-rescale, then TIES sign election and disjoint mean, on dense ``dW_i``
    (https://arxiv.org/abs/2311.03099). Back to LoRA by truncated SVD to ``rank`` (default: largest
    input rank, as PEFT's ``dare_ties_svd``)."""

    name = "dare_ties"
    reference_url = DARE_URL
    sparsify = "random"
    sign_consensus = True

    def knobs(self, params: DareTiesParams) -> Knobs:
        return Knobs(density=params.density, majority_sign=params.majority_sign, seed=params.seed)


@MERGE_METHODS.register
class DareTiesFactors(DareTies):
    """``dare_ties`` on A and B separately, as PEFT's ``dare_ties``; output rank is the largest input rank."""

    name = "dare_ties_factors"
    space = "factors"
