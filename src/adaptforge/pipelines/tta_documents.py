"""``adaptforge tta DOCUMENTS --model M --method input-lora|dynamic-eval``: per document, adapt on its known
prefix (or read it online) and score its suffix, beside the unadapted model's plain pass on the same tokens.

Every document is read and checked before the model loads (an empty document or a prefix fraction out of
range is one line naming the file and line); each is cut to its first ``max_tokens`` tokens and split at
``prefix_fraction`` of them. Nothing is written: the model is the same after every document
(:mod:`adaptforge.tta.document`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from adaptforge.backbone import Backbone
from adaptforge.core import AdaptforgeError
from adaptforge.pipelines.common import Notify, load_base, reporter
from adaptforge.tasks import TaskFormatError, read_numbered_texts
from adaptforge.tta.document import DOCUMENT_METHODS, Document, DocumentParams, plain_score


def read_documents(path: Path) -> list[tuple[int, str]]:
    """``(line number, text)`` of every document: one per non-empty line of a ``.txt``, or the ``text`` of
    each ``.jsonl`` line (a document may span many lines there: newlines inside the JSON string). An empty
    document, a malformed line or an empty file is an error naming the file (and line)."""
    path = Path(path)
    if not path.is_file() or path.suffix not in (".txt", ".jsonl"):
        raise TaskFormatError(f'{path}: expected a .txt file (one document a line) or a .jsonl of {{"text": ...}}')
    docs = read_numbered_texts(path)
    for number, text in docs:
        if not text.strip():
            raise TaskFormatError(f"{path}:{number}: empty document (its 'text' has no characters to score)")
    if not docs:
        raise TaskFormatError(f"{path}: no documents (every line is empty)")
    return docs


def check_cut(prefix_fraction: float, max_tokens: int) -> None:
    if isinstance(prefix_fraction, bool) or not 0 < prefix_fraction < 1:
        raise AdaptforgeError(
            f"--prefix-fraction must be between 0 and 1 (exclusive): the share of each document that is known, "
            f"got {prefix_fraction!r}"
        )
    if isinstance(max_tokens, bool) or max_tokens < 3:
        raise AdaptforgeError(f"--max-tokens must be at least 3 (two prefix tokens and a suffix), got {max_tokens!r}")


def cut_document(ids: Sequence[int], prefix_fraction: float, max_tokens: int, where: str) -> Document:
    """The first ``max_tokens`` ids, the suffix starting at ``round(prefix_fraction * n)`` (kept within
    ``[2, n - 1]``: a prefix of two tokens at least, to learn from, and one suffix token)."""
    ids = list(ids)[:max_tokens]
    if len(ids) < 3:
        raise AdaptforgeError(f"{where}: {len(ids)} tokens; a document needs at least 3 (a prefix and a suffix)")
    cut = min(max(round(prefix_fraction * len(ids)), 2), len(ids) - 1)
    return Document(torch.tensor([ids], dtype=torch.long), cut)


@dataclass(frozen=True)
class DocumentRow:
    """One document: its size, the plain pass's and the method's suffix perplexity, and their costs."""

    line: int
    prefix_tokens: int
    suffix_tokens: int
    plain_perplexity: float
    perplexity: float
    plain_seconds: float
    seconds: float
    steps: int
    trained_tokens: int

    @property
    def cost_ratio(self) -> float | None:
        """The method's seconds over one plain pass over the document (``None`` if that took no time)."""
        return self.seconds / self.plain_seconds if self.plain_seconds > 0 else None

    def to_json(self) -> dict[str, Any]:
        ratio = self.cost_ratio
        return {
            "line": self.line,
            "prefix_tokens": self.prefix_tokens,
            "suffix_tokens": self.suffix_tokens,
            "plain_perplexity": self.plain_perplexity,
            "perplexity": self.perplexity,
            "change": self.perplexity / self.plain_perplexity - 1,
            "plain_seconds": round(self.plain_seconds, 4),
            "seconds": round(self.seconds, 4),
            "cost_ratio": None if ratio is None else round(ratio, 3),
            "steps": self.steps,
            "trained_tokens": self.trained_tokens,
        }


@dataclass
class DocumentsOutcome:
    """Every document's row, and the averages: the mean relative change of suffix perplexity and the mean cost
    as a multiple of one plain pass."""

    corpus: str
    model: str
    method: str
    params: dict[str, Any]
    prefix_fraction: float
    max_tokens: int
    rows: list[DocumentRow] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def mean_change(self) -> float:
        return sum(r.perplexity / r.plain_perplexity - 1 for r in self.rows) / len(self.rows)

    @property
    def mean_cost_ratio(self) -> float | None:
        ratios = [r.cost_ratio for r in self.rows]
        return None if any(x is None for x in ratios) else sum(ratios) / len(ratios)  # type: ignore[misc]

    def to_json(self) -> dict[str, Any]:
        ratio = self.mean_cost_ratio
        return {
            "corpus": self.corpus,
            "model": self.model,
            "method": self.method,
            "params": self.params,
            "prefix_fraction": self.prefix_fraction,
            "max_tokens": self.max_tokens,
            "n": len(self.rows),
            "mean_plain_perplexity": sum(r.plain_perplexity for r in self.rows) / len(self.rows),
            "mean_perplexity": sum(r.perplexity for r in self.rows) / len(self.rows),
            "mean_change": self.mean_change,
            "mean_cost_ratio": None if ratio is None else round(ratio, 3),
            "documents": [r.to_json() for r in self.rows],
            "seconds": round(self.seconds, 2),
        }


def resolve_document_params(
    method: str, params: Mapping[str, Any] | None, steps: int | None, lr: float | None
) -> DocumentParams:
    """The method's typed params from ``--param`` pairs plus ``--steps`` / ``--lr`` (each given once)."""
    impl = DOCUMENT_METHODS.get(method)
    merged = dict(params or {})
    for flag, key, value in (("--steps", "steps", steps), ("--lr", "lr", lr)):
        if value is None:
            continue
        if key in merged:
            raise AdaptforgeError(f"{flag} and --param {key}=... both given; give {key} once")
        merged[key] = value
    typed: DocumentParams = impl.parse_params(merged)
    return typed


def tta_on_documents(
    corpus: Path,
    *,
    method: str,
    params: Mapping[str, Any] | None = None,
    steps: int | None = None,
    lr: float | None = None,
    prefix_fraction: float = 0.5,
    max_tokens: int = 512,
    limit: int | None = None,
    model: str | None = None,
    backbone: Backbone | None = None,
    notify: Notify | None = None,
) -> DocumentsOutcome:
    """Score every document's suffix unadapted and after ``method``; see the module docstring."""
    say = reporter(notify)
    start = time.perf_counter()
    impl = DOCUMENT_METHODS.get(method)()
    typed = resolve_document_params(method, params, steps, lr)
    check_cut(prefix_fraction, max_tokens)
    if limit is not None and limit < 1:
        raise AdaptforgeError(f"--limit must be at least 1, got {limit}")
    docs = read_documents(corpus)[:limit]
    base = load_base(model, backbone=backbone, notify=notify)
    if base.kind != "causal":
        raise AdaptforgeError(
            f"tta on documents needs a causal language model; {base.name} is an encoder (give --model smollm2)"
        )
    cut = [
        cut_document(base.tokenizer(text)["input_ids"], prefix_fraction, max_tokens, f"{corpus}:{line}")
        for line, text in docs
    ]
    outcome = DocumentsOutcome(str(corpus), base.name, method, typed.to_dict(), prefix_fraction, max_tokens)
    for (line, _), doc in zip(docs, cut, strict=True):
        plain = plain_score(base, doc)
        adapted = impl.score(base, doc, typed)
        if not bool(torch.isfinite(adapted.nll).all()):
            raise AdaptforgeError(f"{method}: the suffix of {corpus}:{line} scored a non-finite NLL; lower lr")
        row = DocumentRow(
            line=line,
            prefix_tokens=doc.cut,
            suffix_tokens=doc.n - doc.cut,
            plain_perplexity=plain.perplexity,
            perplexity=adapted.perplexity,
            plain_seconds=plain.seconds,
            seconds=adapted.seconds,
            steps=adapted.steps,
            trained_tokens=adapted.trained_tokens,
        )
        outcome.rows.append(row)
        say(
            f"{corpus}:{line}: suffix perplexity {row.plain_perplexity:.3f} -> {row.perplexity:.3f} "
            f"({math.fsum([row.perplexity / row.plain_perplexity, -1]):+.1%}), cost {row.cost_ratio or 0:.1f}x"
        )
    outcome.seconds = time.perf_counter() - start
    return outcome
