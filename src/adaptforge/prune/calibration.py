"""Calibration data for pruning: texts in, per-layer input statistics and domain-loss gradients out.

Importance scores need to know what a layer sees: Wanda the norm of each input feature, SparseGPT the
Gram matrix of the inputs (the layer-wise Hessian), D-Pruner both a general and a domain view. Everything
here is collected with forward hooks on the frozen model, padding tokens excluded.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from adaptforge.backbone import Backbone
from adaptforge.batching import batch_order, make_batch, pad
from adaptforge.core import AdaptforgeError
from adaptforge.layers import is_transposed, weight_view
from adaptforge.lora.hooks import eval_mode
from adaptforge.scorers import Scorer
from adaptforge.tasks import Task, is_text_file, load_task, read_corpus, read_texts

GENERAL_SOURCES = ("dbpedia", "agnews", "boolq", "trec_question_type")


def shipped_general_path() -> Path:
    """The open-domain calibration text shipped with the package (see ``scripts/make_calibration_text.py``)."""
    return Path(__file__).resolve().parents[1] / "data" / "calibration" / "general.jsonl"


@dataclass(frozen=True)
class CalibrationText:
    """Texts a pruner calibrates on, with where they came from and a content hash for the record."""

    texts: tuple[str, ...]
    source: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256("\n".join(self.texts).encode()).hexdigest()[:16]

    def record(self) -> dict[str, object]:
        return {"source": self.source, "n": len(self.texts), "sha256": self.sha256}

    def spaced(self, n: int) -> CalibrationText:
        """Up to ``n`` evenly spaced texts (all when there are fewer)."""
        texts = self.texts[:: max(1, len(self.texts) // n)][:n]
        return CalibrationText(texts, f"{self.source} (n={len(texts)})")


def read_corpus_text(path: str | Path) -> CalibrationText:
    """A plain-text domain for ``prune --domain``: a ``.txt`` (one text a line) or ``.jsonl`` of ``{"text"}``."""
    return CalibrationText(tuple(read_corpus(Path(path))), str(path))


def read_general(sources: Sequence[str | Path], n: int, seed: int) -> CalibrationText:
    """General (open-domain) calibration texts: from task folders or files (their train texts), ``.txt``
    files (one text a line) or ``.jsonl`` files with a ``text`` field; none given: the shipped set."""
    paths = [Path(s) for s in sources] or [shipped_general_path()]
    texts: list[str] = []
    for path in paths:
        texts += _texts_of(path, n, seed)
    if not texts:
        raise AdaptforgeError(f"general calibration {', '.join(map(str, paths))}: no texts found")
    texts = texts[:: max(1, len(texts) // n)][:n] if len(texts) > n else texts
    return CalibrationText(tuple(texts), ", ".join(str(p) for p in paths))


def _texts_of(path: Path, n: int, seed: int) -> list[str]:
    if is_text_file(path):
        return read_texts(path)
    if not path.exists():
        raise AdaptforgeError(f"--general {path}: no such file or folder")
    task = load_task(path)
    split = "train" if "train" in task.splits else next(iter(task.splits))
    return [ex.text for ex in task.sample(split, n, seed=seed)]


def held_out_general(used: CalibrationText | None, n: int) -> CalibrationText | None:
    """Up to ``n`` texts of the shipped open-domain set that calibration did not see (evenly spaced, so
    every source of the set is represented), for a perplexity that is comparable across runs and methods;
    ``None`` when calibration used all of them."""
    seen = set(used.texts) if used is not None else set()
    texts = [t for t in read_texts(shipped_general_path()) if t not in seen]
    if not texts:
        return None
    texts = texts[:: max(1, len(texts) // n)][:n]
    return CalibrationText(tuple(texts), f"{shipped_general_path().name} (held out of calibration)")


def held_out_domain(task: Task, split: str, n: int, seed: int) -> CalibrationText:
    """Up to ``n`` texts of the domain task's ``split`` (never the train split calibration reads)."""
    examples = task.sample(split, n, seed=seed)
    return CalibrationText(tuple(ex.text for ex in examples), f"task {task.name} ({split}, n={len(examples)})")


def domain_text(task: Task, n: int, seed: int) -> CalibrationText:
    """The domain task's train texts (a label-stratified seeded sample), formatted as its scorer sees them."""
    examples = task.sample("train", n, seed=seed)
    return CalibrationText(tuple(ex.text for ex in examples), f"task {task.name} (train, n={len(examples)})")


@dataclass
class InputStats:
    """What one linear layer saw: the number of (non-padding) tokens, the sum of squares of each input feature
    and, when asked for, the Gram matrix ``X^T X`` (``in x in``, float64)."""

    tokens: int
    sq_sum: torch.Tensor
    gram: torch.Tensor | None

    @property
    def feature_norm(self) -> torch.Tensor:
        """``||X_j||_2`` per input feature (Wanda's activation norm)."""
        return self.sq_sum.sqrt()


def token_batches(backbone: Backbone, texts: Sequence[str], max_length: int, batch_size: int) -> Iterator[dict]:
    """``input_ids`` / ``attention_mask`` batches of raw ``texts`` (sorted by length, no shuffling)."""
    tok = backbone.tokenizer
    ids = [tok(t, truncation=True, max_length=max_length)["input_ids"] for t in texts]
    left = backbone.kind == "causal"
    for index in batch_order([len(x) for x in ids], batch_size, shuffle=False):
        input_ids, mask = pad([ids[i] for i in index], tok.pad_token_id or 0, left=left)
        yield {"input_ids": input_ids, "attention_mask": mask}


@torch.no_grad()
def collect_inputs(
    backbone: Backbone,
    layers: dict[str, torch.nn.Module],
    texts: Sequence[str],
    *,
    gram: bool,
    max_length: int = 128,
    batch_size: int = 16,
) -> dict[str, InputStats]:
    """Run ``texts`` through the model once and accumulate every layer's input statistics."""
    stats = {
        name: InputStats(0, torch.zeros(weight_view(layer).shape[1], dtype=torch.float64), None)
        for name, layer in layers.items()
    }
    if gram:
        for name, layer in layers.items():
            stats[name].gram = torch.zeros(
                weight_view(layer).shape[1], weight_view(layer).shape[1], dtype=torch.float64
            )
    keep: list[torch.Tensor] = []  # the current batch's non-padding positions, read by the hooks

    def hook_for(name: str):  # noqa: ANN202 - a torch forward hook
        def hook(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
            x = args[0]
            rows = x.reshape(-1, x.shape[-1])
            if keep and keep[0].numel() == rows.shape[0]:
                rows = rows[keep[0]]
            rows = rows.double()
            s = stats[name]
            s.tokens += rows.shape[0]
            s.sq_sum += rows.pow(2).sum(dim=0)
            if s.gram is not None:
                s.gram += rows.T @ rows

        return hook

    handles = [layer.register_forward_hook(hook_for(name)) for name, layer in layers.items()]
    try:
        with eval_mode(backbone.model) as model:
            for batch in token_batches(backbone, texts, max_length, batch_size):
                keep[:] = [batch["attention_mask"].reshape(-1).bool()]
                model(**batch)
    finally:
        for handle in handles:
            handle.remove()
    return stats


def batch_gradients(
    scorer: Scorer, task: Task, layers: dict[str, torch.nn.Module], n: int, seed: int, batch_size: int = 8
) -> Iterator[dict[str, torch.Tensor]]:
    """The domain task's loss gradient with respect to every layer's weight, ``(out, in)`` float64 whatever the
    layer's layout, one dict per batch of ``batch_size`` of ``n`` train examples (a label-stratified seeded
    sample, in length-sorted batches). Only those weights require grad meanwhile; their ``requires_grad`` is
    restored after, also when the caller stops early."""
    examples = task.sample("train", n, seed=seed)
    if not examples:
        raise AdaptforgeError(f"task {task.name!r}: no training examples to compute the domain loss on")
    encoded, labels = scorer.encode(task, examples), scorer.encode_labels(task)
    losses = (
        lambda model, index=index: scorer.loss(model, make_batch(encoded, index), labels)
        for index in batch_order(encoded.lengths(), batch_size, shuffle=False)
    )
    yield from _gradients(scorer.backbone.model, layers, losses)


def text_gradients(
    backbone: Backbone, layers: dict[str, torch.nn.Module], texts: Sequence[str], max_length: int, batch_size: int = 8
) -> Iterator[dict[str, torch.Tensor]]:
    """Like :func:`batch_gradients` for a causal LM on plain domain text: the gradient of the next-token loss (mean
    over the batch's predicted tokens) of ``batch_size`` texts at a time, each its first ``max_length`` tokens,
    right-padded so every token sits at the position it has alone."""
    tok = backbone.tokenizer
    ids = [x for x in (tok(t, truncation=True, max_length=max_length)["input_ids"] for t in texts) if len(x) >= 2]
    if not ids:
        raise AdaptforgeError("domain text: no text of two tokens or more to compute the next-token loss on")

    def loss_of(index: list[int]):  # noqa: ANN202 - a closure over one batch
        input_ids, mask = pad([ids[i] for i in index], tok.pad_token_id or 0, left=False)
        labels = input_ids.masked_fill(mask == 0, -100)
        return lambda model: model(input_ids=input_ids, attention_mask=mask, labels=labels).loss

    losses = (loss_of(index) for index in batch_order([len(x) for x in ids], batch_size, shuffle=False))
    yield from _gradients(backbone.model, layers, losses)


def _gradients(
    model: torch.nn.Module,
    layers: dict[str, torch.nn.Module],
    losses: Iterable[Callable[[torch.nn.Module], torch.Tensor]],
) -> Iterator[dict[str, torch.Tensor]]:
    """Each loss's gradient with respect to every layer's weight, ``(out, in)`` float64 whatever the layout. Only
    those weights require grad meanwhile; their ``requires_grad`` is restored after, also when the caller stops
    early."""
    before = {name: layer.weight.requires_grad for name, layer in layers.items()}
    try:
        for layer in layers.values():
            layer.weight.requires_grad_(True)
        with eval_mode(model) as m:
            for loss in losses:
                for layer in layers.values():
                    layer.weight.grad = None
                loss(m).backward()
                grads = {}
                for name, layer in layers.items():
                    grad = layer.weight.grad
                    if grad is None:
                        grads[name] = torch.zeros(weight_view(layer).shape, dtype=torch.float64)
                    else:
                        grads[name] = (grad.T if is_transposed(layer) else grad).detach().double()
                yield grads
    finally:
        for name, layer in layers.items():
            layer.weight.grad = None
            layer.weight.requires_grad_(before[name])
