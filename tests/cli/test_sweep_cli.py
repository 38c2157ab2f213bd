"""``adaptforge sweep`` through the CLI: help with examples and no Ray (or torch) at ``--help`` time, the results
table and --json, exit 1 with the failed cell named, exit 2 with the spec's key and line, and (slow) a sweep
whose driver is killed resumed by a re-run that skips the cells that landed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import MINILM_ATTENTION, library_copy, random_delta, run_cli

from adaptforge.library import BaseRef, Library


def sweep_help(monkeypatch) -> str:
    monkeypatch.setenv("COLUMNS", "200")  # no wrapping inside the example lines
    return run_cli("sweep", "--help").stdout


def test_help_imports_neither_ray_nor_torch_and_shows_the_examples(monkeypatch):
    probe = "import sys, adaptforge.cli; sys.exit(1 if {'ray', 'torch'} & set(sys.modules) else 0)"
    assert subprocess.run([sys.executable, "-c", probe], check=False).returncode == 0
    text = sweep_help(monkeypatch)
    for flag in ("--library", "--backend", "--ray-address", "--workers", "--threads-per-worker", "--json"):
        assert flag in text
    assert "src/adaptforge/data/sweeps/example.yaml --library lib --backend ray --workers 2" in text
    assert "--ray-address 10.0.0.5:6379 --workers 8" in text
    assert "--ray-address" in run_cli("eval", "--help").stdout


@pytest.mark.slow
def test_the_first_help_example_runs(tmp_path, monkeypatch):
    text = sweep_help(monkeypatch)
    shipped = Path(__file__).resolve().parents[2] / "src" / "adaptforge" / "data" / "sweeps" / "example.yaml"
    assert "tasks: [../tasks/sst2, ../tasks/agnews]" in text and "tasks: [../tasks/sst2, ../tasks/agnews]" in (
        shipped.read_text()
    )
    example = next(line.split() for line in text.splitlines() if line.strip().startswith("adaptforge sweep"))
    assert example == ["adaptforge", "sweep", "src/adaptforge/data/sweeps/example.yaml", "--library", "lib"]
    res = run_cli("sweep", shipped, "--library", tmp_path / "lib", "--json")
    assert (json.loads(res.stdout)["ran"], len(Library(tmp_path / "lib"))) == (4, 4)


def test_sweep_cli_table_json_and_a_failed_cell_exit_non_zero(tmp_path, trained_library):
    lib = library_copy(trained_library, tmp_path / "lib")
    lib.add(random_delta(MINILM_ATTENTION, rank=2), name="alien", base=BaseRef("other", "f" * 16))
    spec = tmp_path / "grid.yaml"
    spec.write_text("merge:\n  merges: [[sst2-a, agnews-a], [sst2-a, alien]]\n  methods: [task_arithmetic]\n")
    res = run_cli("sweep", spec, "--library", lib.root, ok=False)
    assert res.exit_code == 1
    assert "sweep grid.yaml: 1 ran, 0 skipped, 1 failed" in res.stdout
    assert "failed: merge cell sst2-a+alien task_arithmetic (" in res.output
    assert "were trained on different base models" in res.output
    again = run_cli("sweep", spec, "--library", lib.root, "--json", ok=False)
    assert again.exit_code == 1
    summary = json.loads(again.stdout)
    assert (summary["ran"], summary["skipped"], summary["failed"]) == (0, 1, 1)
    assert summary["backend"] == "local (this process)"
    assert [c["status"] for c in summary["cells"]] == ["skipped", "failed"]


def test_a_bad_spec_exits_2_naming_key_and_line_and_leaves_no_library(tmp_path):
    spec = tmp_path / "grid.yaml"
    spec.write_text("name: x\ncompose:\n  tasks: []\n")
    res = run_cli("sweep", spec, "--library", tmp_path / "lib", ok=False)
    assert res.exit_code == 2
    assert f"error: {spec} line 3: key 'compose.tasks': empty grid; expected a list of at least one value" in res.output
    assert not (tmp_path / "lib").exists()


@pytest.mark.slow
def test_a_killed_sweep_resumes_skipping_the_cells_that_landed(tmp_path, trained_library):
    """SIGKILL the driver once the first cell is in the library; the re-run skips it and runs the rest."""
    sst2 = trained_library[1]["sst2"]
    spec = tmp_path / "grid.yaml"
    spec.write_text(
        f"name: k\ntrain:\n  tasks: [{sst2}]\n  rank: [2]\n  seeds: [0, 1, 2, 3]\n  epochs: [1]\n"
        "  options: {max_train: 32, batch_size: 8, targets: [query, value]}\n  eval: {split: dev, limit: 16}\n"
    )
    root = tmp_path / "lib"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    cmd = [sys.executable, "-m", "adaptforge.cli", "sweep", str(spec), "--library", str(root), "--json"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            if (root / "catalog.sqlite").exists() and len(Library(root, create=False)) >= 1:
                break
            time.sleep(0.2)
        assert proc.poll() is None, "the sweep ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    landed = len(Library(root, create=False))
    assert 1 <= landed < 4
    summary = json.loads(run_cli("sweep", spec, "--library", root, "--json").stdout)
    assert (summary["skipped"], summary["ran"], summary["failed"]) == (landed, 4 - landed, 0)
    assert len(Library(root, create=False)) == 4
