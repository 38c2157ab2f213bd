"""Reading task records: JSONL examples of a task folder's split (classification or generation), the checks
of labels given or inferred, and the text readers every format shares."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from adaptforge.structured import parse_json
from adaptforge.tasks.model import MAX_INFERRED_LABELS, Example, TaskFormatError, _label_list_problem, _where


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
