"""The project's own format, the task folder: ``task.json`` plus ``<split>.jsonl``; read and written here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from adaptforge.durable import write_file
from adaptforge.tasks.model import SPLITS, TASK_TYPES, Example, Task, TaskFormatError, _label_list_problem, _where
from adaptforge.tasks.reading import _parse_json, read_examples, read_generation_examples


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
