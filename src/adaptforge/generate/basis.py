"""A linear coordinate system for LoRA adapters: PCA over the library's samples, computed from the N x N Gram matrix.

The generator does not model hundreds of thousands of raw LoRA numbers from tens of samples. It models the
coordinates of each sample in the principal directions of the sample set (as ICM-LoRA's CVAE models flattened
parameters, Shao et al. 2025, https://arxiv.org/abs/2501.17635, but in a space of N - 1 dimensions per group).
Two vector spaces are supported:

- ``dense``: the dense deltas ``X_i = s_i B_i A_i`` of every module with the Frobenius inner product.
  ``<X_i, X_j> = sum((B_i^T B_j) * (A_i A_j^T))`` needs only ``r x r`` products, so no ``out x in`` matrix is
  formed. Decoded adapters are weighted sums of the samples, ``X = sum_i w_i X_i``: exact as a rank-``N r``
  concatenation, then re-factored to the template rank by truncated SVD (its relative error is reported).
  Invariant to the factorisation ``B A = (B M)(M^-1 A)``, so adapters from different seeds are comparable.
- ``factors``: the flattened factors ``(sqrt(s) A, sqrt(s) B)``, the representation of ICM-LoRA. Decoding mixes
  A and B separately, which is only meaningful when the samples share an initialisation.

Centred Gram ``G_c = H G H = V diag(lam) V^T`` (``H = I - 11^T / N``). Sample ``i``'s coordinates are
``c_i = sqrt(lam) * V[i]``; coordinates ``c`` decode to mixing weights ``w = 1/N + V diag(lam^-1/2) c``, which is
``mean + sum_k c_k u_k`` for the orthonormal principal directions ``u_k``. Squared distances between coordinates
equal squared distances between adapters (in-span), so an MSE on coordinates is an MSE on the adapters.
``groups`` chooses the scope of one PCA: each module on its own (``module``) or all modules together (``adapter``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from adaptforge.core import AdaptforgeError, LoraDelta, LoraModule
from adaptforge.generate.dataset import AdapterTemplate
from adaptforge.lora.factors import concat_modules, lowrank_svd

Representation = Literal["dense", "factors"]
Scope = Literal["module", "adapter"]
REPRESENTATIONS: tuple[str, ...] = ("dense", "factors")
SCOPES: tuple[str, ...] = ("module", "adapter")
_WORK = torch.float64
_REL_EIG_TOL = 1e-9  # principal directions with lam < tol * max(lam) carry no variance and are dropped


@dataclass
class Decoded:
    """A decoded adapter, the mixing weights over the samples per group, and each module's SVD re-factoring error."""

    delta: LoraDelta
    weights: torch.Tensor  # [groups, N]
    refactor_errors: dict[str, float]


@dataclass
class SpanBasis:
    """Stacked sample factors (scales folded in) and per-group principal directions of the sample set.

    ``A[m]`` is ``[N, r, in]`` and ``B[m]`` is ``[N, out, r]`` for module ``m`` of the template. ``dense``
    folds the scale into B (``B <- s B``); ``factors`` splits it (``A, B <- sqrt(s) A, sqrt(s) B``).
    """

    representation: str
    template: AdapterTemplate
    groups: list[list[int]]  # module indices of each PCA group
    A: list[torch.Tensor]
    B: list[torch.Tensor]
    vectors: list[torch.Tensor]  # per group [N, K_g], orthonormal columns, orthogonal to the ones vector
    sqrt_eig: list[torch.Tensor]  # per group [K_g], descending, > 0

    @property
    def n_samples(self) -> int:
        return int(self.A[0].shape[0])

    @property
    def dims(self) -> list[int]:
        return [int(v.shape[1]) for v in self.vectors]

    @property
    def dim(self) -> int:
        return sum(self.dims)

    def num_parameters(self) -> int:
        return sum(t.numel() for t in (*self.A, *self.B, *self.vectors, *self.sqrt_eig))

    # ------------------------------------------------------------------ fit

    @classmethod
    def fit(
        cls,
        deltas: Sequence[LoraDelta],
        template: AdapterTemplate,
        representation: str = "dense",
        scope: str = "module",
        max_components: int | None = None,
    ) -> tuple[SpanBasis, torch.Tensor, torch.Tensor]:
        """The basis, the samples' coordinates ``[N, D]`` and the (uncentred) Gram matrix ``[N, N]`` of all modules."""
        if representation not in REPRESENTATIONS:
            raise AdaptforgeError(f"representation must be one of {REPRESENTATIONS}, got {representation!r}")
        if scope not in SCOPES:
            raise AdaptforgeError(f"scope must be one of {SCOPES}, got {scope!r}")
        A, B = stack_factors(deltas, template, representation)
        grams = [module_gram(a, b, representation) for a, b in zip(A, B, strict=True)]
        groups = [[m] for m in range(len(A))] if scope == "module" else [list(range(len(A)))]
        vectors, sqrt_eig, coords = [], [], []
        for group in groups:
            V, root = principal_directions(sum(grams[m] for m in group), max_components)
            vectors.append(V)
            sqrt_eig.append(root)
            coords.append(V * root)
        basis = cls(representation, template, groups, A, B, vectors, sqrt_eig)
        if basis.dim == 0:
            raise AdaptforgeError("all sample adapters are identical: there is no variation for a generator to learn")
        return basis, torch.cat(coords, dim=1).float(), torch.stack(grams).sum(0)

    # ------------------------------------------------------------------ decode

    def split(self, coords: torch.Tensor) -> list[torch.Tensor]:
        if coords.shape != (self.dim,):
            raise AdaptforgeError(f"coordinates have shape {tuple(coords.shape)}; this basis has {self.dim}")
        return list(torch.split(coords.to(_WORK), self.dims))

    def weights(self, coords: torch.Tensor) -> torch.Tensor:
        """Mixing weights ``[groups, N]`` over the samples: ``w = 1/N + V diag(lam^-1/2) c`` per group."""
        n = self.n_samples
        rows = [
            1.0 / n + V @ (c / root) for V, root, c in zip(self.vectors, self.sqrt_eig, self.split(coords), strict=True)
        ]
        return torch.stack(rows)

    def decode(self, coords: torch.Tensor) -> Decoded:
        """The adapter at ``coords``, in the template's layout (ranks and scales)."""
        weights = self.weights(coords)
        modules: dict[str, LoraModule] = {}
        errors: dict[str, float] = {}
        for g, group in enumerate(self.groups):
            for m in group:
                spec = self.template.modules[m]
                module, errors[spec.name] = self._combine(m, weights[g])
                # Express in the template's scale so the PEFT config keeps the library's r and alpha.
                modules[spec.name] = LoraModule(A=module.A, B=(module.B / spec.scale).contiguous(), scale=spec.scale)
        return Decoded(LoraDelta(modules), weights, errors)

    def _combine(self, m: int, w: torch.Tensor) -> tuple[LoraModule, float]:
        rank = self.template.modules[m].rank
        if self.representation == "dense":
            parts = [LoraModule(A=a, B=b, scale=1.0) for a, b in zip(self.A[m], self.B[m], strict=True)]
            return lowrank_svd(concat_modules(parts, w.tolist()), rank)
        A = torch.einsum("n,nri->ri", w, self.A[m].to(_WORK)).float()
        B = torch.einsum("n,nor->or", w, self.B[m].to(_WORK)).float()
        return LoraModule(A=A.contiguous(), B=B.contiguous(), scale=1.0), 0.0

    # ------------------------------------------------------------------ storage

    def tensors(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for m, (a, b) in enumerate(zip(self.A, self.B, strict=True)):
            out[f"basis.A.{m}"], out[f"basis.B.{m}"] = a, b
        for g, (v, root) in enumerate(zip(self.vectors, self.sqrt_eig, strict=True)):
            out[f"basis.V.{g}"], out[f"basis.sqrt_eig.{g}"] = v, root
        return {k: t.detach().contiguous() for k, t in out.items()}

    def meta(self) -> dict[str, object]:
        return {"representation": self.representation, "groups": self.groups, "dims": self.dims}


def stack_factors(
    deltas: Sequence[LoraDelta], template: AdapterTemplate, representation: str
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per module ``A [N, r, in]`` and ``B [N, out, r]`` in float32 with each sample's scale folded in."""
    A, B = [], []
    for spec in template.modules:
        mods = [d[spec.name] for d in deltas]
        if representation == "dense":
            A.append(torch.stack([mod.A.float() for mod in mods]))
            B.append(torch.stack([mod.B.float() * float(mod.scale) for mod in mods]))
        else:
            A.append(torch.stack([mod.A.float() * float(mod.scale) ** 0.5 for mod in mods]))
            B.append(torch.stack([mod.B.float() * float(mod.scale) ** 0.5 for mod in mods]))
    return A, B


def module_gram(A: torch.Tensor, B: torch.Tensor, representation: str) -> torch.Tensor:
    """``[N, N]`` inner products of one module's samples (float64): dense ``<B_i A_i, B_j A_j>_F`` or flat factors."""
    A, B = A.to(_WORK), B.to(_WORK)
    if representation == "factors":
        a, b = A.flatten(1), B.flatten(1)
        return a @ a.T + b @ b.T
    btb = torch.einsum("ior,jos->ijrs", B, B)  # B_i^T B_j
    aat = torch.einsum("irk,jsk->ijrs", A, A)  # A_i A_j^T
    return (btb * aat).sum(dim=(2, 3))


def principal_directions(gram: torch.Tensor, max_components: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvectors ``V [N, K]`` and ``sqrt(lam) [K]`` of the centred Gram matrix, largest first, ``lam > 0``."""
    n = gram.shape[0]
    H = torch.eye(n, dtype=_WORK) - 1.0 / n
    lam, V = torch.linalg.eigh(H @ gram.to(_WORK) @ H)
    lam, V = lam.flip(0), V.flip(1)
    top = float(lam[0])
    k = int((lam > _REL_EIG_TOL * top).sum()) if top > 0 else 0
    if max_components is not None:
        k = min(k, max_components)
    return _fix_signs(V[:, :k]).contiguous(), lam[:k].sqrt().contiguous()


def _fix_signs(V: torch.Tensor) -> torch.Tensor:
    """Eigenvectors are defined up to sign: make each column's largest-magnitude entry positive (reproducible)."""
    if V.shape[1] == 0:
        return V
    idx = V.abs().argmax(dim=0)
    signs = torch.sign(V[idx, torch.arange(V.shape[1])])
    return V * torch.where(signs == 0, 1.0, signs)
