"""``adaptforge predict``: one prediction (label and scores) per input, for batch inference without a server.

Inputs are a task (folder, SNI ``.json`` or ``.csv``: its ``split``, with gold labels kept for a summary), a
``.jsonl`` file of ``{"text": ...}`` objects, or a ``.txt`` file with one text a line. The label set and
the instruction come from the task, else from ``labels``/``description``, else from the adapter's own task
as the catalog recorded it. Routed adapters are scored through their router, as ``eval`` does.

A generation task, or a ``.jsonl`` of ``{"prompt": ...}`` objects, is answered instead: one ``{"prompt", "output"}``
(plus ``gold`` for a task) per input, greedy, batched with left padding. A task's prompts carry its instruction;
a ``.jsonl`` prompt is sent as the user turn exactly as given, unless ``description`` adds one.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from adaptforge.core import AdaptforgeError
from adaptforge.durable import write_file
from adaptforge.evaluate import logits_of
from adaptforge.generation import check_max_new_tokens, context_length, encode_prompts, generate, normalize
from adaptforge.library import AdapterRecord, Library
from adaptforge.pipelines.common import Notify, load_base
from adaptforge.routing import stored_router
from adaptforge.scorers import make_scorer, needs_causal
from adaptforge.tasks import Example, Task, is_text_file, load_task, read_texts


@dataclass(frozen=True)
class Prediction:
    text: str
    label: str
    scores: dict[str, float]
    gold: str | None = None

    @property
    def hit(self) -> bool:
        return self.gold is not None and self.gold == self.label

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"text": self.text, "label": self.label, "scores": self.scores}
        if self.gold is not None:
            out["gold"] = self.gold
        return out


@dataclass(frozen=True)
class Answer:
    """A generated answer to one prompt (and the task's gold response, when the input is a task)."""

    prompt: str
    output: str
    gold: str | None = None

    @property
    def hit(self) -> bool:
        return self.gold is not None and normalize(self.gold) == normalize(self.output)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"prompt": self.prompt, "output": self.output}
        if self.gold is not None:
            out["gold"] = self.gold
        return out


def prompt_file(path: Path) -> bool:
    """A ``.jsonl`` (not a task split) whose first record has a ``prompt``: inputs to answer, not to classify."""
    if not (is_text_file(path) and path.suffix == ".jsonl"):
        return False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, RecursionError):  # not a prompt file; read_texts names the bad line
                return False
            return isinstance(row, dict) and "prompt" in row
    return False


def answer(
    inputs: Path,
    task: Task | None,
    split: str,
    record: AdapterRecord,
    library: Library,
    description: str | None,
    model: str | None,
    max_new_tokens: int,
    batch_size: int,
    notify: Notify | None,
) -> Iterator[Answer]:
    """Greedy answers of a generation task's split or of a prompt file, with the adapter folded into the base."""
    if task is not None:
        examples = task.split(split)
        instruction = description if description is not None else task.description
    else:
        examples = tuple(Example(p, "") for p in read_texts(inputs, field="prompt"))
        instruction = description or ""
    backbone = load_base(model, [record], notify=notify)
    if backbone.kind != "causal":
        raise AdaptforgeError(needs_causal(backbone))
    context = context_length(backbone)
    check_max_new_tokens(max_new_tokens, context)
    if stored_router(library, record, backbone.fingerprint) is not None:
        raise AdaptforgeError(f"adapter {record.name!r} is routed over label scores (classification only)")
    delta, _ = library.load(record.id, expected_fingerprint=backbone.fingerprint)
    prompts = encode_prompts(backbone.tokenizer, instruction, examples, context - max_new_tokens)
    with backbone.applied(delta) as tuned:
        outputs = generate(tuned, backbone.tokenizer, prompts, max_new_tokens, batch_size)
    for example, output in zip(examples, outputs, strict=True):
        yield Answer(example.text, output, example.label if task is not None else None)


def read_inputs(path: Path, split: str) -> tuple[list[str], list[str] | None, Task | None]:
    """Texts, their gold labels (tasks only) and the task (tasks only) of an input file or folder."""
    path = Path(path)
    if is_text_file(path):
        return read_texts(path), None, None
    task = load_task(path)
    examples = task.split(split)
    return [ex.text for ex in examples], [ex.label for ex in examples], task


def _task_for(
    record: AdapterRecord, task: Task | None, labels: Sequence[str] | None, description: str | None
) -> tuple[str, str, tuple[str, ...]]:
    if task is not None:  # a given instruction wins over the task's own, as in every verb that takes a task
        return task.name, description if description is not None else task.description, task.labels
    known = record.labels
    name = record.task or record.name
    found = labels or known.get(name) or (next(iter(known.values())) if len(known) == 1 else None)
    if not found or len(found) < 2:
        raise AdaptforgeError(
            f"adapter {record.name!r} records no label set for its task; give --labels a,b (at least two)"
        )
    return name, description if description is not None else (record.description or ""), tuple(found)


def predict(
    inputs: str | Path,
    library: Library,
    adapter: str,
    *,
    split: str = "test",
    labels: Sequence[str] | None = None,
    description: str | None = None,
    model: str | None = None,
    batch_size: int = 64,
    notify: Notify | None = None,
    max_new_tokens: int = 64,
) -> Iterator[Prediction | Answer]:
    """Predictions in input order (a generator: large inputs stream to the output); answers for a generation task
    or a prompt file (:func:`answer`, batches of ``min(batch_size, 8)``)."""
    record = library.get(adapter)
    inputs = Path(inputs)
    if prompt_file(inputs):
        yield from answer(inputs, None, split, record, library, description, model, max_new_tokens, 8, notify)
        return
    texts, gold, task = read_inputs(inputs, split)
    if task is not None and task.generative:
        batch = min(batch_size, 8)
        yield from answer(inputs, task, split, record, library, description, model, max_new_tokens, batch, notify)
        return
    name, instruction, label_set = _task_for(record, task, labels, description)
    backbone = load_base(model, [record], notify=notify)
    delta, _ = library.load(record.id, expected_fingerprint=backbone.fingerprint)
    router = stored_router(library, record, backbone.fingerprint)
    scorer = make_scorer(backbone)
    for start in range(0, len(texts), batch_size):
        chunk = texts[start : start + batch_size]
        batch = Task(name, instruction, label_set, {"test": tuple(Example(t, label_set[0]) for t in chunk)})
        if router is not None:
            logits = router.logits(scorer, batch, batch.split("test"))
        else:
            with backbone.applied(delta) as tuned:
                logits = logits_of(scorer, batch, batch.split("test"), tuned, batch_size)
        probs = torch.softmax(logits.double(), dim=-1)
        for i, text in enumerate(chunk):
            scores = {label: round(float(p), 6) for label, p in zip(label_set, probs[i], strict=True)}
            yield Prediction(text, label_set[int(probs[i].argmax())], scores, gold[start + i] if gold else None)


def write_predictions(predictions: Iterator[Prediction | Answer], out: Path) -> tuple[int, int]:
    """JSONL to ``out``, written atomically once all rows are in; returns (rows, correct against gold)."""
    lines, correct = [], 0
    for p in predictions:
        lines.append(json.dumps(p.to_json(), ensure_ascii=False))
        correct += int(p.hit)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    write_file(Path(out), ("\n".join(lines) + "\n" if lines else "").encode())
    return len(lines), correct
