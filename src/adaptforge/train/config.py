"""Training configuration: one frozen :class:`~adaptforge.params.Params` with declared defaults and ranges.

Its ``to_dict()`` is stored in recipes and checkpoints (resume compares it key by key), so field names,
defaults and the JSON shape (``targets`` a list or null, ``sampler_options`` a mapping) are part of the format.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from adaptforge.params import Params, param

# Defaults that differ by backbone kind; everything else is shared.
_KIND_DEFAULTS: dict[str, dict[str, Any]] = {
    "encoder": {"lr": 1e-3, "max_length": 128, "precision": "fp32"},
    "causal": {"lr": 3e-4, "max_length": 256, "precision": "bf16"},
}
# Settings added after checkpoints were first written, with the value every run had before: a checkpoint without
# the key resumes unchanged only with that value.
BEFORE_ADDED: dict[str, Any] = {"precision": "fp32"}


@dataclass(frozen=True, kw_only=True)
class TrainConfig(Params):
    """How one LoRA adapter is trained (on one task or, through ``sampler``, on several)."""

    label: ClassVar[str] = "train config"

    rank: int = param(8, ge=1, help="LoRA rank r")
    alpha: float = param(16.0, gt=0, help="LoRA alpha; scale = alpha / r (or alpha / sqrt(r) with use_rslora)")
    use_rslora: bool = param(False, help="rank-stabilised LoRA: scale = alpha / sqrt(r)")
    dropout: float = param(0.0, ge=0, lt=1, help="LoRA dropout; the base model's own dropout follows its config")
    targets: tuple[str, ...] | None = param(None, help="module name suffixes; null: the backbone's default")
    lr: float | None = param(None, gt=0, help="learning rate; null: 1e-3 for encoders, 3e-4 for causal LMs")
    weight_decay: float = param(0.0, ge=0, help="AdamW weight decay")
    warmup_ratio: float = param(
        0.06, ge=0, lt=1, help="linear warm-up over this fraction of steps, then linear decay to 0"
    )
    grad_clip: float = param(1.0, help="max gradient norm; <= 0: no clipping")
    epochs: int = param(3, ge=1, help="passes over the training data (unless steps is set)")
    batch_size: int = param(32, ge=1, help="examples per step")
    grad_accum: int = param(
        1, ge=1, help="micro-batches per step: each holds batch_size / grad_accum examples, gradients summed"
    )
    max_length: int | None = param(None, ge=8, help="tokens; null: 128 for encoders, 256 for causal LMs")
    precision: str | None = param(
        None,
        choices=("fp32", "bf16"),
        help="the forward pass in float32, or in bfloat16 under torch autocast (LoRA weights, gradients and AdamW "
        "stay float32); null: bf16 for causal LMs (1.36x the tokens/s, the same dev exact match: "
        "docs/experiments/llm_sft_speed.md), fp32 for encoders",
    )
    max_train: int | None = param(
        None, ge=1, help="cap on training examples (label-stratified seeded sample); null: all"
    )
    temperature: float = param(0.05, gt=0, help="encoder scorer: cosine / temperature")
    seed: int = param(0, help="seed of the training sample, the data order, the task sampler, LoRA init and dropout")
    checkpoint_every: int = param(50, ge=0, help="steps between resumable checkpoints (0: never)")
    sampler: str = param("uniform", help="multi-task training: which task each step's batch comes from")
    sampler_options: dict[str, Any] = param(default_factory=dict, help="the sampler's config (see train/samplers/)")
    tasks_per_step: int = param(
        1, ge=1, help="B: task sub-batches in every step's batch (batch_size is split evenly among them)"
    )
    steps: int | None = param(None, ge=1, help="null: epochs x (batches in one pass over every task)")
    eval_every: int = param(
        0, ge=0, help="steps between dev-loss checks of every task (curves, adaptive samplers); 0: never"
    )
    eval_examples: int = param(64, ge=1, help="dev examples per task in those checks")
    snapshots: int = param(
        0, ge=0, help="keep this many evenly spaced snapshots of the LoRA factors over the run (ICM-LoRA's data)"
    )

    def check(self) -> None:
        self.require(
            "batch_size",
            self.batch_size % self.tasks_per_step == 0,
            f"a multiple of tasks_per_step ({self.tasks_per_step}), so every task sub-batch has the same size",
        )
        self.require(
            "batch_size",
            self.batch_size % (self.tasks_per_step * self.grad_accum) == 0,
            f"a multiple of tasks_per_step x grad_accum ({self.tasks_per_step} x {self.grad_accum}), so every "
            "micro-batch has the same size",
        )

    def resolved(self, kind: str, default_targets: tuple[str, ...]) -> TrainConfig:
        """Fill the per-kind defaults and every sampler option (``candidates`` unset: ``2 * tasks_per_step``)
        so the stored recipe says exactly what ran."""
        from adaptforge.train.samplers import SAMPLERS, CandidateConfig  # the registry loads samplers lazily

        updates: dict[str, Any] = {k: v for k, v in _KIND_DEFAULTS[kind].items() if getattr(self, k) is None}
        if self.targets is None:
            updates["targets"] = tuple(default_targets)
        options = SAMPLERS.get(self.sampler).parse_params(self.sampler_options)
        if isinstance(options, CandidateConfig) and options.candidates is None:
            options = dataclasses.replace(options, candidates=options.b_hat(self.tasks_per_step))
        updates["sampler_options"] = options.to_dict()
        return dataclasses.replace(self, **updates)
