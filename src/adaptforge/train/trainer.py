"""Single-task LoRA training, top to bottom.

LoRA layers are injected with PEFT into the backbone for the duration of the run and removed
afterwards (``unload``), so the shared backbone is unchanged and no model copy is made. The result
is a :class:`LoraDelta` read from the trained LoRA layers with PEFT's own per-module scaling.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model

from adaptforge.backbone import Backbone
from adaptforge.batching import batch_order, make_batch
from adaptforge.core import AdaptforgeError, LoraDelta, LoraModule
from adaptforge.scorers import Scorer, make_scorer
from adaptforge.tasks import Task
from adaptforge.train.checkpoint import load_checkpoint, restore, save_checkpoint
from adaptforge.train.config import TrainConfig

log = logging.getLogger(__name__)
ProgressFn = Callable[[int, int, float], None]  # (step, total_steps, loss)


@dataclass
class TrainResult:
    delta: LoraDelta
    config: TrainConfig
    history: list[tuple[int, float]] = field(default_factory=list)  # (step, batch loss)
    n_train: int = 0
    seconds: float = 0.0
    examples_per_second: float = 0.0
    resumed_from: int | None = None


def lora_config(cfg: TrainConfig) -> LoraConfig:
    return LoraConfig(
        r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=list(cfg.targets or ()),
        use_rslora=cfg.use_rslora, bias="none",
    )


def extract_delta(peft_model: torch.nn.Module, adapter: str = "default") -> LoraDelta:
    """Read A, B and PEFT's scaling of every LoRA layer (module paths relative to the base model)."""
    modules: dict[str, LoraModule] = {}
    prefix = "base_model.model."
    for name, module in peft_model.named_modules():
        lora_a = getattr(module, "lora_A", None)
        if not isinstance(lora_a, torch.nn.ModuleDict) or adapter not in lora_a:
            continue
        rel = name[len(prefix):] if name.startswith(prefix) else name
        modules[rel] = LoraModule(
            A=lora_a[adapter].weight.detach().clone(),
            B=module.lora_B[adapter].weight.detach().clone(),
            scale=float(module.scaling[adapter]),
        )
    if not modules:
        raise AdaptforgeError("no LoRA layers found in the trained model")
    return LoraDelta(modules)


def lr_factor(step: int, total: int, warmup_ratio: float) -> float:
    """Linear warm-up then linear decay to zero: a pure function of the step, so resuming needs no state."""
    warmup = max(1, int(warmup_ratio * total))
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def data_fingerprint(task: Task, n: int, cfg: TrainConfig) -> str:
    h = hashlib.sha256(f"{task.name}|{n}|{cfg.seed}|{cfg.max_train}".encode())
    for e in task.sample("train", cfg.max_train, seed=cfg.seed):
        h.update(f"{e.label}\t{e.text}\n".encode())
    return h.hexdigest()[:16]


def train(
    task: Task, backbone: Backbone, cfg: TrainConfig | None = None, *, checkpoint_dir: Path | None = None,
    resume: bool = False, progress: ProgressFn | None = None, stop_after: int | None = None,
    scorer: Scorer | None = None,
) -> TrainResult:
    """Train one LoRA adapter on ``task``'s train split.

    ``checkpoint_dir`` with ``resume=True`` continues from the last checkpoint there (same final
    weights as an uninterrupted run with the same seed). ``stop_after`` ends the run after that many
    steps, leaving its checkpoint behind, which is how tests simulate a killed run.
    """
    cfg = (cfg or TrainConfig()).resolved(backbone.kind, backbone.default_targets())
    scorer = scorer or make_scorer(backbone, cfg.max_length, cfg.temperature)
    examples = task.sample("train", cfg.max_train, seed=cfg.seed)
    encoded, labels = scorer.encode(task, examples), scorer.encode_labels(task)
    lengths = encoded.lengths()
    steps_per_epoch = math.ceil(len(encoded) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    meta = {"config": cfg.to_dict(), "task": task.name, "base": backbone.fingerprint,
            "data": data_fingerprint(task, len(encoded), cfg)}

    torch.manual_seed(cfg.seed)
    model = get_peft_model(backbone.model, lora_config(cfg))
    try:
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        start, resumed_from, history = 0, None, []
        if resume and checkpoint_dir is not None:
            ckpt = load_checkpoint(checkpoint_dir)
            if ckpt is not None:
                for key in ("config", "task", "base", "data"):
                    if ckpt.meta.get(key) != meta[key]:
                        raise AdaptforgeError(
                            f"{checkpoint_dir}: checkpoint was made with a different {key}; "
                            "resume with the same settings or delete the checkpoint"
                        )
                restore(ckpt, model, optimizer)
                start = resumed_from = ckpt.step
                history = [tuple(x) for x in ckpt.meta.get("history", [])]
                log.info("resuming %s from step %d/%d", task.name, start, total)
        model.train()
        t0, seen = time.perf_counter(), 0
        order: list[list[int]] = []
        for step in range(start, total):
            epoch, pos = divmod(step, steps_per_epoch)
            if pos == 0 or not order:
                gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
                order = batch_order(lengths, cfg.batch_size, shuffle=True, generator=gen)
            batch = make_batch(encoded, order[pos])
            for group in optimizer.param_groups:
                group["lr"] = cfg.lr * lr_factor(step, total, cfg.warmup_ratio)
            loss = scorer.loss(model, batch, labels)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            seen += len(batch.index)
            history.append((step, loss.item()))
            if progress:
                progress(step + 1, total, history[-1][1])
            done = step + 1
            if checkpoint_dir is not None and cfg.checkpoint_every and (
                done % cfg.checkpoint_every == 0 or done == stop_after
            ):
                save_checkpoint(checkpoint_dir, done, {**meta, "history": history}, model, optimizer)
            if stop_after is not None and done >= stop_after:
                break
        seconds = time.perf_counter() - t0
        delta = extract_delta(model)
    finally:
        model.unload()
        backbone.model.eval()
        backbone.model.requires_grad_(False)
    return TrainResult(delta, cfg, history, len(encoded), seconds, seen / seconds if seconds > 0 else 0.0, resumed_from)
