"""Model Predictive Task Sampling (Wang et al. 2025, "Model Predictive Task Sampling for Efficient and Robust
Adaptation", arXiv 2501.11039; reference code github.com/thu-rllab/MPTS).

MPTS approximates DRM (evaluate ``B-hat`` candidates, train the worst ``B``) without evaluating the
candidates: a *risk learner* predicts each candidate's risk from its identifier, and the ``B``
candidates with the highest acquisition score ``gamma_mean * mean + gamma_std * std`` are trained.
The risk learner is then updated on the losses the training step computed anyway (``risk_target=pre_update``,
the default, as the reference: "without extra pay"), so MPTS spends no task evaluation of its own;
``risk_target=post_update`` measures the trained tasks again after the update (``B`` extra forward passes).

Two risk learners (``risk_model``; the default is ``linear`` with ``risk_scale=none``, the pick of the
dev rule SELECTION_RULE_4 in ``benchmarks/sampling.py``, docs/experiments/samplers.md, fourth attempt; that rule
measured it with ``risk_target=post_update``, which the default no longer is):

- ``np``: the paper's. A small neural process / amortised VAE, as the reference's ``RiskLearner``
  (``sinusoid/Model/risklearner.py``, ``backbone_risklearner.py``): an encoder maps each
  (identifier, risk) pair to a representation, the mean of these parameterises ``q(z)`` (a diagonal
  Normal, ``sigma = 0.1 + 0.9 * sigmoid``), a decoder maps (identifier, z) to predicted risk. Trained by
  streaming variational inference (``trainer_risklearner.py``): per step, gradient steps on
  ``MSE(mean_z prediction, risk) + KL(q(z | new batch) || previous posterior)``, then the posterior
  becomes the prior. Acquisition draws ``z_samples`` values of ``z`` from the posterior of the last
  batch, re-encoded with the current weights (as the reference), and takes mean and std over them.
- ``linear``: a cheaper Bayesian linear regression of risk on ``[1, identifier]`` (Normal-Inverse-Gamma
  posterior, exponential forgetting ``rho`` so it tracks risk that changes as training proceeds);
  mean and std are the closed-form posterior mean and epistemic std (the limit of drawing weights).

**Identifiers.** The paper predicts risk from a task's parameters (its prompt embedding in the LLM
variant). Here, with tasks given ``feature_vector``s (the trainer passes the backbone's embedding of
the description and label names plus log size and label count), the identifier is their first
``identifier_dim`` principal components over the task set, each scaled to unit variance; without
feature vectors the identifier is the task's one-hot index (a finite task set names its members).

Differences from the reference, and why:

- Target. The reference trains its risk learner on a loss it computes anyway: on sinusoids the query
  loss after MAML's inner loop, from the same forward pass as the outer gradient; in MetaRL the returns
  already collected. The default ``risk_target=pre_update`` is that choice here: each trained task's
  loss on its sub-batch from the step's own forward pass (LoRA training has no inner loop, so this is
  the loss before the update, on a batch not yet trained on; it is also what ``drm`` ranks candidates
  by). The step's observations are learned at the start of the next :meth:`MPTSSampler.next_batch`
  (kept in the state until then, so a resume between steps loses nothing). ``post_update`` is an
  adaptforge option, not the paper's: it re-scores the trained batches after the optimiser step, ``B``
  extra forward passes a step (28-29% of a step on the label-subset family, docs/experiments/samplers.md).
- ``learner_steps`` gradient steps per observation (reference: 1) and ``lr`` 2e-2 (reference: 5e-4
  with one step): training here runs hundreds, not tens of thousands, of iterations. The value was
  picked on the simulated task set of ``tests/train/test_samplers.py`` (5e-3 barely moved the risk
  learner within 300 steps there), never on real test splits.
- Candidates are drawn uniformly from a finite task set (without replacement while ``B-hat <= N``),
  not sampled from a continuous task distribution.
- Dev losses (``observe_eval``) are ignored, as the reference has none.
- ``uniform_half`` (off by default) fills half the batch with uniformly chosen candidates, the
  paper's variant that keeps the average risk in check.

One option the reference does not have (its sinusoid tasks share one loss scale): ``risk_scale=log_k``
(on ``drm`` too, so the oracle and its approximation rank the same risk; ``none`` is the reference's raw
loss) divides the loss by ``ln k``, the cross-entropy of a ``k``-way task at chance, so label count
does not drive the choice (see :func:`~adaptforge.train.samplers.base.chance_scale`). The reference
rescales too where scales differ (``MetaRL/main.py`` standardises each batch's negated returns before
training the risk learner); a per-batch standardisation would not remove a per-task offset such as
ln k, so the scale here is per task.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from adaptforge.core import AdaptforgeError
from adaptforge.params import param
from adaptforge.train.samplers.base import (
    SAMPLERS,
    CandidateConfig,
    Evaluator,
    FloatArray,
    TaskInfo,
    TaskSampler,
    chance_scale,
    draw_candidates,
    is_int,
    state_floats,
)


@dataclass(frozen=True, kw_only=True)
class MPTSConfig(CandidateConfig):
    risk_model: str = param(
        "linear",
        choices=("np", "linear"),
        help="linear: Bayesian linear regression (picked by issue 13's fourth-attempt dev rule, "
        "docs/experiments/samplers.md); np: the paper's neural process",
    )
    risk_target: str = param(
        "pre_update",
        choices=("post_update", "pre_update"),
        help="risk the learner fits: pre_update, the trained tasks' losses from the step's own forward pass "
        "(the reference's choice, no extra forward pass); post_update, the same batches re-scored after the "
        "update (B extra evaluations a step)",
    )
    gamma_mean: float = param(1.0, ge=0, help="acquisition weight of the predicted risk's mean (reference: 1)")
    gamma_std: float = param(3.0, ge=0, help="acquisition weight of the predicted risk's std (reference: 3)")
    uniform_half: bool = param(False, help="train the top half by score and a uniform half of the candidates")
    z_samples: int = param(20, ge=2, help="np: draws of z per acquisition and per training pass (reference: 20)")
    identifier_dim: int = param(8, ge=1, help="principal components of the tasks' feature_vectors kept")
    hidden: int = param(32, ge=1, help="np: width of the encoder and decoder layers")
    latent: int = param(8, ge=1, help="np: dimension of z")
    lr: float = param(2e-2, gt=0, help="np: Adam learning rate of the risk learner")
    learner_steps: int = param(3, ge=1, help="np: gradient steps of streaming VI per observed batch")
    forgetting: float = param(0.95, gt=0, le=1, help="linear: rho, weight kept by past data per step (1: none)")
    prior_precision: float = param(1.0, gt=0, help="linear: prior precision of the regression weights")
    noise_prior: float = param(0.1, gt=0, help="linear: prior guess of the risk noise std (loss units)")


def identifiers(tasks: Sequence[TaskInfo], dim: int) -> FloatArray:
    """Rows identifying the tasks: ``dim`` scaled principal components of their feature vectors, or one-hot."""
    n = len(tasks)
    if tasks[0].feature_vector is None:
        return np.eye(n)
    raw = np.array([t.feature_vector for t in tasks], dtype=np.float64)
    centered = raw - raw.mean(axis=0)
    u, s, _ = np.linalg.svd(centered, full_matrices=False)
    k = int(min(dim, raw.shape[1], np.sum(s > 1e-9 * max(float(s.max()), 1e-300))))
    if k == 0:  # every task has the same features: nothing tells them apart
        return np.zeros((n, 1))
    comps = u[:, :k] * s[:k]
    signs = np.sign(comps[np.argmax(np.abs(comps), axis=0), np.arange(k)])  # fix the SVD's sign ambiguity
    comps = comps * np.where(signs == 0, 1.0, signs)
    return comps / comps.std(axis=0)


# ----------------------------------------------------------------------------------- risk learners


class _RiskNet(torch.nn.Module):
    """Encoder (x, y) -> r, mean-aggregated, -> (mu, sigma) of q(z); decoder (x, z) -> predicted risk."""

    def __init__(self, x_dim: int, hidden: int, latent: int) -> None:
        super().__init__()
        relu = torch.nn.ReLU
        self.encoder = torch.nn.Sequential(
            torch.nn.Linear(x_dim + 1, hidden), relu(), torch.nn.Linear(hidden, hidden), relu(),
            torch.nn.Linear(hidden, hidden),
        )  # fmt: skip
        self.to_hidden = torch.nn.Linear(hidden, hidden)
        self.to_mu = torch.nn.Linear(hidden, latent)
        self.to_sigma = torch.nn.Linear(hidden, latent)
        self.decoder = torch.nn.Sequential(
            torch.nn.Linear(x_dim + latent, hidden), relu(), torch.nn.Linear(hidden, hidden), relu(),
            torch.nn.Linear(hidden, 1),
        )  # fmt: skip

    def posterior(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r = self.encoder(torch.cat([x, y[:, None]], dim=1)).mean(dim=0)
        h = torch.relu(self.to_hidden(r))
        return self.to_mu(h), 0.1 + 0.9 * torch.sigmoid(self.to_sigma(h))

    def predict(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Predicted risk of every row of ``x`` (n, d) under every ``z`` (s, k): shape (s, n)."""
        s, n = z.shape[0], x.shape[0]
        pairs = torch.cat([x[None].expand(s, n, -1), z[:, None].expand(s, n, -1)], dim=2)
        return self.decoder(pairs)[..., 0]


class NeuralRiskLearner:
    """The reference's ``RiskLearner`` + ``RiskLearnerTrainer``, with its own torch generator (the global
    torch RNG, which drives the trainer's dropout and LoRA init, is never touched)."""

    def __init__(self, x_dim: int, cfg: MPTSConfig, seed: int) -> None:
        self.cfg = cfg
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = _RiskNet(x_dim, cfg.hidden, cfg.latent)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=cfg.lr)
        self.generator = torch.Generator().manual_seed(seed)
        self.prior_mu = torch.zeros(cfg.latent)
        self.prior_sigma = torch.ones(cfg.latent)
        self.last_x: torch.Tensor | None = None
        self.last_y: torch.Tensor | None = None

    def _z(self, mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        eps = torch.randn(self.cfg.z_samples, mu.shape[0], generator=self.generator)
        return mu + sigma * eps

    def predict(self, x: FloatArray) -> tuple[FloatArray, FloatArray]:
        with torch.no_grad():
            if self.last_x is None or self.last_y is None:
                mu, sigma = self.prior_mu, self.prior_sigma
            else:
                mu, sigma = self.net.posterior(self.last_x, self.last_y)
            pred = self.net.predict(torch.as_tensor(x, dtype=torch.float32), self._z(mu, sigma))
        return pred.mean(0).double().numpy(), pred.std(0).double().numpy()

    def update(self, x: FloatArray, y: FloatArray) -> float:
        xt, yt = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.float32)
        prior = torch.distributions.Normal(self.prior_mu, self.prior_sigma)
        loss = torch.zeros(())
        for _ in range(self.cfg.learner_steps):
            self.optimizer.zero_grad()
            mu, sigma = self.net.posterior(xt, yt)
            pred = self.net.predict(xt, self._z(mu, sigma)).mean(0)
            kl = torch.distributions.kl_divergence(torch.distributions.Normal(mu, sigma), prior).sum()
            loss = torch.sum((pred - yt) ** 2) + kl
            loss.backward()
            self.optimizer.step()
        self.prior_mu, self.prior_sigma = mu.detach().clone(), sigma.detach().clone()
        self.last_x, self.last_y = xt, yt
        return float(loss.detach())

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {f"net/{k}": v.detach().clone() for k, v in self.net.state_dict().items()}
        for idx, entry in self.optimizer.state_dict()["state"].items():
            for key, value in entry.items():
                out[f"adam/{idx}/{key}"] = torch.as_tensor(value).clone()
        out["prior_mu"], out["prior_sigma"] = self.prior_mu.clone(), self.prior_sigma.clone()
        out["generator"] = self.generator.get_state()
        if self.last_x is not None and self.last_y is not None:
            out["last_x"], out["last_y"] = self.last_x.clone(), self.last_y.clone()
        return out

    def load(self, tensors: Mapping[str, Any], owner: str) -> None:
        """Restore :meth:`tensors` (checked against this learner's shapes before anything is assigned)."""

        def get(key: str, like: torch.Tensor | None = None) -> torch.Tensor:
            value = tensors.get(key)
            if not isinstance(value, torch.Tensor) or (like is not None and value.shape != like.shape):
                shape = tuple(like.shape) if like is not None else "any"
                raise AdaptforgeError(f"{owner}: risk learner tensor {key!r} is missing or not of shape {shape}")
            return value.clone()

        net = {k: get(f"net/{k}", v) for k, v in self.net.state_dict().items()}
        n_params = len(list(self.net.parameters()))
        state: dict[int, dict[str, torch.Tensor]] = {}
        for idx in range(n_params):
            entry = {k.split("/", 2)[2]: v.clone() for k, v in tensors.items() if k.startswith(f"adam/{idx}/")}
            if entry:
                state[idx] = entry
        prior_mu, prior_sigma = get("prior_mu", self.prior_mu), get("prior_sigma", self.prior_sigma)
        generator = get("generator")
        has_last = "last_x" in tensors
        last_x, last_y = (get("last_x"), get("last_y")) if has_last else (None, None)
        self.net.load_state_dict(net)
        groups = self.optimizer.state_dict()["param_groups"]
        self.optimizer.load_state_dict({"state": state, "param_groups": groups})
        self.generator.set_state(generator)
        self.prior_mu, self.prior_sigma, self.last_x, self.last_y = prior_mu, prior_sigma, last_x, last_y


class LinearRiskLearner:
    """Bayesian linear regression ``risk = [1, x] . w + e`` with a Normal-Inverse-Gamma prior (mean 0,
    precision ``prior_precision``, ``a0 = 1``, ``b0 = noise_prior^2``) and sufficient statistics discounted
    by ``forgetting`` at every update, so the posterior follows risk as training lowers it."""

    def __init__(self, x_dim: int, cfg: MPTSConfig) -> None:
        self.cfg, self.dim = cfg, x_dim + 1
        self.sxx, self.sxy = np.zeros((self.dim, self.dim)), np.zeros(self.dim)
        self.syy, self.m = 0.0, 0.0

    @staticmethod
    def _phi(x: FloatArray) -> FloatArray:
        return np.concatenate([np.ones((x.shape[0], 1)), x], axis=1)

    def predict(self, x: FloatArray) -> tuple[FloatArray, FloatArray]:
        precision = self.cfg.prior_precision * np.eye(self.dim) + self.sxx
        cov = np.linalg.inv(precision)
        mu = cov @ self.sxy
        b = self.cfg.noise_prior**2 + 0.5 * max(self.syy - float(mu @ precision @ mu), 0.0)
        noise = b / (1.0 + 0.5 * self.m)
        phi = self._phi(x)
        return phi @ mu, np.sqrt(noise * np.sum((phi @ cov) * phi, axis=1))

    def update(self, x: FloatArray, y: FloatArray) -> None:
        phi, rho = self._phi(x), self.cfg.forgetting
        self.sxx = rho * self.sxx + phi.T @ phi
        self.sxy = rho * self.sxy + phi.T @ y
        self.syy = rho * self.syy + float(y @ y)
        self.m = rho * self.m + len(y)

    def state(self) -> dict[str, Any]:
        return {"sxx": self.sxx.tolist(), "sxy": self.sxy.tolist(), "syy": self.syy, "m": self.m}

    def load(self, state: Mapping[str, Any]) -> None:
        d = self.dim
        sxx, sxy = state_floats(state, "sxx", (d, d)), state_floats(state, "sxy", (d,))
        syy, m = float(state_floats(state, "syy", ())), float(state_floats(state, "m", ()))
        self.sxx, self.sxy, self.syy, self.m = sxx, sxy, syy, m


# ------------------------------------------------------------------------------------------- sampler


@SAMPLERS.register
class MPTSSampler(TaskSampler[MPTSConfig]):
    """Model Predictive Task Sampling: predict every candidate's risk, train the ``B`` of ``B-hat`` candidates
    with the highest ``gamma_mean * mean + gamma_std * std`` (see the module docstring).

    :meth:`probabilities` is the candidate distribution (uniform); :meth:`predict` gives the risk
    learner's mean and std for every task. Costs no task evaluation with the default ``risk_target=pre_update``
    (``B`` a step with ``post_update``).
    """

    name = "mpts"
    reference_url = "https://arxiv.org/abs/2501.11039"
    config: MPTSConfig

    @property
    def wants_risk(self) -> bool:
        return self.config.risk_target == "post_update"  # pre_update learns from the step's own training losses

    def __init__(
        self, config: MPTSConfig | Mapping[str, Any] | None = None, *, tasks: Sequence[TaskInfo], seed: int = 0
    ) -> None:
        super().__init__(config, tasks=tasks, seed=seed)
        self._scale = chance_scale(self.tasks, self.config.risk_scale, self.owner())
        self._pending: list[tuple[int, float]] = []  # pre_update: this step's (task, loss), learned at the next step
        self.identifiers = identifiers(self.tasks, self.config.identifier_dim)
        x_dim = self.identifiers.shape[1]
        self.learner: NeuralRiskLearner | LinearRiskLearner = (
            NeuralRiskLearner(x_dim, self.config, self.seed)
            if self.config.risk_model == "np"
            else LinearRiskLearner(x_dim, self.config)
        )
        self.learner_loss = math.nan

    def probabilities(self) -> FloatArray:
        return np.full(self.n_tasks, 1.0 / self.n_tasks)

    def predict(self, tasks: NDArray[np.int64] | None = None) -> tuple[FloatArray, FloatArray]:
        """Predicted risk (mean, std) of ``tasks`` (all by default)."""
        x = self.identifiers if tasks is None else self.identifiers[tasks]
        return self.learner.predict(x)

    def next(self) -> int:
        return self.next_batch(1)[0]

    def next_batch(self, size: int, evaluate: Evaluator | None = None) -> list[int]:
        """Top ``size`` of ``candidates`` by acquisition score (``evaluate`` is not used: that is the point)."""
        size = self._check_size(size)
        cfg = self.config
        self._learn_pending()
        b_hat = cfg.b_hat(size)
        if size > b_hat:
            raise AdaptforgeError(
                f"{self.owner()}: candidates (B-hat) = {b_hat} is below the {size} tasks per step; "
                f"pass --sampler-opt candidates={size} or more (or leave it unset: 2 B)"
            )
        pool = draw_candidates(self._rng, self.n_tasks, b_hat)
        mean, std = self.predict(pool)
        order = np.argsort(-(cfg.gamma_mean * mean + cfg.gamma_std * std), kind="stable")
        n_top = size - size // 2 if cfg.uniform_half else size
        chosen = list(pool[order[:n_top]])
        if n_top < size:  # the uniform half: random candidates among those not chosen by score
            rest = pool[order[n_top:]]
            chosen += list(rest[self._rng.permutation(len(rest))[: size - n_top]])
        chosen_idx = np.array(chosen, dtype=np.int64)
        np.add.at(self._draws, chosen_idx, 1)
        return [int(i) for i in chosen_idx]

    def _observe_risk(self, tasks: list[int], risks: list[float], step: int) -> None:
        self._learn(tasks, risks)

    def _observe(self, task: int, loss: float, step: int) -> None:
        if self.config.risk_target == "pre_update":
            self._pending.append((task, loss))

    def _learn_pending(self) -> None:
        """pre_update: one risk-learner update on the previous step's batch (its B tasks, as post_update's)."""
        if self._pending:
            tasks, losses = zip(*self._pending, strict=True)
            self._pending = []
            self._learn(list(tasks), list(losses))

    def _learn(self, tasks: list[int], losses: Sequence[float]) -> None:
        x = self.identifiers[tasks]
        y = np.asarray(losses, dtype=np.float64) / self._scale[tasks]
        if isinstance(self.learner, NeuralRiskLearner):
            self.learner_loss = self.learner.update(x, y)
        else:
            self.learner.update(x, y)

    def _state(self) -> dict[str, Any]:
        learned = self.learner.state() if isinstance(self.learner, LinearRiskLearner) else {}
        return {**learned, "pending": [[t, v] for t, v in self._pending]}

    def _tensors(self) -> dict[str, Any]:
        return self.learner.tensors() if isinstance(self.learner, NeuralRiskLearner) else {}

    def _load_state(self, state: Mapping[str, Any], tensors: Mapping[str, Any]) -> None:
        pending = state.get("pending", [])
        if not isinstance(pending, list) or not all(
            isinstance(p, (list, tuple)) and len(p) == 2 and is_int(p[0]) and 0 <= p[0] < self.n_tasks for p in pending
        ):
            raise AdaptforgeError(f"{self.owner()}: malformed 'pending' in the state: {pending!r}")
        restored = [(int(t), self._check_loss(int(t), v)) for t, v in pending]
        if isinstance(self.learner, LinearRiskLearner):
            self.learner.load(state)
        else:
            self.learner.load(tensors, self.owner())
        self._pending = restored
