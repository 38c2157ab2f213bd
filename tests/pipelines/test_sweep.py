"""adaptforge sweep on the local backend: the spec's errors (key, line, what was expected), every cell into the
library, a failing cell reported while the others finish, and a re-run skipping the cells that landed."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from helpers import MINILM_ATTENTION, library_copy, random_delta, task_dir

from adaptforge.backends import BACKENDS
from adaptforge.library import BaseRef
from adaptforge.pipelines.sweep import SweepSpec, cell_key, run_sweep
from adaptforge.pipelines.sweep_spec import SweepSpecError


def write_spec(folder: Path, text: str) -> Path:
    path = folder / "grid.yaml"
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def spec_error(folder: Path, text: str) -> str:
    with pytest.raises(SweepSpecError) as err:
        SweepSpec.from_yaml(write_spec(folder, text))
    return str(err.value)


def test_spec_errors_name_the_key_its_line_and_what_was_expected(tmp_path):
    spec = tmp_path / "grid.yaml"
    sst2 = task_dir("sst2")
    message = spec_error(tmp_path, f"name: x\ntrain:\n  tasks: [{sst2}]\n  seed: [0, 1]\n")
    assert message == (
        f"{spec} line 4: key 'train.seed': unknown key in 'train'; expected one of tasks, rank, lr, seeds, epochs, "
        "options, eval. Did you mean 'seeds'?"
    )
    message = spec_error(tmp_path, f"train:\n  tasks: [{sst2}]\n  seeds: []\n")
    assert message == f"{spec} line 3: key 'train.seeds': empty grid; expected a list of at least one value"
    message = spec_error(tmp_path, "trian:\n  tasks: [a]\n")
    assert message.startswith(f"{spec} line 1: key 'trian': unknown key at the top level; expected one of name,")
    assert message.endswith("Did you mean 'train'?")
    assert spec_error(tmp_path, "name: x\n") == (
        f"{spec} line 1: nothing to sweep; expected at least one of the keys train, merge, compose"
    )
    message = spec_error(tmp_path, f"train:\n  tasks: [{sst2}]\n  options: {{rank: 4}}\n")
    assert message == f"{spec} line 3: key 'train.options.rank': is a grid axis; set it as train.rank (a list)"
    message = spec_error(tmp_path, f"train:\n  tasks: [{sst2}]\n  rank: [4, 0]\n")
    assert message == f"{spec} line 3: key 'train.rank.1': train config: 'rank' must be >= 1, got 0"
    message = spec_error(tmp_path, f"train:\n  tasks: [{sst2}]\n  lr: [1e-3]\n")
    assert message.endswith("got '1e-3' (YAML reads 1e-3 as text: write it with a dot, e.g. 0.001)")
    message = spec_error(tmp_path, f"train:\n  tasks: [{sst2}]\n  options:\n    batch_size: 0\n")
    assert message == f"{spec} line 3: key 'train.options': train config: 'batch_size' must be >= 1, got 0"
    message = spec_error(tmp_path, "merge:\n  merges: [[a, b]]\n  methods: [tie]\n")
    assert message.startswith(f"{spec} line 3: key 'merge.methods.0': unknown merge method 'tie'")
    message = spec_error(tmp_path, "merge:\n  merges: [[a, b]]\n  methods: [ties]\n  params: {ties: {densty: [0.5]}}\n")
    assert message.startswith(
        f"{spec} line 4: key 'merge.params.ties': merge method 'ties': unknown parameter 'densty'"
    )
    assert spec_error(tmp_path, "compose:\n  tasks: [nowhere]\n") == (
        f"{spec} line 2: key 'compose.tasks': task 'nowhere' not found (looked for {tmp_path / 'nowhere'})"
    )


def test_cell_key_is_stable_and_order_free():
    assert cell_key({"a": 1, "b": [1, 2]}) == cell_key({"b": [1, 2], "a": 1})
    assert cell_key({"a": 1}) != cell_key({"a": 2})
    assert len(cell_key({"a": 1})) == 10


def test_local_sweep_lands_every_cell_reports_the_failing_one_and_a_rerun_skips_finished_cells(
    tmp_path, trained_library, minilm
):
    lib = library_copy(trained_library, tmp_path / "lib")
    # An adapter made on another base: merging it with a MiniLM adapter fails when the cell runs (not at planning).
    lib.add(random_delta(MINILM_ATTENTION, rank=2), name="alien", base=BaseRef("other", "f" * 16))
    dirs = trained_library[1]
    spec = SweepSpec.from_yaml(
        write_spec(
            tmp_path,
            f"""
            name: grid
            train:
              tasks: [{dirs["sst2"]}]
              rank: [2]
              seeds: [0, 1]
              epochs: [1]
              options: {{max_train: 16, batch_size: 16, targets: [query, value]}}
              eval: {{split: dev, limit: 16}}
            merge:
              merges: [[sst2-a, agnews-a], [sst2-a, alien]]
              methods: [task_arithmetic]
            compose:
              tasks: [{dirs["subjectivity"]}]
              k: [0]
              methods: [retrieval]
              options: {{candidates: 2}}
              eval: {{split: dev, limit: 16}}
            """,
        )
    )
    backend = BACKENDS.get("local")({"threads": 1})
    first = run_sweep(spec, lib, backend)
    assert [(r.stage, r.status) for r in first.rows] == [
        ("train", "ran"),
        ("train", "ran"),
        ("merge", "ran"),
        ("merge", "failed"),
        ("compose", "ran"),
    ]
    (failed,) = first.failed
    assert failed.label == "sst2-a+alien task_arithmetic"
    assert failed.error.startswith("AdaptforgeError: adapters 'sst2-a' and 'alien' were trained on different base")
    for row in first.rows:
        assert row.adapter.endswith("-" + row.key)
        assert lib.exists(row.adapter) == (row.status == "ran")
    trained = [r for r in first.rows if r.stage == "train"]
    assert all(r.accuracy is not None and 0 <= r.accuracy <= 1 for r in trained)
    assert trained[0].key != trained[1].key and trained[0].label == "sst2 r2 lrdefault e1 s0"
    record = lib.get(trained[0].adapter)
    assert record.recipe["config"]["seed"] == 0 and record.recipe["config"]["max_train"] == 16

    second = run_sweep(spec, lib, backend)  # the re-run of a sweep whose driver stopped: finished cells skipped
    assert [r.status for r in second.rows] == ["skipped", "skipped", "skipped", "failed", "skipped"]
    assert [r.accuracy for r in second.rows if r.status == "skipped"] == [
        r.accuracy for r in first.rows if r.status == "ran"
    ]
    assert second.to_json()["skipped"] == 4 and second.to_json()["failed"] == 1
