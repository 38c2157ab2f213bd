"""CSV task files with a header row; an optional ``split`` column assigns rows to splits (else 80/10/10)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from adaptforge.tasks.model import _SPLIT_ALIASES, SPLITS, Example, Task, TaskFormatError, _split_examples, _where
from adaptforge.tasks.reading import _check_label, _infer_labels, _read_text


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
