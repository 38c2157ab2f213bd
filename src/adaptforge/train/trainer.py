"""LoRA training, single-task or multi-task, top to bottom.

One loop serves both: each task is a stream of batches whose order is a pure function of
(seed, task index, epoch), and a task sampler (train/samplers/) picks the streams of every step:
``tasks_per_step`` sub-batches of ``batch_size / tasks_per_step`` examples, each scored with its own
task's label set, their losses averaged into one update. Single-task training is the one-stream
case. Samplers that look at tasks before choosing (DRM) get an evaluator of candidates' next
batches; every sampler gets each trained sub-batch's loss from the step's forward pass (MPTS's risk
target by default), and a sampler that asks for it (``mpts:risk_target=post_update``) also gets that
loss measured again after the update. Both run in eval mode without gradients and never touch the
torch RNG, so they change no dropout draw. LoRA layers are injected with PEFT into the backbone
for the duration of the run and removed afterwards (``unload``), so the shared backbone is
unchanged and no model copy is made. The result is a :class:`LoraDelta` read from the trained
LoRA layers with PEFT's own per-module scaling.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from safetensors import SafetensorError

from adaptforge.adapters import matches_target
from adaptforge.backbone import Backbone
from adaptforge.batching import Batch, EncodedSplit, batch_order, make_batch
from adaptforge.core import AdaptforgeError, LoraDelta, LoraModule
from adaptforge.evaluate import predict_logits
from adaptforge.generation import mean_response_loss
from adaptforge.layers import lora_layers, mostly_transposed
from adaptforge.progress import Steps
from adaptforge.scorers import LabelInputs, Scorer, describe, make_scorer
from adaptforge.snapshots import Snapshots, snapshot_steps
from adaptforge.tasks import Task
from adaptforge.train.checkpoint import load_checkpoint, restore, save_checkpoint
from adaptforge.train.config import BEFORE_ADDED, TrainConfig
from adaptforge.train.samplers import TaskInfo, TaskSampler, make_sampler

log = logging.getLogger(__name__)
ProgressFn = Callable[[int, int, float, float], None]  # (step, total_steps, loss, tokens per second)


@dataclass
class TrainResult:
    delta: LoraDelta
    config: TrainConfig
    tasks: list[str] = field(default_factory=list)
    history: list[tuple[int, int, float]] = field(default_factory=list)  # (step, task index, batch loss)
    curves: dict[str, list[tuple[int, float, float]]] = field(default_factory=dict)  # task -> (step, dev loss, acc)
    draws: list[int] = field(default_factory=list)  # batches drawn per task
    evaluations: int = 0  # task evaluations the sampler spent (choosing or measuring risk)
    sampler_seconds: float = 0.0  # wall time of the sampler's own compute (choosing, learning), evaluations excluded
    evaluation_seconds: float = 0.0  # wall time of the task evaluations it asked for (forward passes)
    n_train: int = 0
    seconds: float = 0.0
    examples_per_second: float = 0.0
    tokens_per_second: float = 0.0  # input tokens (prompt + response for SFT, padding excluded) per second
    resumed_from: int | None = None
    snapshots: Snapshots | None = None  # cfg.snapshots evenly spaced copies of the factors (no demonstrations)


def lora_config(cfg: TrainConfig, transposed: bool = False) -> LoraConfig:
    """PEFT's config for ``cfg``; ``transposed``: the targets are GPT-2 ``Conv1D`` layers (``fan_in_fan_out``)."""
    return LoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=list(cfg.targets or ()),
        use_rslora=cfg.use_rslora,
        bias="none",
        fan_in_fan_out=transposed,
    )


def extract_delta(peft_model: torch.nn.Module, adapter: str = "default") -> LoraDelta:
    """Read A, B and PEFT's scaling of every LoRA layer (module paths relative to the base model)."""
    modules: dict[str, LoraModule] = {}
    prefix = "base_model.model."
    for name, module in peft_model.named_modules():
        lora_a = getattr(module, "lora_A", None)
        if not isinstance(lora_a, torch.nn.ModuleDict) or adapter not in lora_a:
            continue
        rel = name[len(prefix) :] if name.startswith(prefix) else name
        modules[rel] = LoraModule(
            A=lora_a[adapter].weight.detach().clone(),
            B=module.lora_B[adapter].weight.detach().clone(),
            scale=float(module.scaling[adapter]),
        )
    if not modules:
        raise AdaptforgeError("no LoRA layers found in the trained model")
    return LoraDelta(modules)


def forward_precision(precision: str | None) -> torch.autocast:
    """The training forward's number format: ``bf16`` runs it under bfloat16 autocast (matmuls in bfloat16, the
    LoRA master weights, their gradients and the optimizer state float32), ``fp32`` as the weights are."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")


def lr_factor(step: int, total: int, warmup_ratio: float) -> float:
    """Linear warm-up then linear decay to zero: a pure function of the step, so resuming needs no state."""
    warmup = max(1, int(warmup_ratio * total))
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


@dataclass
class TaskStream:
    """One task's tokenized training data; batch ``k`` of the stream is fixed by (seed, index, k)."""

    task: Task
    index: int
    encoded: EncodedSplit
    labels: LabelInputs
    batch_size: int
    seed: int
    _order: tuple[int, list[list[int]]] | None = None

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.encoded) / self.batch_size)

    def batch(self, draw: int) -> Batch:
        epoch, pos = divmod(draw, self.steps_per_epoch)
        if self._order is None or self._order[0] != epoch:
            gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch + 7_919 * self.index)
            self._order = (epoch, batch_order(self.encoded.lengths(), self.batch_size, shuffle=True, generator=gen))
        return make_batch(self.encoded, self._order[1][pos])


def check_targets(backbone: Backbone, targets: tuple[str, ...]) -> bool:
    """Every target names linear layers (nn.Linear or GPT-2 Conv1D) of the base (PEFT's rule: a module path or
    its last parts); returns whether most targeted layers are ``Conv1D`` (PEFT's ``fan_in_fan_out``)."""
    linear = list(lora_layers(backbone.model))
    missing = [t for t in targets if not any(matches_target(n, t) for n in linear)]
    if missing:
        names = sorted({n.rsplit(".", 1)[-1] for n in linear})
        raise AdaptforgeError(
            f"--targets: {', '.join(repr(t) for t in missing)} match(es) no linear layer of {backbone.name}; "
            f"its linear layers are named {', '.join(names)}"
        )
    return mostly_transposed(backbone.model, [n for n in linear if any(matches_target(n, t) for t in targets)])


def resume_mismatch(saved: dict, current: dict) -> str | None:
    """Which setting differs between a checkpoint and the run asked for, named (``None``: same run)."""
    for key, what in (("tasks", "the tasks"), ("base", "the base model"), ("data", "the training data")):
        if saved.get(key) != current[key]:
            return f"{what} changed since the checkpoint was written"
    old, new = saved.get("config") or {}, current["config"]
    added = {k: v for k, v in TrainConfig().to_dict().items() if k not in old and new.get(k) == v}
    added |= {k: v for k, v in BEFORE_ADDED.items() if k not in old}  # what the run had before the setting existed
    old = {**added, **old}  # a setting added since the checkpoint was written, left at its default, is no change
    diffs = [f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    return f"the training settings changed ({'; '.join(diffs)})" if diffs else None


def data_fingerprint(tasks: list[Task], cfg: TrainConfig) -> str:
    h = hashlib.sha256(f"{cfg.seed}|{cfg.max_train}".encode())
    for task in tasks:
        h.update(f"|{task.name}|".encode())
        for e in task.sample("train", cfg.max_train, seed=cfg.seed):
            h.update(f"{e.label}\t{e.text}\n".encode())
    return h.hexdigest()[:16]


def task_identifier(scorer: Scorer, task: Task, n_train: int) -> tuple[float, ...]:
    """What the sampler knows a task by (MPTS's identifier): the embedding of its description and label
    names (:func:`describe`) followed by its log training size and label count."""
    return (*describe(scorer, task).astype(float).tolist(), math.log(n_train), float(len(task.labels)))


def batch_losses(scorer: Scorer, model: torch.nn.Module, batches: Sequence[tuple[Batch, LabelInputs]]) -> list[float]:
    """Loss of each batch under ``model`` in eval mode without gradients (no dropout, no RNG use)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return [float(scorer.loss(model, batch, labels)) for batch, labels in batches]
    finally:
        model.train(was_training)


def dev_check(scorer: Scorer, model: torch.nn.Module, task: Task, n: int, seed: int) -> tuple[float, float]:
    """Dev loss and accuracy on a fixed sample, without touching the dropout RNG (a generation task: its response
    loss, accuracy NaN; decoding every few steps would cost more than the training)."""
    split = "dev" if "dev" in task.splits else "train"
    if task.generative:
        encoded = scorer.encode(task, task.sample(split, n, seed=seed))
        return mean_response_loss(scorer, model, encoded, 16), float("nan")
    logits, gold = predict_logits(scorer, task, split, model, limit=n, seed=seed)
    loss = float(torch.nn.functional.cross_entropy(logits, gold))
    return loss, float((logits.argmax(-1) == gold).float().mean())


def train(
    task: Task,
    backbone: Backbone,
    cfg: TrainConfig | None = None,
    *,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    progress: ProgressFn | None = None,
    stop_after: int | None = None,
    scorer: Scorer | None = None,
) -> TrainResult:
    """Train one LoRA adapter on ``task``'s train split (see :func:`train_tasks` for the options)."""
    return train_tasks(
        [task],
        backbone,
        cfg,
        checkpoint_dir=checkpoint_dir,
        resume=resume,
        progress=progress,
        stop_after=stop_after,
        scorer=scorer,
    )


def train_tasks(
    tasks: list[Task],
    backbone: Backbone,
    cfg: TrainConfig | None = None,
    *,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    progress: ProgressFn | None = None,
    stop_after: int | None = None,
    scorer: Scorer | None = None,
) -> TrainResult:
    """Train one LoRA adapter on the train splits of ``tasks``, the sampler choosing each step's task.

    ``checkpoint_dir`` with ``resume=True`` continues from the last checkpoint there (same final
    weights as an uninterrupted run with the same seed). ``stop_after`` ends the run after that many
    steps, leaving its checkpoint behind, which is how tests simulate a killed run.
    """
    if not tasks:
        raise AdaptforgeError("train: no tasks given")
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise AdaptforgeError(f"train: task names must be unique, got {names}")
    generative = {t.generative for t in tasks}
    if len(generative) > 1:
        raise AdaptforgeError("train: the tasks mix classification and generation; train them as separate adapters")
    generative = generative.pop()
    cfg = (cfg or TrainConfig()).resolved(backbone.kind, backbone.default_targets())
    transposed = check_targets(backbone, cfg.targets or ())
    scorer = scorer or make_scorer(backbone, cfg.max_length, cfg.temperature, generative=generative)
    streams = []
    sub_batch = cfg.batch_size // (cfg.tasks_per_step * cfg.grad_accum)  # one micro-batch of one task
    for i, task in enumerate(tasks):
        examples = task.sample("train", cfg.max_train, seed=cfg.seed)
        if not generative and len({e.label for e in examples}) < 2:
            log.warning(
                "task %r: the training data holds a single label (%r); the adapter can only learn to predict it",
                task.name,
                examples[0].label if examples else None,
            )
        streams.append(
            TaskStream(task, i, scorer.encode(task, examples), scorer.encode_labels(task), sub_batch, cfg.seed)
        )
    infos = [
        TaskInfo(s.task.name, len(s.encoded), len(s.task.labels), task_identifier(scorer, s.task, len(s.encoded)))
        for s in streams
    ]
    sampler: TaskSampler = make_sampler(cfg.sampler, infos, cfg.sampler_options, seed=cfg.seed)
    per_step = cfg.tasks_per_step * cfg.grad_accum  # stream batches consumed by one optimizer step
    total = cfg.steps or math.ceil(cfg.epochs * sum(s.steps_per_epoch for s in streams) / per_step)
    meta = {"config": cfg.to_dict(), "tasks": names, "base": backbone.fingerprint, "data": data_fingerprint(tasks, cfg)}

    torch.manual_seed(cfg.seed)
    model = get_peft_model(backbone.model, lora_config(cfg, transposed))
    try:
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        start, resumed_from = 0, None
        history: list[tuple[int, int, float]] = []
        curves: dict[str, list[tuple[int, float, float]]] = {n: [] for n in names}
        draws = [0] * len(streams)
        timers = {"sampler": 0.0, "evaluation": 0.0}

        def evaluate(candidates: Sequence[int]) -> list[float]:  # the batch each candidate would train on next
            tick = time.perf_counter()
            batches = [(streams[c].batch(draws[c]), streams[c].labels) for c in candidates]
            losses = batch_losses(scorer, model, batches)
            timers["evaluation"] += time.perf_counter() - tick
            return losses

        keep_at = set(snapshot_steps(total, cfg.snapshots))
        snaps: dict[str, torch.Tensor] = {}  # "<step>/<module>/A|B"; checkpointed, so a resume keeps them
        if resume and checkpoint_dir is not None:
            ckpt = load_checkpoint(checkpoint_dir)
            if ckpt is not None:
                changed = resume_mismatch(ckpt.meta, meta)
                if changed:
                    raise AdaptforgeError(
                        f"{checkpoint_dir}: cannot resume: {changed}; resume with the same settings, or start over "
                        "without --resume (or with a new --name)"
                    )
                restore(ckpt, model, optimizer)
                sampler.load_state_dict(ckpt.meta["sampler"], ckpt.extra_tensors("sampler/"))
                start = resumed_from = ckpt.step
                history = [tuple(x) for x in ckpt.meta["history"]]
                curves = {k: [tuple(x) for x in v] for k, v in ckpt.meta["curves"].items()}
                draws = list(ckpt.meta["draws"])
                timers = {k: float(ckpt.meta.get(f"{k}_seconds", 0.0)) for k in timers}
                snaps = ckpt.extra_tensors("snapshots/")
                log.info("resuming %s from step %d/%d", "+".join(names), start, total)
        model.train()
        t0, seen, tokens = time.perf_counter(), 0, 0
        # without a caller's progress callback (compose tuned, library use), the progress logger's lines
        steps = Steps(f"train {'+'.join(names)}: steps", total, done=start) if progress is None else None
        for step in range(start, total):
            tick, evaluated = time.perf_counter(), timers["evaluation"]
            chosen = sampler.next_batch(cfg.tasks_per_step, evaluate)
            timers["sampler"] += time.perf_counter() - tick - (timers["evaluation"] - evaluated)
            for group in optimizer.param_groups:
                group["lr"] = cfg.lr * lr_factor(step, total, cfg.warmup_ratio)
            trained: list[tuple[Batch, LabelInputs]] = []
            losses = []
            for i in chosen:
                task_losses = []
                for _ in range(cfg.grad_accum):
                    batch = streams[i].batch(draws[i])
                    draws[i] += 1
                    with forward_precision(cfg.precision):
                        loss = scorer.loss(model, batch, streams[i].labels)
                    if not torch.isfinite(loss):
                        raise AdaptforgeError(
                            f"training diverged: the loss is {loss.item()} at step {step + 1}/{total} (lr {cfg.lr}); "
                            "no adapter was stored. Lower --lr"
                        )
                    # the step's loss: the mean over its task sub-batches and their micro-batches
                    (loss / (len(chosen) * cfg.grad_accum)).backward()
                    trained.append((batch, streams[i].labels))
                    task_losses.append(loss.item())
                    seen += len(batch.index)
                    tokens += sum(len(x) for x in batch.ids)
                losses.append(sum(task_losses) / len(task_losses))
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            risks = None
            if sampler.wants_risk:
                tick = time.perf_counter()
                risks = batch_losses(scorer, model, trained)
                timers["evaluation"] += time.perf_counter() - tick
            tick = time.perf_counter()
            for i, loss_value in zip(chosen, losses, strict=True):
                history.append((step, i, loss_value))
                sampler.observe(i, loss_value, step)
            if risks is not None:
                sampler.observe_risk(chosen, risks, step)
            timers["sampler"] += time.perf_counter() - tick
            done = step + 1
            if cfg.eval_every and (done % cfg.eval_every == 0 or done == total):
                dev = {s.index: dev_check(scorer, model, s.task, cfg.eval_examples, cfg.seed) for s in streams}
                for s in streams:
                    curves[s.task.name].append((done, *dev[s.index]))
                sampler.observe_eval({k: v[0] for k, v in dev.items()})
            if done in keep_at:
                for module, lora in extract_delta(model).modules.items():
                    snaps[f"{done}/{module}/A"], snaps[f"{done}/{module}/B"] = lora.A, lora.B
            if progress:
                elapsed = time.perf_counter() - t0
                progress(done, total, sum(losses) / len(losses), tokens / elapsed if elapsed > 0 else 0.0)
            elif steps is not None:
                steps.update(done, info=f"loss {sum(losses) / len(losses):.3f}")
            if (
                checkpoint_dir is not None
                and cfg.checkpoint_every
                and (done % cfg.checkpoint_every == 0 or done == stop_after)
            ):
                state = {
                    **meta,
                    "history": history,
                    "curves": curves,
                    "draws": draws,
                    "sampler": sampler.state_dict(),
                    "sampler_seconds": timers["sampler"],
                    "evaluation_seconds": timers["evaluation"],
                }
                extra = {f"sampler/{k}": v for k, v in sampler.state_tensors().items()}
                extra |= {f"snapshots/{k}": v for k, v in snaps.items()}
                try:
                    save_checkpoint(checkpoint_dir, done, state, model, optimizer, extra)
                except (OSError, SafetensorError) as err:  # a full disk, or the folder removed under us
                    raise AdaptforgeError(
                        f"could not write the checkpoint of step {done} to {checkpoint_dir}: "
                        f"{getattr(err, 'strerror', None) or err}; the previous checkpoint, if any, is kept"
                    ) from None
            if stop_after is not None and done >= stop_after:
                break
        seconds = time.perf_counter() - t0
        delta = extract_delta(model)
        bad = delta.non_finite()
        if bad is not None:
            raise AdaptforgeError(f"training diverged (lr {cfg.lr}): {bad}; no adapter was stored. Lower --lr")
    finally:
        model.unload()
        backbone.model.eval()
        backbone.model.requires_grad_(False)
    return TrainResult(
        delta,
        cfg,
        names,
        history,
        curves,
        draws,
        sampler.evaluations,
        timers["sampler"],
        timers["evaluation"],
        sum(len(s.encoded) for s in streams),
        seconds,
        seen / seconds if seconds > 0 else 0.0,
        tokens / seconds if seconds > 0 else 0.0,
        resumed_from,
        collect_snapshots(snaps),
    )


def collect_snapshots(flat: dict[str, torch.Tensor]) -> Snapshots | None:
    """``"<step>/<module>/A|B"`` tensors as :class:`Snapshots` in step order (None when there are none)."""
    by_step: dict[int, dict[str, dict[str, torch.Tensor]]] = {}
    for key, value in flat.items():
        step, module, which = key.split("/")
        by_step.setdefault(int(step), {}).setdefault(module, {})[which] = value
    if not by_step:
        return None
    steps = sorted(by_step)
    return Snapshots(steps, [{m: (f["A"], f["B"]) for m, f in by_step[s].items()} for s in steps])
