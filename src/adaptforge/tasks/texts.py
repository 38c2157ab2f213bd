"""Plain lists of inputs (``.txt`` lines, or ``.jsonl`` objects with a text field) for predict, calibration and
test-time adaptation: not tasks."""

from __future__ import annotations

from pathlib import Path

from adaptforge.structured import parse_json
from adaptforge.tasks.model import TaskFormatError
from adaptforge.tasks.reading import _read_text


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
