"""Tasks (classification or generation): load them from disk, validate them loudly, split and sample them.

Three on-disk formats are read by :func:`load_task`:

* a **task folder** (the project's own format, see ``write_task``): ``task.json`` with ``name``,
  ``description`` and ``labels`` (extra keys such as ``source``, ``license``, ``version``, ``sizes`` are
  allowed) plus ``train.jsonl`` / ``dev.jsonl`` / ``test.jsonl`` with one ``{"text": ..., "label": ...}``
  object a line. At least ``train.jsonl`` or ``test.jsonl`` must exist; absent splits stay absent.
  With ``"type": "generation"`` there are no labels and each line is ``{"prompt": ..., "response": ...}`` or a
  chat ``{"messages": [{"role", "content"}, ...]}`` ending in the assistant's answer (see
  :func:`read_generation_examples`); an example keeps the prompt as ``text`` and the response as ``label``.
* a **Super-NaturalInstructions** task JSON (``*.json``): ``Definition`` becomes the description and
  ``Instances[i].output[0]`` the label of ``Instances[i].input``.
* a **CSV** file (``*.csv``) with a header row; an optional ``split`` column assigns rows to splits.

Single-file formats without their own split are divided 80/10/10 into train/dev/test, label-stratified and
fixed by ``seed``. Every problem is a :class:`TaskFormatError` naming the file, the line (or JSON path) and
the field, because a bad record found deep inside training is far more expensive than one found at load time.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from adaptforge.core import AdaptforgeError
from adaptforge.durable import write_file
from adaptforge.structured import parse_json

log = logging.getLogger(__name__)

__all__ = [
    "MAX_INFERRED_LABELS",
    "SPLITS",
    "Example",
    "Task",
    "TASK_TYPES",
    "TaskFormatError",
    "read_examples",
    "read_generation_examples",
    "load_task",
    "load_tasks",
    "write_task",
]

SPLITS: tuple[str, ...] = ("train", "dev", "test")
"""The split names a task may have, in the order they are stored and written."""

TASK_TYPES: tuple[str, ...] = ("classification", "generation")
"""``task.json``'s ``type``: scored over a label set, or answered by free text (supervised fine-tuning)."""

MAX_INFERRED_LABELS = 50
"""More distinct outputs than this, with no explicit ``labels``, means the data is generative, not classification."""

_SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "dev": "dev",
    "valid": "dev",
    "validation": "dev",
    "val": "dev",
    "test": "test",
    "testing": "test",
}
_SPLIT_FRACTIONS = (0.8, 0.1, 0.1)


class TaskFormatError(AdaptforgeError):
    """Task data on disk (or handed to :class:`Task`) is malformed; the message says where and what was expected."""


def _where(file: str | Path, line: int | None = None, field_: str | None = None) -> str:
    """``file, line N, field "x"``: the one place error locations are formatted, so they all read alike."""
    parts = [str(file)]
    if line is not None:
        parts.append(f"line {line}")
    if field_ is not None:
        parts.append(f"field {field_!r}")
    return ", ".join(parts)


@dataclass(frozen=True)
class Example:
    """One labelled text; pair tasks (NLI, paraphrase, QA) put both parts into ``text``. In a generation task
    ``text`` is the prompt (the last user turn), ``label`` the response, and ``history`` the chat turns
    (``(role, content)``) before that prompt, if it came as a multi-turn conversation."""

    text: str
    label: str
    history: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.text, str):
            raise TaskFormatError(f"Example.text must be a string, got {type(self.text).__name__}")
        if not isinstance(self.label, str):
            raise TaskFormatError(f"Example.label must be a string, got {type(self.label).__name__}")
        object.__setattr__(self, "history", tuple((str(r), str(c)) for r, c in self.history))


@dataclass(frozen=True, repr=False)
class Task:
    """A classification task: instruction, fixed label order and its splits.

    Immutable so that a task can be shared between trainer, evaluator and library without copies;
    :meth:`with_splits` derives variants. ``path`` records where the task came from and is left out of
    equality, so a task written with :func:`write_task` and loaded back compares equal to the original.
    """

    name: str
    description: str
    labels: tuple[str, ...]
    splits: Mapping[str, tuple[Example, ...]]
    source: str | None = None
    license: str | None = None
    version: str | None = None
    path: Path | None = field(default=None, compare=False)
    task_type: str = "classification"  # one of TASK_TYPES; generation tasks have no labels

    @property
    def generative(self) -> bool:
        return self.task_type == "generation"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise TaskFormatError(f"task name must be a non-empty string, got {self.name!r}")
        if not isinstance(self.description, str):
            raise TaskFormatError(f"task {self.name!r}: description must be a string, got {self.description!r}")
        if isinstance(self.labels, str) or not isinstance(self.labels, Iterable):
            raise TaskFormatError(f"task {self.name!r}: labels must be a sequence of strings, got {self.labels!r}")
        labels = tuple(self.labels)
        if self.task_type not in TASK_TYPES:
            raise TaskFormatError(f"task {self.name!r}: type {self.task_type!r} is not one of {list(TASK_TYPES)}")
        problem = _label_list_problem(labels) if not self.generative else None
        if self.generative and labels:
            problem = f"a generation task has no labels, got {list(labels)}"
        if problem:
            raise TaskFormatError(f"task {self.name!r}: {problem}")
        allowed = set(labels)
        if not isinstance(self.splits, Mapping):
            raise TaskFormatError(
                f"task {self.name!r}: splits must be a mapping of split name to examples, "
                f"got {type(self.splits).__name__}"
            )
        unknown = sorted(set(self.splits) - set(SPLITS))
        if unknown:
            raise TaskFormatError(
                f"task {self.name!r}: unknown split(s) {', '.join(unknown)}; splits are {', '.join(SPLITS)}"
            )
        splits: dict[str, tuple[Example, ...]] = {}
        for split in SPLITS:
            if split not in self.splits:
                continue
            examples = tuple(self.splits[split])
            for i, example in enumerate(examples):
                if not isinstance(example, Example):
                    raise TaskFormatError(
                        f"task {self.name!r}, split {split!r}, example {i}: expected an Example, "
                        f"got {type(example).__name__}"
                    )
                if self.generative:
                    if not example.label.strip():
                        raise TaskFormatError(f"task {self.name!r}, split {split!r}, example {i}: empty response")
                elif example.label not in allowed:
                    raise TaskFormatError(
                        f"task {self.name!r}, split {split!r}, example {i}: label "
                        f"{example.label!r} is not one of {list(labels)}"
                    )
            splits[split] = examples
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "splits", MappingProxyType(splits))
        if self.path is not None:
            object.__setattr__(self, "path", Path(self.path))

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}={len(v)}" for k, v in self.splits.items())
        if self.generative:
            return f"Task(name={self.name!r}, generation, splits({sizes}))"
        return f"Task(name={self.name!r}, labels={self.labels!r}, splits({sizes}))"

    def __hash__(self) -> int:
        return hash(
            (
                self.name,
                self.description,
                self.labels,
                tuple(self.splits.items()),
                self.source,
                self.license,
                self.version,
                self.task_type,
            )
        )

    def split(self, name: str) -> tuple[Example, ...]:
        """The examples of one split; a missing split is an error that lists the ones present."""
        try:
            return self.splits[name]
        except KeyError:
            available = ", ".join(self.splits) or "none"
            raise TaskFormatError(f"task {self.name!r} has no split {name!r}; available: {available}") from None

    def label_ids(self, split: str) -> list[int]:
        """Each example's label as its index in :attr:`labels` (the class order every scorer uses)."""
        index = {label: i for i, label in enumerate(self.labels)}
        return [index[e.label] for e in self.split(split)]

    def label_counts(self, split: str) -> dict[str, int]:
        """How many examples of each label a split has, in label order (zero counts included)."""
        counts = dict.fromkeys(self.labels, 0)
        for e in self.split(split):
            counts[e.label] += 1
        return counts

    def sample(self, split: str, n: int | None, seed: int = 0) -> tuple[Example, ...]:
        """A reproducible, label-stratified subset of ``n`` examples, in the split's original order.

        ``n`` of ``None`` or at least the split size returns the whole split unchanged. Otherwise every label
        present gets at least one example when ``n`` allows it, and the rest is shared in proportion to the
        label counts, so small training budgets and evaluation limits still see every class.
        """
        examples = self.split(split)
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
            raise TaskFormatError(f"task {self.name!r}: sample size must be a non-negative integer or None, got {n!r}")
        if n is None or n >= len(examples):
            return examples
        if self.generative:  # free-text responses: no classes to stratify by
            return tuple(examples[i] for i in sorted(random.Random(seed).sample(range(len(examples)), n)))
        chosen = _stratified_pick([e.label for e in examples], n, random.Random(seed), at_least_one=True)
        return tuple(examples[i] for i in chosen)

    def with_splits(self, **splits: Sequence[Example] | None) -> Task:
        """A copy with the given splits replaced (``None`` drops a split); everything else is kept."""
        merged: dict[str, Sequence[Example]] = dict(self.splits)
        for name, examples in splits.items():
            if examples is None:
                merged.pop(name, None)
            else:
                merged[name] = examples
        return Task(
            self.name,
            self.description,
            self.labels,
            merged,
            self.source,
            self.license,
            self.version,
            self.path,
            self.task_type,
        )

    def fingerprint(self) -> str:
        """A short content hash (name, description, labels, all examples): identifies the data when ``version``
        is not set, e.g. to record exactly which data an adapter was trained on. Computed once per task (it
        is immutable): every recorded evaluation asks for it."""
        cached = self.__dict__.get("_fingerprint")
        if cached is not None:
            return cached
        h = hashlib.sha256()
        h.update(json.dumps([self.name, self.description, list(self.labels)], ensure_ascii=False).encode())
        if self.generative:  # classification fingerprints stay as they were recorded
            h.update(b"\n#generation")
        for split, examples in self.splits.items():
            h.update(f"\n#{split}\n".encode())
            for e in examples:
                row = [e.text, e.label] + ([[list(t) for t in e.history]] if e.history else [])
                h.update(json.dumps(row, ensure_ascii=False).encode() + b"\n")
        object.__setattr__(self, "_fingerprint", h.hexdigest()[:16])  # not a field: equality is unchanged
        return self.__dict__["_fingerprint"]


# --------------------------------------------------------------------------------------------- sampling


def _allocate(counts: Sequence[int], n: int) -> list[int]:
    """Share ``n`` among groups in proportion to ``counts`` (largest remainder; ties go to the earlier group)."""
    total = sum(counts)
    if total == 0:
        return [0] * len(counts)
    base = [n * c // total for c in counts]
    remainders = sorted(range(len(counts)), key=lambda i: (-(n * counts[i] % total), i))
    for i in remainders[: n - sum(base)]:
        base[i] += 1
    return base


def _stratified_pick(labels: Sequence[str], n: int, rng: random.Random, *, at_least_one: bool) -> list[int]:
    """Indices of ``n`` items drawn per label in proportion to label frequency, returned sorted.

    With ``at_least_one`` a label whose proportional share rounds to zero still gets one item when ``n`` is at
    least the number of labels (used for samples, where a missing class hurts); splitting keeps plain
    proportions instead so that rare labels are not pulled out of the training split.
    """
    groups: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        groups.setdefault(label, []).append(i)
    members = list(groups.values())
    sizes = [len(m) for m in members]
    quota = _allocate(sizes, n)
    if at_least_one and n >= len(members):
        # labels rounded down to nothing borrow one slot each from the currently largest share
        for i in [i for i, k in enumerate(quota) if k == 0]:
            donor = max(range(len(quota)), key=lambda j: (quota[j], -j))
            quota[donor] -= 1
            quota[i] = 1
    chosen: list[int] = []
    for group, k in zip(members, quota, strict=True):
        chosen.extend(rng.sample(group, k))
    return sorted(chosen)


def _split_examples(examples: Sequence[Example], seed: int, file: Path) -> dict[str, tuple[Example, ...]]:
    """Deterministic stratified 80/10/10 train/dev/test split of a single-file task."""
    total = len(examples)
    if total < 3:
        raise TaskFormatError(
            f"{file}: only {total} example(s); at least 3 are needed to split into train/dev/test "
            "(or assign splits yourself, e.g. with a 'split' column in a CSV)"
        )
    n_dev = max(1, round(total * _SPLIT_FRACTIONS[1]))
    n_test = max(1, round(total * _SPLIT_FRACTIONS[2]))
    rng = random.Random(seed)
    test_idx = set(_stratified_pick([e.label for e in examples], n_test, rng, at_least_one=False))
    rest = [i for i in range(total) if i not in test_idx]
    dev_idx = {rest[j] for j in _stratified_pick([examples[i].label for i in rest], n_dev, rng, at_least_one=False)}
    return {
        "train": tuple(examples[i] for i in range(total) if i not in test_idx and i not in dev_idx),
        "dev": tuple(examples[i] for i in sorted(dev_idx)),
        "test": tuple(examples[i] for i in sorted(test_idx)),
    }


# --------------------------------------------------------------------------------------------- validation helpers


def _label_list_problem(labels: Sequence[Any]) -> str | None:
    """Why a label list is unusable, or ``None``: scorers need >= 2 distinct non-empty string classes."""
    bad = [x for x in labels if not isinstance(x, str) or not x.strip()]
    if bad:
        return f"labels must be non-empty strings, got {bad[0]!r}"
    seen: set[str] = set()
    for x in labels:
        if x in seen:
            return f"labels must be unique, {x!r} appears more than once"
        seen.add(x)
    if len(labels) < 2:
        return f"a classification task needs at least 2 labels, got {list(labels)}"
    return None


def _check_labels_arg(labels: Sequence[str] | None) -> tuple[str, ...] | None:
    if labels is None:
        return None
    if isinstance(labels, str):
        raise TaskFormatError(f"labels= must be a list of strings, not the single string {labels!r}")
    labels = tuple(labels)
    problem = _label_list_problem(labels)
    if problem:
        raise TaskFormatError(f"labels= argument: {problem}")
    return labels


def _infer_labels(found: Iterable[str], file: Path, field_: str) -> tuple[str, ...]:
    """Sorted distinct labels; too many means the data is generative (or the wrong column was chosen)."""
    distinct = sorted(set(found))
    if len(distinct) > MAX_INFERRED_LABELS:
        raise TaskFormatError(
            f"{_where(file, field_=field_)}: {len(distinct)} distinct values (more than {MAX_INFERRED_LABELS}); "
            "this is probably a generative task, not classification. Pass labels=[...] explicitly if it really "
            "is a classification task with that many classes"
        )
    problem = _label_list_problem(distinct)
    if problem:
        raise TaskFormatError(f"{_where(file, field_=field_)}: {problem}")
    return tuple(distinct)


def _check_label(label: str, labels: Sequence[str], where: str) -> None:
    if label not in labels:
        raise TaskFormatError(f"{where}: label {label!r} is not one of the allowed labels {list(labels)}")


def _read_text(path: Path) -> str:
    """The file's text with its line endings kept (CSV needs them); a decoding error names its line."""
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise TaskFormatError(
            f"{_where(path, line)}: not valid UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from None
    except OSError as exc:
        raise TaskFormatError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _parse_json(path: Path) -> Any:
    return parse_json(_read_text(path), str(path), TaskFormatError)


# --------------------------------------------------------------------------------------------- task folder


def read_examples(
    path: Path, labels: Sequence[str], text_col: str = "text", label_col: str = "label"
) -> tuple[Example, ...]:
    """The labelled examples of a JSONL file (a split, or demonstrations given on the command line); every line
    is checked so the error points at the first bad record. An empty file gives no examples."""
    examples: list[Example] = []
    for lineno, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        expected = f'one object like {{"{text_col}": ..., "{label_col}": ...}} per line'
        record = parse_json(line, str(path), TaskFormatError, lineno, expected)
        if not isinstance(record, dict):
            raise TaskFormatError(f"{_where(path, lineno)}: expected a JSON object, got {type(record).__name__}")
        for key in (text_col, label_col):
            if key not in record:
                raise TaskFormatError(
                    f"{_where(path, lineno, key)}: missing field; the record has {sorted(record) or 'no fields'}"
                )
        text, label = record[text_col], record[label_col]
        if not isinstance(text, str):
            raise TaskFormatError(
                f"{_where(path, lineno, text_col)}: expected a string, got {type(text).__name__} {text!r}"
            )
        if not isinstance(label, str):
            raise TaskFormatError(
                f"{_where(path, lineno, label_col)}: expected a string, got {type(label).__name__} {label!r}"
            )
        _check_label(label, labels, _where(path, lineno, label_col))
        examples.append(Example(text, label))
    return tuple(examples)


_ROLES = ("system", "user", "assistant")


def _generation_record(record: dict, where: Callable[[str], str]) -> Example:
    """One ``{"prompt", "response"}`` or ``{"messages": [...]}`` record as an Example (errors name the field)."""
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or len(messages) < 2:
            raise TaskFormatError(f"{where('messages')}: expected a list of at least a user and an assistant turn")
        turns = []
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in _ROLES or not isinstance(m.get("content"), str):
                raise TaskFormatError(
                    f'{where(f"messages[{i}]")}: expected {{"role": one of {list(_ROLES)}, "content": a string}}'
                )
            turns.append((m["role"], m["content"]))
        if turns[-1][0] != "assistant" or turns[-2][0] != "user":
            raise TaskFormatError(f"{where('messages')}: must end with a user turn followed by the assistant's answer")
        if not turns[-1][1].strip():
            raise TaskFormatError(f"{where(f'messages[{len(turns) - 1}].content')}: empty response")
        return Example(turns[-2][1], turns[-1][1], tuple(turns[:-2]))
    for key in ("prompt", "response"):
        if key not in record:
            raise TaskFormatError(
                f'{where(key)}: missing field; expected {{"prompt", "response"}} or {{"messages": [...]}}'
            )
        if not isinstance(record[key], str):
            raise TaskFormatError(f"{where(key)}: expected a string, got {type(record[key]).__name__}")
    if not record["response"].strip():
        raise TaskFormatError(f"{where('response')}: empty response")
    return Example(record["prompt"], record["response"])


def read_generation_examples(path: Path) -> tuple[Example, ...]:
    """The examples of a generation task's JSONL split: ``{"prompt", "response"}`` or chat ``{"messages"}`` lines
    (system/user/assistant turns, the last two a user prompt and the assistant's response)."""
    examples = []
    for lineno, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        expected = 'one object like {"prompt": ..., "response": ...} or {"messages": [...]} per line'
        record = parse_json(line, str(path), TaskFormatError, lineno, expected)
        if not isinstance(record, dict):
            raise TaskFormatError(f"{_where(path, lineno)}: expected a JSON object, got {type(record).__name__}")
        examples.append(_generation_record(record, lambda key, n=lineno: _where(path, n, key)))
    return tuple(examples)


def _load_folder(
    folder: Path,
    text_col: str,
    label_col: str,
    name: str | None,
    description: str | None,
    labels: tuple[str, ...] | None,
) -> Task:
    meta_path = folder / "task.json"
    if not meta_path.is_file():
        raise TaskFormatError(
            f"{folder}: not a task folder (no task.json); expected task.json plus "
            f"{', '.join(s + '.jsonl' for s in SPLITS)}"
        )
    meta = _parse_json(meta_path)
    if not isinstance(meta, dict):
        raise TaskFormatError(f"{meta_path}: expected a JSON object, got {type(meta).__name__}")

    def text_field(key: str, override: str | None) -> str:
        if override is not None:
            return override
        if key not in meta:
            raise TaskFormatError(f"{_where(meta_path, field_=key)}: missing field")
        value = meta[key]
        if not isinstance(value, str):
            raise TaskFormatError(f"{_where(meta_path, field_=key)}: expected a string, got {value!r}")
        return value

    def optional_field(key: str) -> str | None:
        value = meta.get(key)
        if value is None:
            return None
        if isinstance(value, (int, float)) and not isinstance(value, bool) and key == "version":
            return str(value)
        if not isinstance(value, str):
            raise TaskFormatError(f"{_where(meta_path, field_=key)}: expected a string, got {value!r}")
        return value

    task_name = text_field("name", name)
    task_description = text_field("description", description)
    task_type = meta.get("type", "classification")
    if task_type not in TASK_TYPES:
        raise TaskFormatError(f"{_where(meta_path, field_='type')}: {task_type!r} is not one of {list(TASK_TYPES)}")
    if task_type == "generation":
        if labels or meta.get("labels"):
            raise TaskFormatError(f"{_where(meta_path, field_='labels')}: a generation task has no labels")
        labels = ()
    elif labels is None:
        if "labels" not in meta:
            raise TaskFormatError(
                f"{_where(meta_path, field_='labels')}: missing field; expected a list of label strings"
            )
        raw = meta["labels"]
        if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
            raise TaskFormatError(f"{_where(meta_path, field_='labels')}: expected a list of strings, got {raw!r}")
        problem = _label_list_problem(raw)
        if problem:
            raise TaskFormatError(f"{_where(meta_path, field_='labels')}: {problem}")
        labels = tuple(raw)
    if not task_name.strip():
        raise TaskFormatError(f"{_where(meta_path, field_='name')}: must not be empty")

    present = [s for s in SPLITS if (folder / f"{s}.jsonl").is_file()]
    if "train" not in present and "test" not in present:
        raise TaskFormatError(
            f"{folder}: a task folder needs train.jsonl or test.jsonl (found "
            f"{', '.join(p + '.jsonl' for p in present) or 'neither'})"
        )
    if task_type == "generation":
        splits = {s: read_generation_examples(folder / f"{s}.jsonl") for s in present}
    else:
        splits = {s: read_examples(folder / f"{s}.jsonl", labels, text_col, label_col) for s in present}
    for s, examples in splits.items():
        if not examples:
            raise TaskFormatError(
                f"{folder / f'{s}.jsonl'}: split file is empty; expected at least one record (delete the file to "
                "leave the split out)"
            )
    return Task(
        task_name,
        task_description,
        labels,
        splits,
        source=optional_field("source"),
        license=optional_field("license"),
        version=optional_field("version"),
        path=folder,
        task_type=task_type,
    )


# ------------------------------------------------------------------------------------- Super-NaturalInstructions


def _load_sni(path: Path, name: str | None, description: str | None, labels: tuple[str, ...] | None, seed: int) -> Task:
    data = _parse_json(path)
    if not isinstance(data, dict) or "Instances" not in data:
        raise TaskFormatError(
            f"{_where(path, field_='Instances')}: missing; expected a Super-NaturalInstructions "
            "task (an object with 'Definition' and 'Instances')"
        )
    if description is None:
        definition = data.get("Definition")
        if isinstance(definition, str):
            description = definition.strip()
        elif isinstance(definition, list) and definition and all(isinstance(x, str) for x in definition):
            description = "\n".join(x.strip() for x in definition)
        else:
            raise TaskFormatError(
                f"{_where(path, field_='Definition')}: expected a string or a non-empty list of "
                f"strings, got {definition!r}"
            )
    instances = data["Instances"]
    if not isinstance(instances, list) or not instances:
        raise TaskFormatError(
            f"{_where(path, field_='Instances')}: expected a non-empty list of "
            '{"input": ..., "output": [...]} objects'
        )
    pairs: list[tuple[str, str]] = []
    for i, inst in enumerate(instances):
        where = f"Instances[{i}]"
        if not isinstance(inst, dict):
            raise TaskFormatError(f"{_where(path, field_=where)}: expected an object, got {type(inst).__name__}")
        for key in ("input", "output"):
            if key not in inst:
                raise TaskFormatError(f"{_where(path, field_=f'{where}.{key}')}: missing field")
        text, output = inst["input"], inst["output"]
        if not isinstance(text, str):
            raise TaskFormatError(f"{_where(path, field_=f'{where}.input')}: expected a string, got {text!r}")
        if isinstance(output, list) and output:
            output = output[0]
        if not isinstance(output, str):
            raise TaskFormatError(
                f"{_where(path, field_=f'{where}.output')}: expected a non-empty list of strings "
                f"(the first is the label), got {inst['output']!r}"
            )
        pairs.append((text, output))
    if labels is None:
        labels = _infer_labels((label for _, label in pairs), path, "Instances[*].output")
    else:
        for i, (_, label) in enumerate(pairs):
            _check_label(label, labels, _where(path, field_=f"Instances[{i}].output"))
    examples = [Example(text, label) for text, label in pairs]
    source = data.get("Source")
    if isinstance(source, list) and all(isinstance(x, str) for x in source):
        source = ", ".join(source)
    return Task(
        name or path.stem,
        description,
        labels,
        _split_examples(examples, seed, path),
        source=source if isinstance(source, str) and source else None,
        path=path,
    )


# --------------------------------------------------------------------------------------------- CSV


def _load_csv(
    path: Path,
    text_col: str,
    label_col: str,
    name: str | None,
    description: str | None,
    labels: tuple[str, ...] | None,
    seed: int,
) -> Task:
    handle = io.StringIO(_read_text(path), newline="")
    rows: list[tuple[int, str, str, str | None]] = []
    with handle:
        reader = csv.reader(handle)
        header: list[str] | None = None
        cols, split_col = (0, 0), None
        try:
            line = 1
            for row in reader:
                if not any(cell.strip() for cell in row):
                    line = reader.line_num + 1
                    continue
                if header is None:
                    header = [h.strip() for h in row]
                    missing = [c for c in (text_col, label_col) if c not in header]
                    if missing:
                        raise TaskFormatError(
                            f"{_where(path, line, missing[0])}: column not found in the header {header}; name the "
                            "text and label columns with --text-col and --label-col"
                        )
                    cols = header.index(text_col), header.index(label_col)
                    split_col = header.index("split") if "split" in header else None
                elif len(row) != len(header):
                    raise TaskFormatError(
                        f"{_where(path, line)}: {len(row)} fields, expected {len(header)} as in the header"
                    )
                else:
                    split = None if split_col is None else row[split_col].strip()
                    rows.append((line, row[cols[0]], row[cols[1]].strip(), split))
                line = reader.line_num + 1
        except csv.Error as exc:
            raise TaskFormatError(f"{_where(path, reader.line_num)}: malformed CSV ({exc})") from None
    if header is None:
        raise TaskFormatError(f"{path}: empty CSV; expected a header row with {text_col!r} and {label_col!r}")
    if not rows:
        raise TaskFormatError(f"{path}: no data rows after the header")
    for line, _, label, split in rows:
        if not label:
            raise TaskFormatError(f"{_where(path, line, label_col)}: empty label")
        if split is not None and split.lower() not in _SPLIT_ALIASES:
            raise TaskFormatError(
                f"{_where(path, line, 'split')}: {split!r} is not a split; expected one of "
                f"{', '.join(SPLITS)} (or validation/val/valid for dev)"
            )
    if labels is None:
        labels = _infer_labels((label for _, _, label, _ in rows), path, label_col)
    else:
        for line, _, label, _ in rows:
            _check_label(label, labels, _where(path, line, label_col))
    if split_col is None:
        splits = _split_examples([Example(text, label) for _, text, label, _ in rows], seed, path)
    else:
        grouped: dict[str, list[Example]] = {}
        for _, text, label, split in rows:
            grouped.setdefault(_SPLIT_ALIASES[str(split).lower()], []).append(Example(text, label))
        if "train" not in grouped and "test" not in grouped:
            raise TaskFormatError(
                f"{_where(path, field_='split')}: no row is in train or test; a task needs one of them"
            )
        splits = {s: tuple(grouped[s]) for s in SPLITS if s in grouped}
    return Task(name or path.stem, description if description is not None else "", labels, splits, path=path)


# --------------------------------------------------------------------------------------------- public loaders


def load_task(
    path: str | Path,
    *,
    text_col: str = "text",
    label_col: str = "label",
    name: str | None = None,
    description: str | None = None,
    labels: Sequence[str] | None = None,
    seed: int = 0,
) -> Task:
    """Load one task from a task folder, a Super-NaturalInstructions ``*.json`` or a ``*.csv``.

    ``text_col``/``label_col`` name the record fields (task folder) or columns (CSV); SNI files always use
    ``input``/``output``. ``name``, ``description`` and ``labels`` override what the file says: a given
    ``description`` wins over a folder's ``task.json``, an SNI ``Definition`` and a CSV's side file (a CSV has
    no room for one: without the argument it comes from ``<name>.description.txt`` when there is one, else
    ``""``); it is part of the task's fingerprint, so results under another instruction are kept apart. For SNI
    and CSV the name defaults to the file stem and the labels to the sorted distinct labels found. ``seed``
    fixes the 80/10/10 split of single-file formats that carry no split of their own. A path to a
    ``task.json`` loads its folder.
    """
    path = Path(path)
    label_tuple = _check_labels_arg(labels)
    if not path.exists():
        raise TaskFormatError(f"{path}: no such file or folder")
    if path.is_dir():
        return _load_folder(path, text_col, label_col, name, description, label_tuple)
    suffix = path.suffix.lower()
    if path.name == "task.json":
        return _load_folder(path.parent, text_col, label_col, name, description, label_tuple)
    if suffix == ".json":
        return _load_sni(path, name, description, label_tuple, seed)
    if suffix == ".csv":
        side = path.with_suffix(".description.txt")  # a CSV has no room for the instruction: a side file holds it
        if description is None and side.is_file():
            description = _read_text(side).strip()
        task = _load_csv(path, text_col, label_col, name, description, label_tuple, seed)
        if not task.description:  # the instruction is what the model reads before each text: say it is missing
            log.warning(
                "%s: no description, so the task's instruction is empty (zero-shot and the library's retrieval of "
                "similar adapters read it); write it to %s beside the CSV, or pass --description TEXT",
                path,
                side.name,
            )
        return task
    raise TaskFormatError(
        f"{path}: unsupported task format {suffix or '(no suffix)'!r}; expected a task folder, "
        "a Super-NaturalInstructions .json or a .csv"
    )


def task_spec(value: str | Path) -> tuple[Path, str | None, str | None]:
    """``PATH``, ``PATH:TEXT_COL`` or ``PATH:TEXT_COL:LABEL_COL`` (an empty part keeps the default, as in
    ``PATH::LABEL_COL``): the task and its own columns, when several tasks of one command name them differently.
    A path that exists as given is never split, so a file name holding a colon still loads."""
    path = Path(value)
    if path.exists():
        return path, None, None
    text = str(value)
    for parts in (text.rsplit(":", 2), text.rsplit(":", 1)):
        columns = [c or None for c in parts[1:]]
        if len(parts) > 1 and any(columns) and Path(parts[0]).exists():
            return Path(parts[0]), columns[0], columns[1] if len(columns) == 2 else None
    return path, None, None


def load_tasks(
    paths: Sequence[str | Path], *, text_col: str = "text", label_col: str = "label", description: str | None = None
) -> list[Task]:
    """Load several tasks (``description``, when given, for all); each path may name its own columns as
    ``PATH:TEXT_COL:LABEL_COL`` (:func:`task_spec`), ``text_col``/``label_col`` are the rest's. Names must be unique
    because results are keyed by name."""
    if isinstance(paths, (str, Path)):
        raise TaskFormatError(f"load_tasks expects a list of paths, got the single path {str(paths)!r}")
    tasks: list[Task] = []
    seen: dict[str, Path | None] = {}
    for spec in paths:
        p, own_text, own_label = task_spec(spec)
        task = load_task(p, text_col=own_text or text_col, label_col=own_label or label_col, description=description)
        if task.name in seen:
            raise TaskFormatError(
                f"two tasks are named {task.name!r}: {seen[task.name]} and {task.path}; task names must be unique"
            )
        seen[task.name] = task.path
        tasks.append(task)
    return tasks


def write_task(task: Task, folder: Path) -> Path:
    """Write ``task`` as a task folder (``task.json`` + ``<split>.jsonl``) and return the folder.

    Split files of splits the task does not have are removed, so the folder loads back as exactly this task.
    """
    empty = [s for s, examples in task.splits.items() if not examples]
    if empty:
        raise TaskFormatError(
            f"task {task.name!r}: cannot write empty split(s) {', '.join(empty)}; drop them with with_splits(name=None)"
        )
    if "train" not in task.splits and "test" not in task.splits:
        raise TaskFormatError(f"task {task.name!r}: a task folder needs a train or test split")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {"name": task.name, "description": task.description, "labels": list(task.labels)}
    if task.generative:
        meta = {"name": task.name, "type": task.task_type, "description": task.description}
    for key in ("source", "license", "version"):
        value = getattr(task, key)
        if value is not None:
            meta[key] = value
    meta["sizes"] = {s: len(v) for s, v in task.splits.items()}
    for split in SPLITS:
        target = folder / f"{split}.jsonl"
        if split in task.splits:
            lines = (json.dumps(_record(task, e), ensure_ascii=False) for e in task.splits[split])
            write_file(target, ("\n".join(lines) + "\n").encode("utf-8"))
        elif target.exists():
            target.unlink()
    write_file(folder / "task.json", (json.dumps(meta, ensure_ascii=False, indent=2) + "\n").encode("utf-8"))
    return folder


def _record(task: Task, e: Example) -> dict[str, Any]:
    """An example as its JSONL line: ``{"text", "label"}``, or for generation ``{"prompt", "response"}`` (a chat
    with earlier turns as ``{"messages"}``)."""
    if not task.generative:
        return {"text": e.text, "label": e.label}
    if not e.history:
        return {"prompt": e.text, "response": e.label}
    turns = [*e.history, ("user", e.text), ("assistant", e.label)]
    return {"messages": [{"role": r, "content": c} for r, c in turns]}


def is_text_file(path: Path) -> bool:
    """A plain list of inputs (``.txt``, or ``.jsonl`` that is not a task folder's split) rather than a task."""
    path = Path(path)
    return path.is_file() and (
        path.suffix == ".txt" or (path.suffix == ".jsonl" and not (path.parent / "task.json").is_file())
    )


MAX_LINE_CHARS = 100_000  # one input of predict, calibration or tta text: tokenizing 20 MB takes minutes


def read_corpus(path: Path) -> list[str]:
    """A plain-text corpus (a ``.txt``, one text a line, or a ``.jsonl`` of ``{"text": ...}``) with at least one
    text; anything else is an error naming the file (and line)."""
    path = Path(path)
    if not path.exists():
        raise TaskFormatError(f"{path}: no such corpus file")
    if not is_text_file(path):
        raise TaskFormatError(
            f'{path}: not a text corpus; expected a .txt file (one text a line) or a .jsonl file of {{"text": ...}} '
            "lines (a task folder's split is a task, not a corpus)"
        )
    texts = read_texts(path)
    if not texts:
        raise TaskFormatError(f"{path}: empty corpus (no non-empty text)")
    return texts


def read_texts(path: Path, field: str = "text") -> list[str]:
    """Unlabelled inputs: one text per non-empty line of a ``.txt``, or the ``field`` of each ``.jsonl`` line
    (``text``; ``prompt`` for prompts to answer); a malformed line is an error naming it."""
    return [text for _, text in read_numbered_texts(path, field)]


def read_numbered_texts(path: Path, field: str = "text") -> list[tuple[int, str]]:
    """:func:`read_texts` with each text's line number, for errors and rows that point back into the file."""
    path = Path(path)
    lines = _read_text(path).splitlines()
    for number, line in enumerate(lines, start=1):
        if len(line) > MAX_LINE_CHARS:
            raise TaskFormatError(
                f"{path}:{number}: {len(line)} characters, more than the limit of {MAX_LINE_CHARS} per input "
                "(the model reads a few hundred tokens of it); split or shorten it"
            )
    if path.suffix == ".txt":
        return [(number, line.strip()) for number, line in enumerate(lines, start=1) if line.strip()]
    texts = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        row = parse_json(line, str(path), TaskFormatError, number, f'an object like {{"{field}": ...}}')
        if not isinstance(row, dict) or not isinstance(row.get(field), str):
            raise TaskFormatError(f"{path}:{number}: expected an object with a string field {field!r}")
        texts.append((number, row[field]))
    return texts
