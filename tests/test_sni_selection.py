"""The committed Super-NaturalInstructions selection (benchmarks/data/sni) loads as generation tasks."""

from __future__ import annotations

from pathlib import Path

import pytest

from adaptforge.tasks import load_task

SNI = Path(__file__).resolve().parents[1] / "benchmarks" / "data" / "sni"
FOLDERS = sorted(p for p in SNI.iterdir() if (p / "task.json").is_file()) if SNI.is_dir() else []


def test_selection_is_there() -> None:
    assert len(FOLDERS) >= 5


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda p: p.name)
def test_folder_loads_as_generation_task_with_disjoint_splits(folder: Path) -> None:
    task = load_task(folder)
    assert task.generative and task.name == folder.name
    assert task.description and task.license == "Apache-2.0" and "natural-instructions" in (task.source or "")
    prompts = {}
    for split in ("train", "dev", "test"):
        examples = task.splits[split]
        assert examples, f"{folder.name}: empty {split}"
        assert all(e.text.strip() and e.label.strip() for e in examples)
        prompts[split] = {e.text for e in examples}
        assert len(prompts[split]) == len(examples), f"{folder.name}: repeated prompt in {split}"
    assert not prompts["train"] & prompts["dev"]
    assert not prompts["train"] & prompts["test"]
    assert not prompts["dev"] & prompts["test"]
