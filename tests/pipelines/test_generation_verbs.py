"""The verbs on a generation task with a tiny random LLaMA: train (SFT), eval --json, predict (task and prompt
file), and the one-line refusals that write nothing."""

from __future__ import annotations

import json

import pytest
from conftest import reverse_task, run_cli, snapshot


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_llama_dir):
    from adaptforge.tasks import write_task

    root = tmp_path_factory.mktemp("gen")
    folder = write_task(reverse_task(n_train=16, n_test=4), root / "reverse2")
    lib = root / "lib"
    common = ("--model", tiny_llama_dir, "--max-length", "64", "--batch-size", "8", "--rank", "4")
    run_cli("train", folder, "--library", lib, "--name", "rev", "--epochs", "1", *common)
    return folder, lib, tiny_llama_dir


def test_eval_json_rows_carry_generation_metrics(trained):
    folder, lib, model = trained
    result = run_cli("eval", folder, "--library", lib, "-a", "rev", "--zero-shot", "--json", "--max-new-tokens", "4")
    rows = json.loads(result.stdout)["results"]
    assert [r["adapter"] for r in rows] == [None, "rev"]
    for row in rows:
        assert set(row) == {"task", "adapter", "split", "n", "exact_match", "rouge_l", "loss"} and row["n"] == 4


def test_predict_answers_a_task_and_a_prompt_file(trained, tmp_path):
    folder, lib, model = trained
    lines = run_cli("predict", folder, "--library", lib, "-a", "rev", "--max-new-tokens", "3").stdout.splitlines()
    rows = [json.loads(x) for x in lines if x.startswith("{")]
    assert len(rows) == 4 and all(set(r) == {"prompt", "output", "gold"} for r in rows)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "good film"}\n{"prompt": "bad plot"}\n')
    out = tmp_path / "answers.jsonl"
    run_cli("predict", prompts, "--library", lib, "-a", "rev", "--max-new-tokens", "3", "--out", out)
    answers = [json.loads(x) for x in out.read_text().splitlines()]
    assert [a["prompt"] for a in answers] == ["good film", "bad plot"] and all(
        set(a) == {"prompt", "output"} for a in answers
    )


@pytest.mark.parametrize("tokens", ["0", "-1", "512"])
def test_bad_max_new_tokens_is_one_line_and_writes_nothing(trained, tmp_path, tokens):
    folder, lib, model = trained
    out = tmp_path / "o.jsonl"
    result = run_cli(
        "predict", folder, "--library", lib, "-a", "rev", "--max-new-tokens", tokens, "--out", out, ok=False
    )
    assert result.exit_code != 0 and "--max-new-tokens" in result.output and not out.exists()


def test_classification_only_method_on_generation_task_writes_nothing(trained):
    folder, lib, model = trained
    before = snapshot(lib)
    result = run_cli("tta", folder, "--library", lib, "-a", "rev", "--method", "tent", ok=False)
    assert result.exit_code != 0 and "generation task" in result.output
    assert snapshot(lib) == before
