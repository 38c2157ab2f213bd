"""Metrics and evaluation of adapters (or none: zero-shot) on tasks.

Every cell of an adapters x tasks grid is computed the same way: the adapter's dense delta is
added to the base weights (``Backbone.applied``), the scorer produces logits for the split, and
accuracy / macro-F1 come from the argmax.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from adaptforge.batching import batch_order, make_batch, pad
from adaptforge.core import AdaptforgeError, LoraDelta
from adaptforge.lora.hooks import eval_mode
from adaptforge.progress import Steps
from adaptforge.scorers import Scorer
from adaptforge.tasks import Example, Task

if TYPE_CHECKING:
    from adaptforge.generation import GenerationResult


def accuracy(pred: Sequence[int], gold: Sequence[int]) -> float:
    if len(gold) == 0:
        return float("nan")
    return float(np.mean(np.asarray(pred) == np.asarray(gold)))


def macro_f1(pred: Sequence[int], gold: Sequence[int], n_labels: int) -> float:
    """Unweighted mean of per-label F1 over labels that occur in gold or predictions."""
    p, g = np.asarray(pred), np.asarray(gold)
    scores = []
    for c in range(n_labels):
        tp = int(np.sum((p == c) & (g == c)))
        fp = int(np.sum((p == c) & (g != c)))
        fn = int(np.sum((p != c) & (g == c)))
        if tp + fp + fn == 0:
            continue
        scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else float("nan")


def worst(values: Sequence[float]) -> float:
    return float(min(values)) if values else float("nan")


def cvar(values: Sequence[float], fraction: float = 0.2) -> float:
    """Mean of the worst ``fraction`` of values (at least one): the tail a robust method protects."""
    if not values:
        return float("nan")
    k = max(1, int(np.ceil(fraction * len(values))))
    return float(np.mean(sorted(values)[:k]))


@dataclass(frozen=True)
class EvalResult:
    task: str
    adapter: str | None
    split: str
    accuracy: float
    macro_f1: float
    n: int
    loss: float
    subset: str = "all"  # "all" examples of the split, or the seeded sample a limit took ("sample:64:seed0")

    primary_metric = "accuracy"  # what grids average, rank and take the worst of (generation: exact_match)

    @property
    def primary(self) -> float:
        return self.accuracy

    def cell_text(self) -> str:
        return f"{self.accuracy:.3f} / {self.macro_f1:.3f}"

    def to_json(self) -> dict:
        return asdict(self)

    def metric_values(self) -> dict[str, float]:
        """The metrics recorded in the catalog for this cell."""
        return {"accuracy": self.accuracy, "macro_f1": self.macro_f1, "loss": self.loss}


@dataclass(frozen=True)
class Perplexity:
    """Token-weighted perplexity of a causal LM on some texts: ``exp`` of the mean next-token NLL."""

    value: float
    nll: float  # mean negative log-likelihood per predicted token (nats)
    tokens: int  # predicted tokens (each text's first token is context only)
    texts: int

    def to_json(self) -> dict:
        return asdict(self)


@torch.no_grad()
def perplexity(
    model: torch.nn.Module, tokenizer: object, texts: Sequence[str], max_length: int = 128, batch_size: int = 8
) -> Perplexity:
    """Perplexity of a causal LM on raw ``texts`` (each truncated to ``max_length`` tokens, one window each).

    Token-weighted like lm-evaluation-harness's ``token_perplexity``: every predicted token counts once,
    whatever text it is in. Batches are right-padded, so each text's tokens sit at the positions they have
    alone (causal attention never reaches the padding after them) and the value does not depend on batching.
    """
    ids = [tokenizer(t, truncation=True, max_length=max_length)["input_ids"] for t in texts]
    ids = [x for x in ids if len(x) >= 2]
    if not ids:
        raise AdaptforgeError(f"perplexity: none of the {len(texts)} texts has two tokens or more")
    pad_id = getattr(tokenizer, "pad_token_id", None) or 0
    total, count = 0.0, 0
    with eval_mode(model):
        for index in batch_order([len(x) for x in ids], batch_size, shuffle=False):
            input_ids, mask = pad([ids[i] for i in index], pad_id, left=False)
            logits = model(input_ids=input_ids, attention_mask=mask).logits[:, :-1].float()
            target, keep = input_ids[:, 1:], mask[:, 1:].bool()
            nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, reduction="none")
            total += float(nll[keep].double().sum())
            count += int(keep.sum())
    mean = total / count
    return Perplexity(float(np.exp(mean)), mean, count, len(ids))


def strided_windows(n: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """``(start, end, first)`` windows over a text of ``n`` tokens: each window is ``tokens[start:end]`` (at most
    ``context`` tokens) and scores the tokens from position ``first`` to ``end`` (those the windows before it did
    not). Windows start every ``stride`` (< ``context``) tokens, so every scored token after the first window sees
    at least ``context - stride`` tokens before it; the text's first token is context only."""
    windows: list[tuple[int, int, int]] = []
    scored = 1
    for start in range(0, n, stride):
        end = min(start + context, n)
        windows.append((start, end, scored))
        scored = end
        if end == n:
            break
    return windows


@torch.no_grad()
def corpus_perplexity(
    model: torch.nn.Module,
    tokenizer: object,
    texts: Sequence[str],
    context: int = 256,
    stride: int = 128,
    batch_size: int = 8,
) -> Perplexity:
    """Perplexity of a causal LM on whole texts of any length: each text's tokens are read in windows of
    ``context`` tokens sliding by ``stride`` (:func:`strided_windows`), every token after the text's first is
    predicted exactly once, and the value is ``exp`` of the mean NLL over all of them (token-weighted, texts
    scored separately: a text never conditions on the one before it)."""
    if not 1 <= stride < context:
        raise AdaptforgeError(
            f"perplexity: stride {stride} must be at least 1 and below the context ({context} tokens), so every "
            "window's first scored token has a token before it"
        )
    ids = [tokenizer(t)["input_ids"] for t in texts]
    ids = [x for x in ids if len(x) >= 2]
    if not ids:
        raise AdaptforgeError(f"perplexity: none of the {len(texts)} texts has two tokens or more")
    pieces = [  # (window tokens, index in the window of the first scored token)
        (x[start:end], first - start) for x in ids for start, end, first in strided_windows(len(x), context, stride)
    ]
    pad_id = getattr(tokenizer, "pad_token_id", None) or 0
    total, count = 0.0, 0
    with eval_mode(model):
        for index in batch_order([len(p[0]) for p in pieces], batch_size, shuffle=False):
            input_ids, mask = pad([pieces[i][0] for i in index], pad_id, left=False)
            scored = mask.clone()
            for row, i in enumerate(index):
                scored[row, : pieces[i][1]] = 0
            logits = model(input_ids=input_ids, attention_mask=mask).logits[:, :-1].float()
            nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), input_ids[:, 1:], reduction="none")
            keep = scored[:, 1:].bool()
            total += float(nll[keep].double().sum())
            count += int(keep.sum())
    mean = total / count
    return Perplexity(float(np.exp(mean)), mean, count, len(ids))


@torch.no_grad()
def logits_of(
    scorer: Scorer,
    task: Task,
    examples: Sequence[Example],
    model: torch.nn.Module | None = None,
    batch_size: int = 64,
    on_batch: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """``[n, labels]`` logits of ``examples`` in their order, in eval mode (batched by length for speed)."""
    with eval_mode(model if model is not None else scorer.backbone.model) as model:
        encoded = scorer.encode(task, examples)
        context = scorer.label_context(model, scorer.encode_labels(task))
        out = torch.empty(len(encoded), len(task.labels))
        steps = Steps(f"scoring {task.name}: examples", len(encoded))
        for index in batch_order(encoded.lengths(), batch_size, shuffle=False):
            out[index] = scorer.logits(model, make_batch(encoded, index), context).float()
            if on_batch:
                on_batch(len(index))
            else:
                steps.advance(len(index))
    return out


def predict_logits(
    scorer: Scorer,
    task: Task,
    split: str,
    model: torch.nn.Module | None = None,
    batch_size: int = 64,
    limit: int | None = None,
    seed: int = 0,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and gold labels of a split (``limit``: a seeded label-stratified sample), in the split's order."""
    examples = task.sample(split, limit, seed=seed)
    logits = logits_of(scorer, task, examples, model, batch_size, on_batch)
    gold = torch.tensor([task.labels.index(ex.label) for ex in examples], dtype=torch.long)
    return logits, gold


def check_request(tasks: Sequence[Task], split: str, limit: int | None) -> None:
    """Refuse an evaluation that cannot produce a number before any work is done (and anything is stored)."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise AdaptforgeError(f"--limit must be a positive number of examples per task, got {limit!r}")
    for task in tasks:
        if split not in task.splits:
            available = ", ".join(task.splits) or "none"
            raise AdaptforgeError(f"task {task.name!r} has no split {split!r} to evaluate on; it has: {available}")


def evaluate(
    scorer: Scorer,
    task: Task,
    split: str = "test",
    delta: LoraDelta | None = None,
    adapter: str | None = None,
    batch_size: int = 64,
    limit: int | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> EvalResult:
    """Evaluate ``delta`` (None: the bare base model, zero-shot) on one split of one task."""
    with scorer.backbone.applied(delta) as model:
        logits, gold = predict_logits(scorer, task, split, model, batch_size, limit, on_batch=on_batch)
    return result_from_logits(task, split, adapter, logits, gold, subset_of(task, split, limit))


def evaluate_task(
    scorer: Scorer,
    task: Task,
    split: str = "test",
    delta: LoraDelta | None = None,
    adapter: str | None = None,
    limit: int | None = None,
    max_new_tokens: int = 64,
    on_batch: Callable[[int], None] | None = None,
) -> EvalResult | GenerationResult:
    """:func:`evaluate` for a classification task; greedy generation scored by exact match, ROUGE-L and response
    loss for a generation task (:func:`adaptforge.generation.evaluate_generation`, ``max_new_tokens`` per answer)."""
    if task.generative:
        from adaptforge.generation import evaluate_generation

        return evaluate_generation(
            scorer.backbone, task, split, delta, adapter, limit, max_new_tokens, max_length=scorer.max_length,
            on_batch=on_batch,
        )  # fmt: skip
    return evaluate(scorer, task, split, delta, adapter=adapter, limit=limit, on_batch=on_batch)


def subset_of(task: Task, split: str, limit: int | None, seed: int = 0) -> str:
    """The name of the examples ``task.sample(split, limit, seed)`` gives: ``all`` when that is the whole split."""
    if limit is None or limit >= len(task.split(split)):
        return "all"
    return f"sample:{limit}:seed{seed}"


def result_from_logits(
    task: Task,
    split: str,
    adapter: str | None,
    logits: torch.Tensor,
    gold: torch.Tensor,
    subset: str = "all",
) -> EvalResult:
    pred = logits.argmax(-1).tolist()
    loss = float(torch.nn.functional.cross_entropy(logits, gold)) if len(gold) else float("nan")
    return EvalResult(
        task=task.name,
        adapter=adapter,
        split=split,
        accuracy=accuracy(pred, gold.tolist()),
        macro_f1=macro_f1(pred, gold.tolist(), len(task.labels)),
        n=len(gold),
        loss=loss,
        subset=subset,
    )


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of ``softmax(logits)`` per row: DaWin's confidence and the test-time methods'
    objective."""
    logp = torch.log_softmax(logits.double(), dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)
