"""Baselines that use the shots without any library: a class-prototype classifier and a LoRA trained on them.

- :func:`prototype_eval`: nearest class mean of base-model embeddings (Prototypical Networks, Snell et al.
  2017, https://arxiv.org/abs/1703.05175). Each label's prototype is the mean unit embedding of its shots;
  a label without shots falls back to the embedding of the label string, so k = 0 is the zero-shot
  similarity of text and label names. Texts are embedded exactly as the scorer sees them (description
  prompt included, same truncation): the scorer's token ids, decoded.
- :func:`train_on_shots`: an ordinary LoRA trained on the k shots only (LoRA, Hu et al. 2021,
  https://arxiv.org/abs/2106.09685), with small-data defaults.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from adaptforge.backbone import Backbone
from adaptforge.compose.shots import Shots
from adaptforge.core import AdaptforgeError
from adaptforge.evaluate import EvalResult, result_from_logits, subset_of
from adaptforge.scorers import Scorer
from adaptforge.tasks import Example, Task
from adaptforge.train.config import TrainConfig
from adaptforge.train.trainer import TrainResult, train_tasks

PROTOTYPE_TEMPERATURE = 0.05  # cosine / temperature gives the logits (the encoder scorer's default)

# Small-data LoRA defaults: with k <= 64 an epoch is a few steps, so many epochs of small batches at the
# backbone's usual lr. Measured on MiniLM, k=16, 4 held-out tasks (test accuracy, mean): these 0.716;
# lr 5e-3 0.668 (overfits, test loss x3); 20 epochs at 2e-3 0.689; TrainConfig() defaults (3 epochs of
# batch 32: 3 steps) 0.586.
SHOT_TRAIN_DEFAULTS = {"epochs": 10, "batch_size": 8, "warmup_ratio": 0.1, "checkpoint_every": 0}


def scorer_texts(scorer: Scorer, task: Task, examples: Sequence[Example]) -> list[str]:
    """The text the scorer feeds the model for each example (its prompt and truncation), as a string."""
    encoded = scorer.encode(task, examples)
    return [scorer.tokenizer.decode(list(ids), skip_special_tokens=True) for ids in encoded.ids]


def class_prototypes(scorer: Scorer, shots: Shots) -> torch.Tensor:
    """``[labels, dim]`` unit prototypes: mean unit embedding of each label's shots, else of the label string."""
    task = shots.task
    missing = [label for label in task.labels if not any(e.label == label for e in shots.examples)]
    label_emb = dict(zip(missing, scorer.embed_texts(missing), strict=True)) if missing else {}
    shot_emb = scorer.embed_texts(scorer_texts(scorer, task, shots.examples)) if shots.k else None
    rows = []
    for label in task.labels:
        idx = [i for i, e in enumerate(shots.examples) if e.label == label]
        if idx:
            assert shot_emb is not None
            rows.append(shot_emb[idx].mean(dim=0))
        else:
            rows.append(label_emb[label])
    return F.normalize(torch.stack(rows).float(), dim=-1)


@torch.no_grad()
def prototype_eval(
    scorer: Scorer, task: Task, shots: Shots, split: str = "test", limit: int | None = None
) -> EvalResult:
    """Accuracy, macro-F1 and loss of the nearest-prototype classifier on ``split`` (the same examples as
    :func:`~adaptforge.evaluate.evaluate` with ``limit``); logits are cosines over a temperature of 0.05."""
    if shots.task.labels != task.labels:
        raise AdaptforgeError(
            f"the shots are of task {shots.task.name!r} with labels {list(shots.task.labels)}, but task "
            f"{task.name!r} has labels {list(task.labels)}; draw the shots from the task being evaluated"
        )
    prototypes = class_prototypes(scorer, shots)
    examples = task.sample(split, limit, seed=0)
    if not examples:
        raise AdaptforgeError(f"task {task.name!r}: split {split!r} is empty; nothing to evaluate")
    embeddings = F.normalize(scorer.embed_texts(scorer_texts(scorer, task, examples)).float(), dim=-1)
    logits = embeddings @ prototypes.T / PROTOTYPE_TEMPERATURE
    gold = torch.tensor([task.labels.index(e.label) for e in examples], dtype=torch.long)
    return result_from_logits(task, split, "prototypes", logits, gold, subset_of(task, split, limit))


def train_on_shots(
    backbone: Backbone, shots: Shots, cfg: TrainConfig | None = None, scorer: Scorer | None = None
) -> TrainResult:
    """A LoRA trained on ``shots.examples`` only (fit and held-out alike: plain training has no early
    stopping). ``cfg=None`` uses :data:`SHOT_TRAIN_DEFAULTS` with ``seed = shots.seed``; a given ``cfg`` is
    used as is (``TrainConfig()``'s full-data defaults take only ~3 steps on 16 shots). The train split is
    replaced by the shots; ``scorer`` (default: the backbone's) defines the loss."""
    if shots.k == 0:
        raise AdaptforgeError(f"train_on_shots: task {shots.task.name!r} has no shots (k = 0); nothing to train on")
    cfg = cfg or TrainConfig(seed=shots.seed, **SHOT_TRAIN_DEFAULTS)
    task = shots.task.with_splits(train=shots.examples)
    return train_tasks([task], backbone, cfg, scorer=scorer)
