"""``adaptforge predict``: one prediction (label and scores) per input, for batch inference without a server.

Inputs are a task (folder, SNI ``.json`` or ``.csv``: its ``split``, with gold labels kept for a summary), a
``.jsonl`` file of ``{"text": ...}`` objects, or a ``.txt`` file with one text a line. The label set and
the instruction come from the task, else from ``labels``/``description``, else from the adapter's own task
as the catalog recorded it. Routed adapters are scored through their router, as ``eval`` does.
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
from adaptforge.library import AdapterRecord, Library
from adaptforge.pipelines.common import Notify, load_base
from adaptforge.routing import stored_router
from adaptforge.scorers import make_scorer
from adaptforge.tasks import Example, Task, is_text_file, load_task, read_texts


@dataclass(frozen=True)
class Prediction:
    text: str
    label: str
    scores: dict[str, float]
    gold: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"text": self.text, "label": self.label, "scores": self.scores}
        if self.gold is not None:
            out["gold"] = self.gold
        return out


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
    known = (record.params or {}).get("labels") or {}
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
) -> Iterator[Prediction]:
    """Predictions in input order (a generator: large inputs stream to the output)."""
    record = library.get(adapter)
    texts, gold, task = read_inputs(Path(inputs), split)
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


def write_predictions(predictions: Iterator[Prediction], out: Path) -> tuple[int, int]:
    """JSONL to ``out``, written atomically once all rows are in; returns (rows, correct against gold)."""
    lines, correct = [], 0
    for p in predictions:
        lines.append(json.dumps(p.to_json(), ensure_ascii=False))
        correct += int(p.gold is not None and p.gold == p.label)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    write_file(Path(out), ("\n".join(lines) + "\n" if lines else "").encode())
    return len(lines), correct
