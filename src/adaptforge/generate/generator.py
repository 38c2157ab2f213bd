"""An adapter for a never-trained task from its description alone: a conditional VAE over the library's adapters.

ICM-LoRA (Shao et al. 2025, "In-Context Meta LoRA Generation", https://arxiv.org/abs/2501.17635): a CVAE over
LoRA parameters conditioned on a task embedding, trained on a library of task adapters, decodes a LoRA for a new
task from its condition. Here the condition is the description embedding the library stores with every adapter
(:func:`adaptforge.scorers.describe`), and the CVAE models the adapters' coordinates in the principal directions of
the sample set (``basis.py``) rather than raw factors, which are not comparable across independently initialised
adapters. Generation decodes ``z = 0`` (the prior mean) by default, or ``z ~ N(0, I)`` with a seed, then maps
coordinates back to a LoRA adapter of the library's layout.

Defaults were chosen by a leave-one-task-out check on MiniLM (12 held-out tasks, 33 library adapters): dense
deltas per module, a linear decoder and condition noise 3.0 (which shrinks unfamiliar descriptions toward the
mean adapter) scored best among the CVAE settings; an MLP decoder, whole-adapter PCA and raw factors were no
better. All settings were within about one accuracy point of each other and of zero-shot + 1.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from adaptforge.core import AdaptforgeError, LoraDelta
from adaptforge.generate.basis import REPRESENTATIONS, SCOPES, Decoded, SpanBasis
from adaptforge.generate.cvae import DECODERS, ConditionalVAE, CvaeShape, CvaeTraining, train_cvae
from adaptforge.generate.dataset import MIN_SAMPLES, AdapterTemplate, GeneratorSamples
from adaptforge.generate.storage import (
    META_FILE,
    GeneratorFileError,
    field,
    read_generator_files,
    tensor,
    write_generator_files,
)
from adaptforge.params import Params, param
from adaptforge.scorers import Scorer, describe
from adaptforge.tasks import Task


@dataclass(frozen=True, kw_only=True)
class GeneratorConfig(Params):
    """How the generator is fitted. Its ``to_dict()`` is hashed into the cache key of stored generators
    (:func:`adaptforge.pipelines.generate.generator_key`), so field names and defaults are part of that key."""

    label: ClassVar[str] = "generator config"

    representation: str = param(
        "dense",
        choices=REPRESENTATIONS,
        help="vector space of the adapters: 'dense' (B A, re-factored by SVD; invariant to the factorisation) "
        "or 'factors' (raw A and B as in ICM-LoRA; meaningful only for adapters that share an initialisation)",
    )
    scope: str = param(
        "module", choices=SCOPES, help="one PCA per target module ('module') or one over whole adapters ('adapter')"
    )
    max_components: int | None = param(
        None, ge=1, help="principal directions kept per PCA; null: all with variance (<= N - 1)"
    )
    latent_dim: int = param(4, ge=1, help="size of the latent z")
    decoder: str = param(
        "linear", choices=DECODERS, help="p(x | z, c): 'linear' in [z, projected c], or 'mlp' (one hidden layer)"
    )
    hidden_dim: int = param(64, ge=1, help="width of the encoder's (and an mlp decoder's) hidden layer")
    cond_dim: int = param(16, ge=1, help="the description embedding is projected to this size")
    beta: float = param(1.0, ge=0, help="KL weight of the ELBO")
    condition_noise: float = param(
        3.0, ge=0, help="training noise on the normalised condition (ridge-like shrinkage to the mean)"
    )
    lr: float = param(3e-3, gt=0, help="Adam(W) learning rate")
    weight_decay: float = param(1e-4, ge=0, help="Adam(W) weight decay")
    steps: int = param(1500, ge=1, help="optimizer steps")
    batch_size: int = param(64, ge=1, help="samples per step (full batch when the library is smaller)")
    seed: int = param(0, help="network init, batch order and latent noise")

    def training(self) -> CvaeTraining:
        return CvaeTraining(
            self.beta, self.lr, self.weight_decay, self.steps, self.batch_size, self.seed, self.condition_noise
        )


@dataclass
class Generation:
    """A generated adapter with how it was made: mixing weights over the samples and SVD re-factoring errors."""

    delta: LoraDelta
    weights: np.ndarray  # [groups, N] weights of the training adapters (1/N each is their mean)
    refactor_errors: dict[str, float]  # module -> relative Frobenius error of the rank-r truncation

    @property
    def max_refactor_error(self) -> float:
        return max(self.refactor_errors.values(), default=0.0)


def conditional_fit_error(cvae: ConditionalVAE, coords: torch.Tensor, cond: torch.Tensor, gram: torch.Tensor) -> float:
    """Mean over training conditions of ``||X(c, z=0) - mean_c X|| / ||mean_c X||``: how well decoding the prior
    mean reproduces the average of the adapters that share condition ``c`` (in span, before SVD re-factoring).
    Distances between coordinates equal distances between adapters, so only the ``N x N`` Gram matrix is needed."""
    _, group = torch.unique(cond, dim=0, return_inverse=True)
    errors = []
    with torch.no_grad():
        for g in range(int(group.max()) + 1):
            idx = torch.nonzero(group == g).flatten()
            x_hat = cvae.generate(cond[idx[:1]], torch.zeros(1, cvae.shape.latent_dim))[0].double()
            target = coords[idx].double().mean(0)
            norm = float(gram[idx][:, idx].double().mean().clamp(min=0).sqrt())
            errors.append(float((x_hat - target).norm()) / max(norm, 1e-30))
    return float(np.mean(errors))


class LoraGenerator:
    """``p(adapter | description embedding)`` learned from a library; see the module docstring."""

    def __init__(
        self,
        config: GeneratorConfig,
        basis: SpanBasis,
        cvae: ConditionalVAE,
        names: list[str],
        tasks: list[str],
        info: dict[str, Any],
    ) -> None:
        self.config = config
        self.basis = basis
        self.cvae = cvae.eval()
        self.names = names
        self.tasks = tasks
        self.info = info

    @property
    def template(self) -> AdapterTemplate:
        return self.basis.template

    @property
    def embedding_dim(self) -> int:
        return self.cvae.shape.c_dim

    # ------------------------------------------------------------------ fit

    @classmethod
    def fit(cls, samples: GeneratorSamples, config: GeneratorConfig | None = None) -> LoraGenerator:
        """Train on ``samples`` (at least 2 adapters of one layout, each with its description embedding)."""
        config = config or GeneratorConfig()
        if len(samples) < MIN_SAMPLES:
            raise AdaptforgeError(f"a generator needs at least {MIN_SAMPLES} sample adapters, got {len(samples)}")
        start = time.perf_counter()
        basis, coords, gram = SpanBasis.fit(
            samples.deltas, samples.template, config.representation, config.scope, config.max_components
        )
        cond = torch.from_numpy(samples.embeddings).float()
        shape = CvaeShape(
            basis.dim, samples.embedding_dim, config.latent_dim, config.hidden_dim, config.cond_dim, config.decoder
        )
        cvae, curve = train_cvae(coords, cond, shape, config.training())
        gen = cls(config, basis, cvae, list(samples.names), list(samples.tasks), {})
        gen.info = {
            "method": "icm-lora cvae",
            "reference": "https://arxiv.org/abs/2501.17635",
            "config": config.to_dict(),
            "representation": config.representation,
            "scope": config.scope,
            "n_samples": len(samples),
            "sample_names": list(samples.names),
            "tasks": sorted(set(samples.tasks)),
            "skipped": dict(samples.skipped),
            "base_fingerprint": samples.base_fingerprint,
            "embedding_dim": samples.embedding_dim,
            "components": basis.dims if len(basis.dims) <= 8 else {"total": basis.dim, "max": max(basis.dims)},
            "curve": curve,
            "seconds": round(time.perf_counter() - start, 3),
            "train_reconstruction_error": conditional_fit_error(cvae, coords, cond, gram),
            **gen.sizes(),
        }
        return gen

    # ------------------------------------------------------------------ generate

    def condition(self, embedding: np.ndarray | torch.Tensor) -> torch.Tensor:
        """The embedding as a ``[1, d]`` float tensor, after checking its dimension and values."""
        c = torch.as_tensor(np.asarray(embedding, dtype=np.float32) if isinstance(embedding, np.ndarray) else embedding)
        c = c.detach().float().reshape(-1) if c.ndim == 2 and c.shape[0] == 1 else c.detach().float()
        if c.ndim != 1 or c.shape[0] != self.embedding_dim:
            raise AdaptforgeError(
                f"embedding has shape {tuple(c.shape)}; this generator was trained on {self.embedding_dim}-dimensional "
                "description embeddings (use adaptforge.scorers.describe with the library adapters' backbone)"
            )
        if not bool(torch.isfinite(c).all()):
            raise AdaptforgeError("embedding contains NaN or infinity")
        return c.unsqueeze(0)

    def generate_detailed(self, embedding: np.ndarray | torch.Tensor, seed: int | None = None) -> Generation:
        """Decode ``z = 0`` (``seed`` None) or ``z ~ N(0, I)`` drawn with ``seed``, for the embedding's task."""
        c = self.condition(embedding)
        z = torch.zeros(1, self.cvae.shape.latent_dim)
        if seed is not None:
            z = torch.randn(z.shape, generator=torch.Generator().manual_seed(int(seed)))
        with torch.no_grad():
            coords = self.cvae.generate(c, z)[0]
        decoded: Decoded = self.basis.decode(coords)
        return Generation(decoded.delta, decoded.weights.numpy(), decoded.refactor_errors)

    def generate(self, embedding: np.ndarray | torch.Tensor, seed: int | None = None) -> LoraDelta:
        """A LoRA adapter in the library's layout for the task whose description embedding is ``embedding``."""
        return self.generate_detailed(embedding, seed).delta

    # ------------------------------------------------------------------ size

    def num_parameters(self) -> int:
        """Everything needed to generate: the sample factors and principal directions, the CVAE and its buffers."""
        return self.basis.num_parameters() + sum(t.numel() for t in self.cvae.state_dict().values())

    def sizes(self) -> dict[str, Any]:
        adapter = self.template.adapter_parameters()
        cvae = sum(t.numel() for t in self.cvae.state_dict().values())
        total = self.num_parameters()
        return {
            "generator_parameters": total,
            "cvae_parameters": cvae,
            "basis_parameters": self.basis.num_parameters(),
            "adapter_parameters": adapter,
            "library_parameters": adapter * self.basis.n_samples,
            "size_vs_one_adapter": round(total / adapter, 3),
            "size_vs_training_adapters": round(total / (adapter * self.basis.n_samples), 3),
        }

    # ------------------------------------------------------------------ storage

    def save(self, folder: str | Path) -> None:
        """Write ``generator.json`` + ``generator.safetensors`` into ``folder`` atomically (tmp folder + rename)."""
        meta = {
            "config": self.config.to_dict(),
            "template": self.template.to_json(),
            "names": self.names,
            "tasks": self.tasks,
            "basis": self.basis.meta(),
            "cvae": self.cvae.shape.to_json(),
            "info": self.info,
        }
        tensors = self.basis.tensors()
        tensors.update({f"cvae.{k}": v for k, v in self.cvae.state_dict().items()})
        write_generator_files(Path(folder), meta, tensors)

    @classmethod
    def load(cls, folder: str | Path) -> LoraGenerator:
        """Read a generator saved by :meth:`save`; a missing or corrupt file is an error naming the file and field."""
        folder = Path(folder)
        meta, tensors = read_generator_files(folder)
        try:
            config = GeneratorConfig.from_dict(field(meta, "config", folder))
            template = AdapterTemplate.from_json(field(meta, "template", folder))
            names = [str(n) for n in field(meta, "names", folder)]
            tasks = [str(t) for t in field(meta, "tasks", folder)]
            basis_meta = field(meta, "basis", folder)
            shape = CvaeShape.from_json(field(meta, "cvae", folder))
            groups = [[int(m) for m in g] for g in basis_meta["groups"]]
            dims = [int(d) for d in basis_meta["dims"]]
            representation = str(basis_meta["representation"])
        except (KeyError, TypeError, ValueError, AdaptforgeError) as err:
            if isinstance(err, GeneratorFileError):
                raise
            raise GeneratorFileError(
                f"{folder / META_FILE}: malformed metadata ({type(err).__name__}: {err})"
            ) from None
        basis = _load_basis(tensors, folder, template, representation, groups, dims, len(names))
        cvae = _load_cvae(tensors, folder, shape)
        return cls(config, basis, cvae, names, tasks, dict(meta.get("info") or {}))


def _load_basis(
    tensors: dict[str, torch.Tensor],
    folder: Path,
    template: AdapterTemplate,
    representation: str,
    groups: list[list[int]],
    dims: list[int],
    n: int,
) -> SpanBasis:
    A, B = [], []
    for m, spec in enumerate(template.modules):
        A.append(tensor(tensors, f"basis.A.{m}", folder, (n, spec.rank, spec.in_features)))
        B.append(tensor(tensors, f"basis.B.{m}", folder, (n, spec.out_features, spec.rank)))
    if len(groups) != len(dims) or sorted(m for g in groups for m in g) != list(range(len(template.modules))):
        raise GeneratorFileError(f"{folder / META_FILE}: field 'basis' does not cover the template's modules")
    vectors = [tensor(tensors, f"basis.V.{g}", folder, (n, k)) for g, k in enumerate(dims)]
    roots = [tensor(tensors, f"basis.sqrt_eig.{g}", folder, (k,)) for g, k in enumerate(dims)]
    return SpanBasis(representation, template, groups, A, B, vectors, roots)


def _load_cvae(tensors: dict[str, torch.Tensor], folder: Path, shape: CvaeShape) -> ConditionalVAE:
    model = ConditionalVAE(shape)
    state = {k: tensor(tensors, f"cvae.{k}", folder, tuple(v.shape)) for k, v in model.state_dict().items()}
    model.load_state_dict(state)
    return model.eval()


def describe_new_task(scorer: Scorer, description: str, labels: Sequence[str], name: str = "new-task") -> np.ndarray:
    """The condition of a task that has no examples: :func:`~adaptforge.scorers.describe` of a ``Task``,
    the same embedding the library stores with every trained adapter."""
    return describe(scorer, Task(name, description, tuple(labels), splits={}))
