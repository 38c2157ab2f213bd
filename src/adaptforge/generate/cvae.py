"""A small conditional VAE over adapter coordinates, conditioned on the task description embedding.

ICM-LoRA (Shao et al. 2025, "In-Context Meta LoRA Generation", https://arxiv.org/abs/2501.17635) trains a CVAE
(Sohn et al. 2015, https://papers.nips.cc/paper/5775) with encoder ``q(z | x, c)``, decoder ``p(x | z, c)`` and a
standard Gaussian prior on ``z``, by maximising the ELBO

    E_q[log p(x | z, c)] - beta * KL(q(z | x, c) || N(0, I)),

and generates a task's LoRA by decoding a latent with the task's condition. Here ``x`` are the sample's basis
coordinates (see ``basis.py``) scaled to unit mean square, the likelihood is a unit-variance Gaussian (so the
first term is ``-0.5 * ||x - x_hat||^2``), and ``c`` is the description embedding, centred on the training
conditions' mean and scaled to unit root-mean-square norm, then projected by a learned linear layer shared by
encoder and decoder. With tens of samples the networks are one hidden layer wide and trained full-batch with Adam.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import nn

from adaptforge.progress import Steps

DECODERS: tuple[str, ...] = ("linear", "mlp")


@dataclass(frozen=True)
class CvaeShape:
    x_dim: int
    c_dim: int
    latent_dim: int
    hidden_dim: int
    cond_dim: int
    decoder: str = "linear"  # "linear": x = b + W [z, h(c)]; "mlp": one hidden layer of hidden_dim

    def to_json(self) -> dict[str, int | str]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, object]) -> CvaeShape:
        ints = {k: int(data[k]) for k in ("x_dim", "c_dim", "latent_dim", "hidden_dim", "cond_dim")}  # type: ignore[call-overload]
        decoder = str(data.get("decoder", "mlp"))
        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
        return cls(**ints, decoder=decoder)


class ConditionalVAE(nn.Module):
    """``q(z | x, c)`` and ``p(x | z, c)`` as one-hidden-layer MLPs with a shared condition projection.

    Buffers hold the normalisation: ``x_scale`` (coordinates are divided by it), ``c_mean`` and ``c_scale``
    (the condition is ``(c - c_mean) / c_scale``), so a saved model needs nothing else to generate.
    """

    def __init__(self, shape: CvaeShape) -> None:
        super().__init__()
        self.shape = shape
        self.cond = nn.Linear(shape.c_dim, shape.cond_dim)
        self.encoder = nn.Sequential(
            nn.Linear(shape.x_dim + shape.cond_dim, shape.hidden_dim),
            nn.SiLU(),
            nn.Linear(shape.hidden_dim, 2 * shape.latent_dim),
        )
        self.decoder: nn.Module = (
            nn.Linear(shape.latent_dim + shape.cond_dim, shape.x_dim)
            if shape.decoder == "linear"
            else nn.Sequential(
                nn.Linear(shape.latent_dim + shape.cond_dim, shape.hidden_dim),
                nn.SiLU(),
                nn.Linear(shape.hidden_dim, shape.x_dim),
            )
        )
        self.register_buffer("x_scale", torch.ones(()))
        self.register_buffer("c_mean", torch.zeros(shape.c_dim))
        self.register_buffer("c_scale", torch.ones(()))

    def set_normalisation(self, x: torch.Tensor, c: torch.Tensor) -> None:
        """Unit mean-square coordinates; conditions centred with unit root-mean-square norm (from training data)."""
        with torch.no_grad():
            self.x_scale.copy_(x.pow(2).mean().sqrt().clamp(min=1e-12))
            self.c_mean.copy_(c.mean(0))
            self.c_scale.copy_((c - c.mean(0)).pow(2).sum(1).mean().sqrt().clamp(min=1e-6))

    def condition(self, c: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Projected condition; ``noise`` (training only) is added to the normalised embedding."""
        normalised = (c - self.c_mean) / self.c_scale
        return self.cond(normalised if noise is None else normalised + noise)

    def encode(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of ``q(z | x, c)`` (``x`` normalised, ``h`` the projected condition)."""
        mu, logvar = self.encoder(torch.cat([x, h], dim=-1)).chunk(2, dim=-1)
        return mu, logvar.clamp(-10.0, 10.0)

    def decode(self, z: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """Mean of ``p(x | z, c)`` in normalised coordinates."""
        return self.decoder(torch.cat([z, h], dim=-1))

    def generate(self, c: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Coordinates (un-normalised) for conditions ``c [B, c_dim]`` and latents ``z [B, latent]``."""
        return self.decode(z, self.condition(c)) * self.x_scale


@dataclass(frozen=True)
class CvaeTraining:
    beta: float
    lr: float
    weight_decay: float
    steps: int
    batch_size: int
    seed: int
    condition_noise: float = 0.0  # norm of Gaussian noise added to the normalised condition (a ridge penalty)
    log_every: int = 0  # 0: about 50 points on the curve


def elbo_terms(
    model: ConditionalVAE, x: torch.Tensor, c: torch.Tensor, gen: torch.Generator, condition_noise: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-batch means of the reconstruction term ``0.5 ||x - x_hat||^2`` and ``KL(q || N(0, I))``.

    ``condition_noise`` > 0 perturbs each normalised condition by ``N(0, noise^2 / d I)`` (expected norm about
    ``noise``); for a linear decoder, training with input noise is Tikhonov (ridge) regularisation (Bishop 1995,
    https://doi.org/10.1162/neco.1995.7.1.108), which pulls the decoder toward the mean adapter for conditions
    unlike any in the library."""
    noise = None
    if condition_noise > 0:
        noise = torch.randn(c.shape, generator=gen) * (condition_noise / c.shape[-1] ** 0.5)
    h = model.condition(c, noise)
    mu, logvar = model.encode(x, h)
    eps = torch.randn(mu.shape, generator=gen)
    z = mu + eps * (0.5 * logvar).exp()  # reparameterisation (Kingma and Welling 2014)
    recon = 0.5 * (model.decode(z, h) - x).pow(2).sum(-1).mean()
    kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1).mean()
    return recon, kl


def train_cvae(
    x: torch.Tensor, c: torch.Tensor, shape: CvaeShape, cfg: CvaeTraining
) -> tuple[ConditionalVAE, list[tuple[int, float, float, float]]]:
    """Fit a CVAE to coordinates ``x [N, D]`` with conditions ``c [N, d]``; deterministic for a seed on CPU.

    Returns the model (in eval mode) and the curve ``(step, loss, reconstruction, kl)`` per logged step, the
    terms measured on the whole training set.
    """
    x, c = x.float(), c.float()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = ConditionalVAE(shape)
    model.set_normalisation(x, c)
    xn = x / model.x_scale
    gen = torch.Generator().manual_seed(cfg.seed)
    probe = torch.Generator().manual_seed(cfg.seed + 1)  # noise for the logged curve, so logging never changes training
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n = x.shape[0]
    batch = min(cfg.batch_size, n)
    every = cfg.log_every or max(1, cfg.steps // 50)
    curve: list[tuple[int, float, float, float]] = []
    model.train()
    order = torch.randperm(n, generator=gen)
    cursor = 0
    steps = Steps("generator fit: steps", cfg.steps)
    for step in range(1, cfg.steps + 1):
        steps.update(step - 1)
        if cursor + batch > n:
            order, cursor = torch.randperm(n, generator=gen), 0
        idx = order[cursor : cursor + batch]
        cursor += batch
        recon, kl = elbo_terms(model, xn[idx], c[idx], gen, cfg.condition_noise)
        loss = recon + cfg.beta * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % every == 0 or step == cfg.steps:
            with torch.no_grad():
                r_all, k_all = elbo_terms(model, xn, c, probe)
            curve.append((step, _r(float(r_all + cfg.beta * k_all)), _r(float(r_all)), _r(float(k_all))))
    steps.update(cfg.steps, info=f"loss {curve[-1][1]:.4f}" if curve else "")
    model.eval()
    return model, curve


def _r(value: float) -> float:
    return round(value, 6) if math.isfinite(value) else value
