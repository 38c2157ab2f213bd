"""``--description``: a task's instruction from the command line, in every verb that takes a task (issue 19).

The flag wins over a CSV's ``<name>.description.txt`` side file and over a task folder's ``task.json``
description; it names one task, so several tasks, no task or a blank text are refused with one line.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from helpers import run_cli as run
from helpers import small_task, task_dir

FLAG = "Decide whether the movie review is positive or negative."
SIDE = "Is the sentiment of this sentence negative or positive?"


@pytest.fixture(scope="module")
def reviews(tmp_path_factory) -> Path:
    """sst2 examples as a CSV (no room for an instruction) with a side-file description."""
    folder = tmp_path_factory.mktemp("csv")
    task = small_task("sst2", n_train=40, n_test=40)
    path = folder / "reviews.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows([e.text, e.label] for e in task.split("train") + task.split("test"))
    (folder / "reviews.description.txt").write_text(SIDE + "\n", encoding="utf-8")
    return path


def _description(lib: Path, name: str) -> str:
    return json.loads(run("library", "show", name, "--library", lib, "--json").stdout)["description"]


def test_the_flag_wins_over_the_side_file_and_task_json(reviews, tmp_path):
    lib = tmp_path / "lib"
    common = ["--library", lib, "--max-train", 16, "--epochs", 1, "--batch-size", 16, "--rank", 2]
    run("train", reviews, "--name", "side", *common)
    run("train", reviews, "--name", "flag", "--description", f"  {FLAG}\n", *common)
    run("train", task_dir("sst2"), "--name", "folder", "--description", FLAG, *common)
    assert _description(lib, "side") == SIDE
    assert _description(lib, "flag") == FLAG  # stripped
    assert _description(lib, "folder") == FLAG  # a JSONL task folder's own description is overridden too

    # eval: the instruction is part of what the scorer reads, so the zero-shot numbers move with it
    def zero_shot(*extra: object) -> dict:
        out = run("eval", reviews, "--zero-shot", "--split", "train", "--limit", 16, "--json", *extra).stdout
        return json.loads(out)["results"][0]

    assert zero_shot()["loss"] != zero_shot("--description", FLAG)["loss"]
    assert zero_shot()["loss"] == zero_shot("--description", SIDE)["loss"]  # the side file is what was read

    # predict: a task input takes the flag over its own description as well
    def scores(*extra: object) -> list:
        out = run("predict", reviews, "--library", lib, "--adapter", "flag", "--split", "train", *extra).stdout
        return [json.loads(line)["scores"] for line in out.splitlines()]

    assert scores() != scores("--description", FLAG)
    assert scores() == scores("--description", SIDE)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["eval", "{csv}", "{sst2}", "--zero-shot", "--description", FLAG],
            "error: --description sets one task's instruction but 2 tasks were given (TASK_DIRS); "
            "for several CSV tasks put a <name>.description.txt beside each file",
        ),
        (
            ["eval", "{csv}", "--zero-shot", "--description", "  "],
            "error: --description is empty; give the task's instruction, or leave it out to use the task's own",
        ),
        (
            ["library", "import", "{csv}", "--library", "{lib}", "--name", "x", "--description", FLAG],
            "error: --description is the instruction of --task TASK, and no --task TASK was given",
        ),
        (
            ["merge", "a", "b", "--library", "{lib}", "--out", "m", "--description", FLAG],
            "error: --description is the instruction of --eval TASK, and no --eval TASK was given",
        ),
        (
            ["train", "{csv}", "{sst2}", "--multitask", "--library", "{lib}", "--name", "m", "--description", FLAG],
            "error: --description sets one task's instruction but 2 tasks were given (TASK_DIRS); "
            "for several CSV tasks put a <name>.description.txt beside each file",
        ),
    ],
)
def test_a_description_names_one_task(reviews, tmp_path, args, message):
    lib = tmp_path / "lib"
    fill = {"csv": reviews, "sst2": task_dir("sst2"), "lib": lib}
    result = run(*[str(a).format(**fill) if isinstance(a, str) else a for a in args], ok=False)
    assert result.exit_code == 2 and " ".join(result.output.split()) == message
    assert not lib.exists()  # refused before any library folder is made


def test_every_verb_that_takes_a_task_has_the_flag():
    for verb in (["train"], ["eval"], ["compose"], ["tta"], ["prune"], ["merge"], ["predict"], ["library", "import"]):
        text = " ".join(run(*verb, "--help").stdout.replace("│", " ").split())
        assert "--description" in text and "wins over" in text, verb
    assert "also the --eval task's, over its own" in " ".join(
        run("generate", "--help").stdout.replace("│", " ").split()
    )
