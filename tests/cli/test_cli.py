"""The command-line contract that later issues and users script against, run for real."""

from __future__ import annotations

import json

import pytest
from helpers import library_copy, task_dir
from helpers import run_cli as run


@pytest.fixture(scope="module")
def cli_library(trained_library, tmp_path_factory):
    """A private copy of the session's trained library (its ``sst2-a``: 32 examples, 1 epoch, rank 4) with
    ``sst2-a``'s dev accuracy recorded through the CLI, as a folder."""
    root = library_copy(trained_library, tmp_path_factory.mktemp("cli") / "lib").root
    run("eval", trained_library[1]["sst2"], "--library", root, "--adapter", "sst2-a", "--split", "dev")
    return root


def test_eval_json_contract(cli_library):
    out = run(
        "eval",
        task_dir("sst2"),
        task_dir("subjectivity"),
        "--library",
        cli_library,
        "--adapter",
        "sst2-a",
        "--zero-shot",
        "--limit",
        "20",
        "--json",
    ).stdout
    results = json.loads(out)["results"]
    assert {(r["task"], r["adapter"]) for r in results} == {
        ("sst2", None),
        ("subjectivity", None),
        ("sst2", "sst2-a"),
        ("subjectivity", "sst2-a"),
    }
    for r in results:
        assert set(r) == {"task", "adapter", "split", "n", "accuracy", "macro_f1", "loss"} and r["n"] == 20
        assert r["split"] == "test" and r["loss"] > 0
        assert 0.0 <= r["accuracy"] <= 1.0
    shown = json.loads(run("library", "show", "sst2-a", "--library", cli_library, "--json").stdout)
    assert {(m["task"], m["metric"]) for m in shown["metrics"]} >= {("sst2", "accuracy"), ("subjectivity", "macro_f1")}
    assert shown["recipe"]["config"]["max_train"] == 32 and shown["method"] == "train"


def test_library_list_export_import_rm(cli_library, tmp_path):
    listed = json.loads(run("library", "list", "--library", cli_library, "--json").stdout)["adapters"]
    assert sorted(a["name"] for a in listed) == ["agnews-a", "sst2-a", "sst2-b", "subjectivity-a"]
    assert {a["embedding"] for a in listed} == {"<384 floats>"}  # the vectors only when asked for
    full = json.loads(run("library", "list", "--library", cli_library, "--json", "--with-embeddings").stdout)
    assert all(len(a["embedding"]) == 384 for a in full["adapters"])
    run("library", "export", "sst2-a", "--library", cli_library, "--out", tmp_path / "exported")
    from peft import PeftModel
    from transformers import AutoModel

    from adaptforge.backbone import resolve_model_path

    config = json.loads((tmp_path / "exported" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "sentence-transformers/all-MiniLM-L6-v2"  # the hub id, not a path
    base = AutoModel.from_pretrained(resolve_model_path(config["base_model_name_or_path"]))  # offline: the local copy
    loaded = PeftModel.from_pretrained(base, tmp_path / "exported")
    assert type(loaded.base_model.model).__name__ == "BertModel"
    card = (tmp_path / "exported" / "README.md").read_text()
    assert "# sst2-a" in card and "task: sst2" in card and "| sst2 | dev | accuracy |" in card
    other = tmp_path / "other"
    run("library", "import", tmp_path / "exported", "--library", other, "--name", "again", "--task", task_dir("sst2"))
    again = json.loads(run("library", "show", "again", "--library", other, "--json").stdout)
    assert again["method"] == "import" and again["task"] == "sst2"
    a = json.loads(
        run("eval", task_dir("sst2"), "--library", cli_library, "-a", "sst2-a", "--limit", "16", "--json").stdout
    )
    b = json.loads(run("eval", task_dir("sst2"), "--library", other, "-a", "again", "--limit", "16", "--json").stdout)
    assert a["results"][0]["accuracy"] == b["results"][0]["accuracy"]
    run("library", "rm", "again", "--library", other)
    assert json.loads(run("library", "list", "--library", other, "--json").stdout)["adapters"] == []


def test_corrupted_adapter_is_refused(cli_library, tmp_path):
    import shutil

    lib = tmp_path / "copy"
    shutil.copytree(cli_library, lib)
    from adaptforge.library import Library

    weights = lib / "adapters" / Library(lib).get("sst2-a").id / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    result = run("eval", task_dir("sst2"), "--library", lib, "-a", "sst2-a", "--limit", "8", ok=False)
    assert result.exit_code == 2 and "adapter_model.safetensors" in result.output and "sst2-a" in result.output


def test_bad_task_file_is_a_clear_error(tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "task.json").write_text(json.dumps({"name": "bad", "description": "d", "labels": ["a", "b"]}))
    (folder / "test.jsonl").write_text('{"text": "x", "label": "a"}\n{"text": "y", "label": "c"}\n')
    result = run("eval", folder, ok=False)
    assert result.exit_code == 2
    assert "test.jsonl" in result.output and "line 2" in result.output and "'c'" in result.output


def test_library_show_is_readable_and_json_has_everything(cli_library):
    shown = run("library", "show", "sst2-a", "--library", cli_library).stdout
    for expected in (
        "sst2-a",
        "kind",
        "train (train)",
        "base",
        "rank",
        "4 on",
        "sst2/dev accuracy",
        "(n=",
        "integrity",
    ):
        assert expected in shown, expected
    assert "adapter_model.safetensors" in shown and "[" not in shown.split("integrity")[-1]
    brief = json.loads(run("library", "show", "sst2-a", "--library", cli_library, "--json").stdout)
    assert brief["embedding"] == "<384 floats>" and brief["kind"] == "train" and brief["integrity"]["ok"]
    assert brief["files"]["adapter_model.safetensors"] > 0
    full = json.loads(run("library", "show", "sst2-a", "--library", cli_library, "--json", "--with-embeddings").stdout)
    assert len(full["embedding"]) == 384 and all(isinstance(v, float) for v in full["embedding"])


def test_version() -> None:
    from importlib.metadata import version

    assert run("--version").stdout.strip() == f"adaptforge {version('adaptforge')}"


def test_help_is_fast_to_load_and_shows_flags_as_flags():
    """`adaptforge --help` must not import torch (seconds of start-up), and boolean options read as flags."""
    import subprocess
    import sys

    probe = "import sys, adaptforge.cli; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", probe], check=False).returncode == 0
    for verb in ("merge", "compose", "eval", "train", "prune"):
        lines = [line for line in run(verb, "--help").stdout.splitlines() if "Show this message" not in line]
        assert not any("<bool>" in line for line in lines) and any("--json" in line for line in lines), verb


def test_eval_all_adapters_runs_each_on_its_own_base_and_skips_what_does_not_fit(minilm, tiny_llama, tmp_path):
    """A library holding adapters of two bases: each is evaluated on its own base, and with --model only the
    matching ones are, the others skipped with one line each; the grid never aborts."""
    from helpers import MINILM_ATTENTION, random_delta

    from adaptforge.library import Library
    from adaptforge.pipelines.train import train_into_library
    from adaptforge.tasks import load_task
    from adaptforge.train.config import TrainConfig

    lib = Library(tmp_path / "lib")
    lib.add(random_delta(MINILM_ATTENTION, rank=2, std=0.01), name="mini", base=minilm)
    task = task_dir("sst2")
    small = load_task(task).with_splits(train=load_task(task).sample("train", 16, seed=0))
    train_into_library(small, tiny_llama, lib, "llama", TrainConfig(epochs=1, batch_size=8), eval_splits=())
    got = json.loads(run("eval", task, "--library", lib.root, "--all-adapters", "--limit", "8", "--json").stdout)
    assert {r["adapter"] for r in got["results"]} == {"mini", "llama"} and got["skipped"] == []
    only = run("eval", task, "--library", lib.root, "--all-adapters", "--limit", "8", "--model", "all-MiniLM-L6-v2")
    assert "skipped: llama: made on base" in only.output and "mini" in only.output


def test_train_reports_zero_shot_and_refuses_a_left_checkpoint_without_resume_or_overwrite(minilm, tmp_path):
    from adaptforge.library import Library
    from adaptforge.tasks import load_task
    from adaptforge.train.config import TrainConfig
    from adaptforge.train.trainer import train_tasks

    args = ["train", task_dir("sst2"), "--library", tmp_path / "lib", "--name", "s", "--max-train", "16"]
    args += ["--epochs", "1", "--batch-size", "8", "--checkpoint-every", "1"]
    lib = Library(tmp_path / "lib")
    task = load_task(task_dir("sst2"))
    cfg = TrainConfig(max_train=16, epochs=1, batch_size=8, checkpoint_every=1)
    train_tasks([task], minilm, cfg, checkpoint_dir=lib.run_dir("s"), stop_after=1)  # a run killed after step 1
    refused = run(*args, ok=False)
    said = " ".join(refused.output.split())  # the console wraps long lines
    assert refused.exit_code == 2 and "stopped at step 1" in said
    assert "pass --resume to continue it, or --overwrite to start over" in said and not lib.exists("s")
    done = " ".join(run(*args, "--overwrite").output.split())
    assert "sst2/dev (n=" in done and "zero-shot" in done and "-> s " in done
    zero = [m for m in lib.metrics(zero_shot=True, task="sst2", split="dev") if m.metric == "accuracy"]
    assert zero and not lib.run_dir("s").exists()


def test_progress_off_a_terminal_is_lines_with_rate_and_eta(capsys):
    from adaptforge.cli import render

    lines = render.LineProgress("train x", total=100, every=0.0)
    lines.update(0, completed=25, info="loss 0.5")
    text = lines.line(lines.start + 10.0)
    assert text.startswith("train x: 25/100") and "2.50/s" in text and "ETA 30s" in text and "loss 0.5" in text
    assert "train x: 25/100" in capsys.readouterr().err  # printed at once since every=0
    unknown = render.LineProgress("eval", total=None)
    assert "0/?" in unknown.line(unknown.start + 1) and "ETA" not in unknown.line(unknown.start + 1)


def test_a_failed_command_leaves_no_new_empty_library_behind(tmp_path):
    fresh = tmp_path / "fresh-lib"
    bad = run("train", task_dir("sst2"), "--library", fresh, "--name", "x", "--model", tmp_path / "no-model", ok=False)
    assert bad.exit_code == 2 and "no model folder at" in bad.output and not fresh.exists()
    (tmp_path / "not-peft").mkdir()
    bad = run("library", "import", tmp_path / "not-peft", "--library", fresh, "--name", "y", ok=False)
    assert bad.exit_code == 2 and not fresh.exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    run("train", task_dir("sst2"), "--library", kept, "--name", "x", "--model", tmp_path / "no-model", ok=False)
    assert kept.is_dir()  # a folder that was there before is never removed


def test_commands_do_not_print_hugging_face_loading_bars():
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"}
    args = [sys.executable, "-m", "adaptforge.cli", "eval", str(task_dir("sst2")), "--limit", "4", "--json"]
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "Loading weights" not in proc.stderr and json.loads(proc.stdout)["results"][0]["n"] == 4
