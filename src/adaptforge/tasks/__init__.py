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

import logging
from collections.abc import Sequence
from pathlib import Path

from adaptforge.tasks.delimited import _load_csv
from adaptforge.tasks.folder import _load_folder, write_task
from adaptforge.tasks.model import (
    MAX_INFERRED_LABELS,
    SPLITS,
    TASK_TYPES,
    Example,
    Task,
    TaskFormatError,
)
from adaptforge.tasks.reading import _check_labels_arg, _read_text, read_examples, read_generation_examples
from adaptforge.tasks.sni import _load_sni
from adaptforge.tasks.texts import MAX_LINE_CHARS, is_text_file, read_corpus, read_numbered_texts, read_texts

log = logging.getLogger(__name__)

__all__ = [
    "MAX_INFERRED_LABELS",
    "MAX_LINE_CHARS",
    "SPLITS",
    "TASK_TYPES",
    "Example",
    "Task",
    "TaskFormatError",
    "is_text_file",
    "load_task",
    "load_tasks",
    "task_spec",
    "read_corpus",
    "read_examples",
    "read_generation_examples",
    "read_numbered_texts",
    "read_texts",
    "write_task",
]


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
