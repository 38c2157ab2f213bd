"""Training configuration: one frozen dataclass with commented defaults, unknown keys rejected."""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from adaptforge.core import AdaptforgeError

# Defaults that differ by backbone kind; everything else is shared.
_KIND_DEFAULTS: dict[str, dict[str, Any]] = {
    "encoder": {"lr": 1e-3, "max_length": 128},
    "causal": {"lr": 3e-4, "max_length": 256},
}


@dataclass(frozen=True)
class TrainConfig:
    rank: int = 8  # LoRA rank r
    alpha: float = 16.0  # LoRA alpha; scale = alpha / r (or alpha / sqrt(r) with use_rslora)
    use_rslora: bool = False
    dropout: float = 0.0  # LoRA dropout; the base model's own dropout follows its config
    targets: tuple[str, ...] | None = None  # module name suffixes; None: the backbone's default
    lr: float | None = None  # None: 1e-3 for encoders, 3e-4 for causal LMs
    weight_decay: float = 0.0
    warmup_ratio: float = 0.06  # linear warm-up over this fraction of steps, then linear decay to 0
    grad_clip: float = 1.0
    epochs: int = 3
    batch_size: int = 32
    max_length: int | None = None  # tokens; None: 128 for encoders, 256 for causal LMs
    max_train: int | None = None  # cap on training examples (label-stratified seeded sample)
    temperature: float = 0.05  # encoder scorer: cosine / temperature
    seed: int = 0
    checkpoint_every: int = 50  # steps between resumable checkpoints (0: never)
    # Multi-task training: which task each step's batch comes from (see train/samplers.py).
    sampler: str = "uniform"
    sampler_options: dict[str, Any] = field(default_factory=dict)
    steps: int | None = None  # None: epochs x (batches in one pass over every task)
    eval_every: int = 0  # steps between dev-loss checks of every task (curves, adaptive samplers); 0: never
    eval_examples: int = 64  # dev examples per task in those checks

    def __post_init__(self) -> None:
        checks = {
            "rank": self.rank >= 1,
            "alpha": self.alpha > 0,
            "dropout": 0 <= self.dropout < 1,
            "epochs": self.epochs >= 1,
            "batch_size": self.batch_size >= 1,
            "warmup_ratio": 0 <= self.warmup_ratio < 1,
            "temperature": self.temperature > 0,
            "checkpoint_every": self.checkpoint_every >= 0,
            "lr": self.lr is None or self.lr > 0,
            "max_train": self.max_train is None or self.max_train >= 1,
            "max_length": self.max_length is None or self.max_length >= 8,
            "steps": self.steps is None or self.steps >= 1,
            "eval_every": self.eval_every >= 0,
            "eval_examples": self.eval_examples >= 1,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise AdaptforgeError(f"train config: invalid value for {bad[0]!r}: {getattr(self, bad[0])!r}")
        if self.targets is not None and not isinstance(self.targets, tuple):
            object.__setattr__(self, "targets", tuple(self.targets))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        fields = {f.name for f in dataclasses.fields(cls)}
        for key in data:
            if key not in fields:
                close = difflib.get_close_matches(key, fields, n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise AdaptforgeError(f"train config: unknown key {key!r}.{hint}")
        return cls(**dict(data))

    def resolved(self, kind: str, default_targets: tuple[str, ...]) -> TrainConfig:
        """Fill the per-kind defaults so the stored recipe says exactly what ran."""
        updates = {k: v for k, v in _KIND_DEFAULTS[kind].items() if getattr(self, k) is None}
        if self.targets is None:
            updates["targets"] = tuple(default_targets)
        return dataclasses.replace(self, **updates)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["sampler_options"] = dict(self.sampler_options)
        d["targets"] = list(self.targets) if self.targets is not None else None
        return d
