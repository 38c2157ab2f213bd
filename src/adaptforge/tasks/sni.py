"""Super-NaturalInstructions task files (``*.json``): ``Definition`` is the description, ``Instances[i].output[0]``
the label of ``Instances[i].input``; split 80/10/10, label-stratified."""

from __future__ import annotations

from pathlib import Path

from adaptforge.tasks.model import Example, Task, TaskFormatError, _split_examples, _where
from adaptforge.tasks.reading import _check_label, _infer_labels, _parse_json


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
