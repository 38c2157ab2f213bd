"""ICM-LoRA as published: a CVAE over raw, per-tensor z-normalised LoRA factors of training snapshots,
conditioned on the in-context task vector (Shao et al. 2025, "In-Context Meta LoRA Generation",
https://arxiv.org/abs/2501.17635; reference code YihuaJerry/ICM-LoRA, ``model/CVAE_design.py``,
``utils/normalizeLoraWeight_small.py``, ``ICL/last_time_step_icl.py``).

Data: every snapshot (``adaptforge train --snapshots N``) of every task adapter from ``tail`` of its run on is
one sample; its parameters are the A and B tensors of every module (template order), flattened and
z-normalised per tensor, ``(x - mean_t) / std_t``. The reference normalises each file with its own statistics
and keeps them per file; one mean and std per tensor over all samples is kept here, so a generated adapter
needs no statistics of a particular training file. The condition of a sample is the task vector
(:mod:`~adaptforge.generate.condition`) over ``shots`` demonstrations stored with the snapshots, drawn afresh
for each sample so the generator sees the spread of k-shot task vectors it will be given; with ``condition_draw``
'per_step' the draw is renewed for every sample of every batch. Each stored demonstration is read once and a
k-shot vector is the mean of k readings (which is what :func:`~adaptforge.generate.condition.task_vector`
computes), so draws cost no forward passes. The reference computes one task vector per
task (``ICL/last_time_step_icl.py`` averages about 30 examples into one file that ``TrainScript_CVAE.py`` pairs with
every sample); a generator given k demonstrations of a new task sees one noisy draw, so here it trains on draws.

Model: the reference encodes the flattened sequence with 12 strided 1-D convolutions and decodes with
transposed ones (millions of weights, hundreds of GPU epochs). Here the encoder is a two-layer MLP (training only)
and the decoder one of two (``decoder``):

- 'pca': ``[z, c] -> hidden -> L``, linear, its output layer started at the samples' mean and top principal
  directions and, at ``output_lr_scale`` 0, kept there. Every decode lies in that ``hidden_dim``-dimensional
  subspace: a regression from the condition to principal coordinates, cheap to fit on a CPU. Its size is the
  ``hidden_dim x L`` output layer in float16 (``hidden_dim`` 0: one per training task; about 6% of 8 snapshots per
  task, about half of the tasks' final adapters).
- 'conv': the reference's convolutional decoder scaled down (:class:`ConvDecoder`): a coarse code, stride-4
  transposed convolutions, and a per-element bias at the samples' mean; its decodes are not confined to a subspace
  of the samples, and it is a fraction of the 'pca' decoder's size.

At generation z is 0 (``latent`` 'zero') or drawn from the prior as the reference does (``latent`` 'prior').
As in the reference, the condition joins the latent heads (``mu``, ``log var`` from ``[h(x), c]``) and the
decoder input (``[z, c]``); the loss is the mean squared error plus ``beta`` times the KL divergence. Only what
generation needs (condition projection, decoder, tensor statistics) is saved; the encoder is training-only.

Why these defaults (each chosen on dev splits with ``benchmarks/icm_dev.py``; the rounds that chose them are in
docs/experiments/icm.md): the condition is standardised per dimension (``condition_norm``), because centred and
divided by one scale its projection is a few hundredths of z's scale and the decode ignores it; the decoder's hidden
layer is linear (``decoder_act``), because the output layer starts from the principal directions, whose coordinates
SiLU cannot make negative; that large output layer stays at its start (``output_lr_scale`` 0), so Adam fits only the
few small layers, which a CPU budget can train where the reference trains every weight for hundreds of GPU epochs;
``hidden_dim`` 0 sizes the decoder to the training tasks; ``condition_draw`` 'per_step' shows the generator the
whole spread of k-shot task vectors; ``lr`` 0.01 and 600 steps fit a 22-task library (300 steps at 2e-3 underfit it);
``decoder`` 'pca', because the scaled-down 'conv' decoder underfits in that budget (seen tasks at 0.82 of their own
adapters against 1.01, and the condition barely moves it); ``latent`` 'zero', because z carries little and a draw
from the prior is mostly noise around the z = 0 decode.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from adaptforge.core import AdaptforgeError, LoraDelta, LoraModule
from adaptforge.generate.dataset import AdapterTemplate
from adaptforge.generate.storage import (
    GeneratorFileError,
    field,
    read_generator_files,
    tensor,
    write_generator_files,
)
from adaptforge.library import AdapterRecord, Library
from adaptforge.params import Params, param
from adaptforge.progress import Steps
from adaptforge.snapshots import SNAPSHOTS_FILE
from adaptforge.tasks import Example, Task

CONDITIONS: tuple[str, ...] = ("demos", "description")
CONDITION_NORMS: tuple[str, ...] = ("scalar", "standardise", "whiten")
DECODER_ACTS: tuple[str, ...] = ("silu", "identity")
CONDITION_DRAWS: tuple[str, ...] = ("per_sample", "per_step")
DECODERS: tuple[str, ...] = ("pca", "conv")
LATENTS: tuple[str, ...] = ("zero", "prior")
_HALF_FROM = 65536  # decoder tensors with at least this many values are stored in float16


@dataclass(frozen=True, kw_only=True)
class IcmParams(Params):
    """How an ICM-LoRA generator is fitted (its ``to_dict()`` is part of the stored generator's cache key)."""

    label: ClassVar[str] = "icm params"

    condition: str = param(
        "demos",
        choices=CONDITIONS,
        help="'demos': task vector over k demonstrations (the paper); 'description': description + label names",
    )
    shots: int = param(16, ge=1, help="demonstrations per training condition (k)")
    tail: float = param(0.75, ge=0, le=1, help="use snapshots from this fraction of each run on (1.0: last only)")
    latent_dim: int = param(32, ge=1, help="size of z (the reference's latent_dim flag; tens to hundreds)")
    hidden_dim: int = param(
        0,
        ge=0,
        help="decoder width; the saved decoder is about hidden_dim x L float16 values; 0: the number of training "
        "tasks (the frozen output layer then keeps as many principal directions as the task means need)",
    )
    encoder_dim: int = param(16, ge=1, help="encoder width (training only, not saved)")
    cond_dim: int = param(32, ge=1, help="the task vector is projected to this size")
    beta: float = param(0.1, ge=0, help="KL weight (the reference uses 0.005 with a 12-layer conv decoder)")
    condition_noise: float = param(0.5, ge=0, help="Gaussian noise on the normalised condition while training")
    condition_norm: str = param(
        "standardise",
        choices=CONDITION_NORMS,
        help="'scalar': centre, one scale; 'standardise': per dimension; 'whiten': onto the training tasks' "
        "directions, each to unit variance (statistics of the training conditions, folded into the saved projection)",
    )
    decoder_act: str = param(
        "identity",
        choices=DECODER_ACTS,
        help="decoder hidden activation; 'identity': the output is the mean plus the top principal directions "
        "times a linear function of [z, condition] (SiLU cannot go below -0.28, so it cannot reach negative "
        "coordinates along the principal directions the output layer starts from)",
    )
    output_lr_scale: float = param(
        0.0,
        ge=0,
        help="learning rate of the decoder's output layer (hidden_dim x L) relative to lr; 0 keeps it at the "
        "samples' mean and principal directions and learns only the small layers",
    )
    condition_draw: str = param(
        "per_step",
        choices=CONDITION_DRAWS,
        help="'per_sample': one draw of k demonstrations per snapshot, fixed for the fit; 'per_step': a fresh draw "
        "for every sample of every batch (the mean of k of the task's per-demonstration vectors, read once), so the "
        "generator sees the whole within-task spread of k-shot task vectors",
    )
    decoder: str = param(
        "pca",
        choices=DECODERS,
        help="'pca': linear, its output layer starts at the samples' mean and top principal directions (every decode "
        "lies in that hidden_dim-dimensional subspace while output_lr_scale is 0); 'conv': the reference's "
        "convolutional decoder scaled down: [z, condition] -> a coarse code -> stride-4 transposed convolutions -> "
        "a per-element residual over the samples' mean (not confined to a subspace)",
    )
    conv_channels: int = param(8, ge=1, help="'conv' decoder: channels of the coarse code and the convolutions")
    conv_stages: int = param(3, ge=1, le=8, help="'conv' decoder: transposed convolutions, each 4x the length")
    latent: str = param(
        "zero",
        choices=LATENTS,
        help="z at generation: 'zero' the prior mean (a seed passed to generate draws z ~ N(0, I) instead); "
        "'prior' always z ~ N(0, I), as the reference samples it (seeded by the generate seed, else by seed)",
    )
    lr: float = param(0.01, gt=0, help="AdamW learning rate (0.01 and 600 steps chosen on dev splits, 22 tasks)")
    steps: int = param(600, ge=1, help="optimizer steps")
    batch_size: int = param(16, ge=1, help="samples per step")
    seed: int = param(0, help="network init, demonstration draws, batch order and latent noise")


class PcaDecoder(nn.Sequential):
    """``[z, c] -> hidden -> L``; the output layer starts at the samples' mean and top principal directions."""

    def __init__(self, in_dim: int, hidden: int, length: int, act: str) -> None:
        super().__init__(
            nn.Linear(in_dim, hidden), nn.SiLU() if act == "silu" else nn.Identity(), nn.Linear(hidden, length)
        )

    def output_parameters(self) -> list[nn.Parameter]:
        return list(self[2].parameters())

    @torch.no_grad()
    def init_output(self, x: torch.Tensor) -> None:
        """Bias = the samples' mean; weights = their top principal directions (scaled by singular value /
        sqrt(N)). The mean includes the shared random init of A, hundreds of thousands of values Adam would
        otherwise take thousands of steps to reach; the reference trains for hundreds of epochs."""
        last = self[2]
        mean = x.mean(0)
        _, S, Vh = torch.linalg.svd(x - mean, full_matrices=False)
        h = min(last.weight.shape[1], Vh.shape[0])
        last.bias.copy_(mean)
        last.weight.zero_()
        last.weight[:, :h].copy_((Vh[:h] * (S[:h, None] / max(1, x.shape[0]) ** 0.5)).T)


class ConvDecoder(nn.Module):
    """``[z, c]`` -> a coarse code ``[channels, ceil(L / 4^stages)]`` (linear) -> ``stages`` transposed 1-D
    convolutions (kernel 8, stride 4, ELU between) -> one channel, cropped to ``L``, added to a per-element bias.

    The reference's decoder (``model/CVAE_design.py``) scaled down for a CPU: it upsamples a code of length
    ``L / 4096`` through 12 stride-2 layers of up to 256 channels with batch norm; here a longer code, fewer and
    narrower layers and no batch norm (batches of 16), and a bias that starts at the samples' mean (the reference
    has no such term and learns the mean through the convolutions). The code layer and the biases start at zero, so
    the first decode is the mean; its output is not confined to a subspace of the samples."""

    def __init__(self, in_dim: int, length: int, channels: int, stages: int) -> None:
        super().__init__()
        self.length, self.channels = length, channels
        self.coarse = -(-length // 4**stages)
        self.code = nn.Linear(in_dim, channels * self.coarse)
        layers: list[nn.Module] = []
        for i in range(stages):
            last = i == stages - 1
            layers.append(nn.ConvTranspose1d(channels, 1 if last else channels, 8, stride=4, padding=2))
            if not last:
                layers.append(nn.ELU())
        self.up = nn.Sequential(*layers)
        self.bias = nn.Parameter(torch.zeros(length))
        with torch.no_grad():  # zero code and conv biases: the first decode is exactly the bias
            for q in (self.code.weight, self.code.bias, *(m.bias for m in layers if isinstance(m, nn.ConvTranspose1d))):
                q.zero_()

    def forward(self, zc: torch.Tensor) -> torch.Tensor:
        code = self.code(zc).view(-1, self.channels, self.coarse)
        return self.bias + self.up(code)[:, 0, : self.length]

    def output_parameters(self) -> list[nn.Parameter]:
        return [self.bias]

    @torch.no_grad()
    def init_output(self, x: torch.Tensor) -> None:
        self.bias.copy_(x.mean(0))


class IcmCvae(nn.Module):
    """``q(z | x, c)``, ``p(x | z, c)``; buffers: per-element mean/std of x and the condition's mean/scale."""

    def __init__(self, length: int, c_dim: int, p: IcmParams, hidden: int = 0) -> None:
        super().__init__()
        self.length, self.c_dim, self.latent_dim = length, c_dim, p.latent_dim
        self.hidden = hidden or p.hidden_dim
        if self.hidden < 1:
            raise AdaptforgeError("icm: hidden_dim 0 (one per training task) needs the number of tasks")
        self.cond = nn.Linear(c_dim, p.cond_dim)
        self.to_latent = nn.Sequential(
            nn.Linear(length, p.encoder_dim), nn.SiLU(), nn.Linear(p.encoder_dim, p.latent_dim)
        )
        self.fc_mu = nn.Linear(p.latent_dim + p.cond_dim, p.latent_dim)
        self.fc_var = nn.Linear(p.latent_dim + p.cond_dim, p.latent_dim)
        self.decoder: PcaDecoder | ConvDecoder = (
            ConvDecoder(p.latent_dim + p.cond_dim, length, p.conv_channels, p.conv_stages)
            if p.decoder == "conv"
            else PcaDecoder(p.latent_dim + p.cond_dim, self.hidden, length, p.decoder_act)
        )
        self.register_buffer("c_mean", torch.zeros(c_dim))
        self.register_buffer("c_scale", torch.ones(()))
        self.c_proj: torch.Tensor | None = None  # training only: [c_dim, r] whitening, folded into ``cond`` after

    def condition(self, c: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        normalised = (c - self.c_mean) / self.c_scale
        if self.c_proj is not None:
            normalised = normalised @ self.c_proj
        return self.cond(normalised if noise is None else normalised + noise)

    def set_condition_stats(self, c: torch.Tensor, task_of: torch.Tensor, norm: str, cond_dim: int) -> float:
        """Normalisation of the training conditions ``c [N, d]``; returns the RMS norm of the normalised ones.

        'scalar' centres and divides by one scale (unit RMS norm). 'standardise' and 'whiten' use a projection
        ``P``: ``diag(1 / std)`` per dimension, or the principal directions of the task means (the between-task
        scatter, rank < number of tasks) each scaled to unit variance over the tasks, which drops the directions
        in which only the demonstration draws differ. ``cond`` is rebuilt for ``P``'s width; :meth:`fold`
        merges ``P`` into it so the saved generator is the same for every mode."""
        with torch.no_grad():
            self.c_mean.copy_(c.mean(0))
            centred = c - self.c_mean
            if norm == "scalar":
                self.c_scale.copy_(centred.pow(2).sum(1).mean().sqrt().clamp(min=1e-6))
                return 1.0
            if norm == "standardise":
                proj = torch.diag(1.0 / centred.std(0).clamp(min=1e-6))
            else:
                tasks = sorted(set(task_of.tolist()))
                means = torch.stack([centred[task_of == t].mean(0) for t in tasks])
                means = means - means.mean(0)
                _, S, Vh = torch.linalg.svd(means, full_matrices=False)
                keep = S.max() * 1e-4 < S
                if float(S.max()) <= 0:
                    raise AdaptforgeError("icm: every training task has the same condition; nothing to condition on")
                proj = Vh[keep].T * (max(1, len(tasks) - 1) ** 0.5 / S[keep])
            self.c_proj = proj
        self.cond = nn.Linear(proj.shape[1], cond_dim)
        return float((centred @ proj).pow(2).sum(1).mean().sqrt())

    def fold(self) -> None:
        """Merge the training-time projection into ``cond`` (``W P^T``), so generation needs no ``P``."""
        if self.c_proj is None:
            return
        folded = nn.Linear(self.c_dim, self.cond.out_features)
        with torch.no_grad():
            folded.weight.copy_(self.cond.weight @ self.c_proj.T)
            folded.bias.copy_(self.cond.bias)
        self.cond, self.c_proj = folded, None

    def encode(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        joined = torch.cat([self.to_latent(x), h], dim=-1)
        return self.fc_mu(joined), self.fc_var(joined).clamp(-10.0, 10.0)

    def decode(self, z: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return self.decoder(torch.cat([z, h], dim=-1))

    def saved_state(self) -> dict[str, torch.Tensor]:
        """What generation needs: condition projection, decoder and normalisation (float16 for the big matrix)."""
        out = {f"cond.{k}": v for k, v in self.cond.state_dict().items()}
        for k, v in self.decoder.state_dict().items():  # the large tensors (output size) in float16
            out[f"decoder.{k}"] = v.half() if v.numel() >= _HALF_FROM else v
        return {**out, "c_mean": self.c_mean, "c_scale": self.c_scale}


@dataclass
class IcmSamples:
    """Flattened, normalised snapshots ``x [N, L]``, their task index, and per task the demonstrations."""

    template: AdapterTemplate
    x: torch.Tensor
    task_of: list[int]
    tasks: list[Task]  # description, labels and stored demonstrations (as the train split) of each task
    records: list[AdapterRecord]
    mean: torch.Tensor  # [2 * modules] per-tensor statistics, A then B per module
    std: torch.Tensor
    raw_bytes: int  # bytes of the snapshots used, float32
    final_bytes: int  # bytes of the final adapters of the same tasks, float32


def flat_sizes(template: AdapterTemplate) -> list[int]:
    sizes = []
    for m in template.modules:
        sizes += [m.rank * m.in_features, m.out_features * m.rank]
    return sizes


def collect_icm_samples(
    library: Library, base_fingerprint: str, tail: float, exclude_tasks: Sequence[str] = ()
) -> IcmSamples:
    """The snapshots of the library's task adapters on ``base_fingerprint`` (not ``exclude_tasks``)."""
    chosen: list[tuple[AdapterRecord, list[LoraDelta], list[dict[str, str]]]] = []
    template: AdapterTemplate | None = None
    for record in library.list(base_fingerprint=base_fingerprint):
        if not record.is_task_adapter or record.task in exclude_tasks or SNAPSHOTS_FILE not in record.extra_checksums:
            continue
        delta, _ = library.load(record.name, expected_fingerprint=base_fingerprint)
        snaps = library.snapshots(record.name)
        assert snaps is not None
        own = AdapterTemplate.of(delta)
        if template is None:
            template = own
        if own != template:  # names, shapes, ranks and scales: raw factors are only comparable within one layout
            continue
        if not snaps.demonstrations:
            continue
        last = max(snaps.steps)
        keep = [i for i, s in enumerate(snaps.steps) if s >= tail * last]
        deltas = snaps.deltas(delta_scales(delta))
        chosen.append((record, [deltas[i] for i in keep], snaps.demonstrations))
    if template is None or not chosen:
        raise AdaptforgeError(
            f"library {library.root}: no task adapter on base {base_fingerprint} has training snapshots; "
            "--method icm learns from them: train adapters with `adaptforge train --snapshots 20` "
            "(or use --method span)"
        )
    rows, task_of, tasks = [], [], []
    for t, (record, deltas, demos) in enumerate(chosen):
        labels = tuple(dict.fromkeys(d["label"] for d in demos))
        known = record.labels.get(str(record.task), labels)
        examples = tuple(Example(d["text"], d["label"]) for d in demos)
        tasks.append(Task(str(record.task), record.description or "", known, {"train": examples}))
        for d in deltas:
            rows.append(flatten(d, template))
            task_of.append(t)
    raw = torch.stack(rows)
    sizes = flat_sizes(template)
    parts = raw.split(sizes, dim=1)
    mean = torch.stack([p.mean() for p in parts])
    std = torch.stack([p.std().clamp(min=1e-12) for p in parts])
    x = torch.cat([(p - m) / s for p, m, s in zip(parts, mean, std, strict=True)], dim=1)
    final_bytes = 4 * sum(sizes) * len(chosen)
    return IcmSamples(template, x, task_of, tasks, [c[0] for c in chosen], mean, std, raw.numel() * 4, final_bytes)


def delta_scales(delta: LoraDelta) -> dict[str, float]:
    return {name: float(delta[name].scale) for name in delta}


def flatten(delta: LoraDelta, template: AdapterTemplate) -> torch.Tensor:
    return torch.cat([t.float().flatten() for m in template.modules for t in (delta[m.name].A, delta[m.name].B)])


def unflatten(x: torch.Tensor, template: AdapterTemplate) -> LoraDelta:
    parts = x.split(flat_sizes(template))
    modules = {}
    for i, m in enumerate(template.modules):
        A = parts[2 * i].reshape(m.rank, m.in_features).contiguous()
        B = parts[2 * i + 1].reshape(m.out_features, m.rank).contiguous()
        modules[m.name] = LoraModule(A=A, B=B, scale=m.scale)
    return LoraDelta(modules)


def init_decoder_output(cvae: IcmCvae, x: torch.Tensor) -> None:
    """Data-dependent start of the decoder's output (see each decoder's ``init_output``)."""
    cvae.decoder.init_output(x)


ConditionFn = Callable[[Task, Sequence[Example]], np.ndarray]


def draw(examples: Sequence[Example], k: int, gen: torch.Generator) -> list[Example]:
    idx = torch.randperm(len(examples), generator=gen)[:k].sort().values
    return [examples[int(i)] for i in idx]


def demo_vectors(condition: ConditionFn, task: Task) -> torch.Tensor:
    """``[n, d]``: the condition of each stored demonstration alone. The task vector over k of them is their mean
    (:func:`~adaptforge.generate.condition.task_vector` averages per-demonstration readings), so fresh k-shot
    conditions cost no further forward passes."""
    return torch.stack([torch.from_numpy(condition(task, [e])) for e in task.splits["train"]]).float()


def mean_of_draw(pool: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """The mean of ``k`` rows of ``pool`` drawn without replacement (all rows when it has at most ``k``)."""
    return pool[torch.randperm(len(pool), generator=gen)[:k]].mean(0)


class IcmGenerator:
    """A fitted ICM-LoRA generator: decoder, condition projection and tensor statistics."""

    def __init__(self, params: IcmParams, template: AdapterTemplate, cvae: IcmCvae, mean, std, info: dict) -> None:
        self.params, self.template, self.cvae, self.mean, self.std, self.info = params, template, cvae, mean, std, info
        self.cvae.eval()

    @classmethod
    def fit(cls, samples: IcmSamples, condition: ConditionFn, params: IcmParams) -> IcmGenerator:
        """Train on ``samples``; ``condition(task, demonstrations)`` gives each sample's task vector."""
        start = time.perf_counter()
        gen = torch.Generator().manual_seed(params.seed)
        demos = params.condition == "demos"
        per_step = demos and params.condition_draw == "per_step"
        if demos:  # each demonstration read once; a k-shot task vector is the mean of k of these readings
            pools = [demo_vectors(condition, task) for task in samples.tasks]
            c = torch.stack([mean_of_draw(pools[t], params.shots, gen) for t in samples.task_of])
        else:
            c = torch.stack([torch.from_numpy(condition(samples.tasks[t], [])) for t in samples.task_of]).float()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(params.seed)
            cvae = IcmCvae(samples.x.shape[1], c.shape[1], params, params.hidden_dim or len(samples.tasks))
            rms = cvae.set_condition_stats(c, torch.tensor(samples.task_of), params.condition_norm, params.cond_dim)
        with torch.no_grad():
            init_decoder_output(cvae, samples.x)
        width = cvae.cond.in_features
        output = cvae.decoder.output_parameters()
        others = [q for q in cvae.parameters() if all(q is not o for o in output)]
        groups = [{"params": others, "lr": params.lr}]
        if params.output_lr_scale > 0:
            groups.append({"params": output, "lr": params.lr * params.output_lr_scale})
        else:  # the output stays at its start (the samples' mean, and for 'pca' their principal directions)
            for q in output:
                q.requires_grad_(False)
        opt = torch.optim.AdamW(groups, lr=params.lr, weight_decay=0.0)
        n, x = len(samples.task_of), samples.x
        batch = min(params.batch_size, n)
        curve = []
        cvae.train()
        steps = Steps("icm generator fit: steps", params.steps)
        for step in range(1, params.steps + 1):
            steps.update(step - 1)
            idx = torch.randperm(n, generator=gen)[:batch]
            c_batch = (
                torch.stack([mean_of_draw(pools[samples.task_of[i]], params.shots, gen) for i in idx.tolist()])
                if per_step
                else c[idx]
            )
            noise = torch.randn((len(idx), width), generator=gen) * (params.condition_noise * rms / width**0.5)
            h = cvae.condition(c_batch, noise if params.condition_noise > 0 else None)
            mu, logvar = cvae.encode(x[idx], h)
            z = mu + torch.randn(mu.shape, generator=gen) * (0.5 * logvar).exp()
            recon = (cvae.decode(z, h) - x[idx]).pow(2).mean()
            kl = (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(-1)).mean()
            loss = recon + params.beta * kl
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step % max(1, params.steps // 20) == 0 or step == params.steps:
                curve.append((step, round(recon.item(), 6), round(kl.item(), 6)))
        steps.update(params.steps, info=f"reconstruction {curve[-1][1]:.4f}")
        cvae.fold()
        generator = cls(params, samples.template, cvae, samples.mean, samples.std, {})
        generator.info = {
            "method": "icm",
            "reference": "https://arxiv.org/abs/2501.17635",
            "params": params.to_dict(),
            "n_samples": n,
            "tasks": [t.name for t in samples.tasks],
            "adapters": [r.name for r in samples.records],
            "curve": curve,
            "fit_seconds": round(time.perf_counter() - start, 3),
            "training_bytes": samples.raw_bytes,
            "final_adapter_bytes": samples.final_bytes,
        }
        return generator

    def generate(self, condition: np.ndarray, seed: int | None = None) -> LoraDelta:
        """Decode ``z = 0`` (the prior mean; ``seed`` None, ``latent`` 'zero') or ``z ~ N(0, I)`` drawn with
        ``seed`` (with ``latent`` 'prior' always, drawn with ``seed`` or else the params' seed)."""
        if self.params.latent == "prior" and seed is None:
            seed = self.params.seed
        c = torch.as_tensor(np.asarray(condition, dtype=np.float32)).reshape(1, -1)
        if c.shape[1] != self.cvae.c_dim:
            raise AdaptforgeError(
                f"condition has {c.shape[1]} dimensions; this generator was fitted on {self.cvae.c_dim}-dimensional "
                "task vectors of another base model"
            )
        z = torch.zeros(1, self.cvae.latent_dim)
        if seed is not None:
            z = torch.randn(z.shape, generator=torch.Generator().manual_seed(int(seed)))
        with torch.no_grad():
            x = self.cvae.decode(z, self.cvae.condition(c))[0]
        parts = x.split(flat_sizes(self.template))
        raw = torch.cat([p * s + m for p, m, s in zip(parts, self.mean, self.std, strict=True)])
        return unflatten(raw, self.template)

    # ------------------------------------------------------------------ storage

    def save(self, folder: Path) -> int:
        """Write the generator (atomically); returns the tensor file's bytes."""
        tensors = {f"cvae.{k}": v for k, v in self.cvae.saved_state().items()}
        tensors |= {"stats.mean": self.mean, "stats.std": self.std}
        meta = {
            "method": "icm",
            "params": self.params.to_dict(),
            "template": self.template.to_json(),
            "shape": {"length": self.cvae.length, "c_dim": self.cvae.c_dim, "hidden": self.cvae.hidden},
            "info": self.info,
        }
        write_generator_files(folder, meta, tensors)
        return self.bytes(folder)

    @staticmethod
    def bytes(folder: Path) -> int:
        return sum(p.stat().st_size for p in Path(folder).iterdir() if p.is_file())

    @classmethod
    def load(cls, folder: Path) -> IcmGenerator:
        meta, tensors = read_generator_files(folder)
        if meta.get("method") != "icm":
            raise GeneratorFileError(f"{folder}: field 'method' is {meta.get('method')!r}, not 'icm'")
        try:
            params = IcmParams.from_dict(field(meta, "params", folder))
            template = AdapterTemplate.from_json(field(meta, "template", folder))
            shape = field(meta, "shape", folder)
            cvae = IcmCvae(int(shape["length"]), int(shape["c_dim"]), params, int(shape.get("hidden", 0)))
        except (KeyError, TypeError, ValueError) as err:
            raise GeneratorFileError(f"{folder}: malformed metadata ({type(err).__name__}: {err})") from None
        state = {}
        for key, value in cvae.saved_state().items():
            stored = tensor(tensors, f"cvae.{key}", folder, tuple(value.shape)).float()
            state[key] = stored
        cvae.cond.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("cond.")})
        cvae.decoder.load_state_dict({k[8:]: v for k, v in state.items() if k.startswith("decoder.")})
        cvae.c_mean.copy_(state["c_mean"])
        cvae.c_scale.copy_(state["c_scale"])
        n = 2 * len(template.modules)
        mean = tensor(tensors, "stats.mean", folder, (n,))
        std = tensor(tensors, "stats.std", folder, (n,))
        return cls(params, template, cvae, mean, std, dict(meta.get("info") or {}))


def icm_key(records: Sequence[AdapterRecord], params: IcmParams, base_fingerprint: str) -> str:
    """Identity of an ICM generator: its adapters and their snapshots (checksums), params and base."""
    payload = {
        "method": "icm",
        "adapters": sorted(f"{r.checksum}:{r.extra_checksums.get(SNAPSHOTS_FILE)}" for r in records),
        "params": params.to_dict(),
        "base": base_fingerprint,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
