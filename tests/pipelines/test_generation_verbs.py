"""The verbs on a generation task with a tiny random LLaMA: train (SFT), eval --json, predict (task and prompt
file), plain merges of LLM adapters, and the one-line refusals that come before the base model loads and write
nothing."""

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
    run_cli("train", folder, "--library", lib, "--name", "rev-b", "--epochs", "1", "--seed", "1", *common)
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


@pytest.fixture
def no_model_load(monkeypatch):
    """Any attempt to load a base model fails the test: the refusals must come first."""
    from adaptforge.backbone import Backbone

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the base model was loaded before the request was refused")

    monkeypatch.setattr(Backbone, "load", classmethod(refuse))


REFUSALS = {
    "merge --data": ("merge", "rev", "rev-b", "-l", "{lib}", "--method", "atlas", "--data", "{task}", "--out", "m"),
    "merge --eval": ("merge", "rev", "rev-b", "-l", "{lib}", "--eval", "{task}", "--out", "m"),
    "prune --domain": ("prune", "--method", "wanda", "--sparsity", "0.5", "--domain", "{task}", "--out", "{tmp}/p"),
    "generate --eval": ("generate", "-l", "{lib}", "-o", "g", "--description", "d", "--labels", "a,b", "--eval",
                        "{task}"),
    "generate --examples": (
        "generate", "-l", "{lib}", "-o", "g", "--description", "d", "--labels", "a,b", "--method", "icm",
        "--examples", "{task}",
    ),
}  # fmt: skip


@pytest.mark.parametrize("verb", sorted(REFUSALS))
def test_label_scoring_on_generation_task_is_refused_before_loading(trained, tmp_path, no_model_load, verb):
    folder, lib, model = trained
    args = [str(a).format(task=folder, tmp=tmp_path, lib=lib) for a in REFUSALS[verb]]
    before = snapshot(lib)
    result = run_cli(*args, "--model", model, ok=False)
    assert result.exit_code == 2, result.output + repr(result.exception)  # an AdaptforgeError, not a crash
    message = [line for line in result.output.splitlines() if line.strip()]
    assert len(message) == 1 and "generation task" in message[0] and "classification only" in message[0]
    assert snapshot(lib) == before and not (tmp_path / "p").exists()


@pytest.mark.parametrize("method", ["task_arithmetic", "ties"])
def test_plain_merges_of_llm_adapters_work_and_generate(trained, method):
    """Merging needs no data: defined for LLM adapters; the merged adapter answers the generation task."""
    folder, lib, model = trained
    run_cli("merge", "rev", "rev-b", "--library", lib, "--method", method, "--out", f"m-{method}", "--overwrite")
    result = run_cli("eval", folder, "--library", lib, "-a", f"m-{method}", "--json", "--max-new-tokens", "4")
    (row,) = json.loads(result.stdout)["results"]
    assert row["adapter"] == f"m-{method}" and row["n"] == 4 and 0 <= row["rouge_l"] <= 1

