"""The command-line contract that later issues and users script against, run for real."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli as run
from conftest import task_dir


@pytest.fixture(scope="module")
def trained_library(tmp_path_factory):
    lib = tmp_path_factory.mktemp("cli") / "lib"
    run(
        "train",
        task_dir("sst2"),
        "--library",
        lib,
        "--name",
        "sst2-a",
        "--max-train",
        "32",
        "--epochs",
        "1",
        "--batch-size",
        "16",
    )
    return lib


def test_eval_json_contract(trained_library):
    out = run(
        "eval",
        task_dir("sst2"),
        task_dir("subjectivity"),
        "--library",
        trained_library,
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
        assert set(r) == {"task", "adapter", "accuracy", "macro_f1", "n"} and r["n"] == 20
        assert 0.0 <= r["accuracy"] <= 1.0
    shown = json.loads(run("library", "show", "sst2-a", "--library", trained_library, "--json").stdout)
    assert {(m["task"], m["metric"]) for m in shown["metrics"]} >= {("sst2", "accuracy"), ("subjectivity", "macro_f1")}
    assert shown["recipe"]["config"]["max_train"] == 32 and shown["method"] == "train"


def test_library_list_export_import_rm(trained_library, tmp_path):
    listed = json.loads(run("library", "list", "--library", trained_library, "--json").stdout)["adapters"]
    assert [a["name"] for a in listed] == ["sst2-a"]
    run("library", "export", "sst2-a", "--library", trained_library, "--out", tmp_path / "exported")
    other = tmp_path / "other"
    run("library", "import", tmp_path / "exported", "--library", other, "--name", "again", "--task", task_dir("sst2"))
    again = json.loads(run("library", "show", "again", "--library", other, "--json").stdout)
    assert again["method"] == "import" and again["task"] == "sst2"
    a = json.loads(
        run("eval", task_dir("sst2"), "--library", trained_library, "-a", "sst2-a", "--limit", "16", "--json").stdout
    )
    b = json.loads(run("eval", task_dir("sst2"), "--library", other, "-a", "again", "--limit", "16", "--json").stdout)
    assert a["results"][0]["accuracy"] == b["results"][0]["accuracy"]
    run("library", "rm", "again", "--library", other)
    assert json.loads(run("library", "list", "--library", other, "--json").stdout)["adapters"] == []


def test_corrupted_adapter_is_refused(trained_library, tmp_path):
    import shutil

    lib = tmp_path / "copy"
    shutil.copytree(trained_library, lib)
    weights = next((lib / "adapters").glob("*/adapter_model.safetensors"))
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


def test_library_show_is_readable_and_json_has_everything(trained_library):
    shown = run("library", "show", "sst2-a", "--library", trained_library).stdout
    for expected in (
        "sst2-a",
        "kind",
        "train (train)",
        "base",
        "rank",
        "8 on",
        "sst2/dev accuracy",
        "(n=",
        "integrity",
    ):
        assert expected in shown, expected
    assert "adapter_model.safetensors" in shown and "[" not in shown.split("integrity")[-1]
    brief = json.loads(run("library", "show", "sst2-a", "--library", trained_library, "--json").stdout)
    assert brief["embedding"] == "<384 floats>" and brief["kind"] == "train" and brief["integrity"]["ok"]
    assert brief["files"]["adapter_model.safetensors"] > 0
    full = json.loads(
        run("library", "show", "sst2-a", "--library", trained_library, "--json", "--with-embeddings").stdout
    )
    assert len(full["embedding"]) == 384 and all(isinstance(v, float) for v in full["embedding"])


def test_help_is_fast_to_load_and_shows_flags_as_flags():
    """`adaptforge --help` must not import torch (seconds of start-up), and boolean options read as flags."""
    import subprocess
    import sys

    probe = "import sys, adaptforge.cli; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", probe], check=False).returncode == 0
    for verb in ("merge", "compose", "eval", "train", "prune"):
        lines = [line for line in run(verb, "--help").stdout.splitlines() if "Show this message" not in line]
        assert not any("<bool>" in line for line in lines) and any("--json" in line for line in lines), verb
