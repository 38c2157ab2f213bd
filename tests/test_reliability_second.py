"""Hostile input, second pass (issue 28): each test reproduces one cause the probe found, through the real CLI or a
real server on 127.0.0.1, on the embedded model, real SQLite and real files. A bad input gets one clear line
naming the field, file or line, and the library is compared before and after every refused command.
"""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

import httpx
import pytest
from helpers import refused, run_cli, snapshot, task_dir

from adaptforge.library import BaseRef, Library


def strict_json(text: str) -> object:
    """Parse as JSON proper: ``NaN`` and ``Infinity`` are not JSON."""

    def no_constant(name: str) -> object:
        raise AssertionError(f"{name} printed as a number")

    return json.loads(text, parse_constant=no_constant)


# ------------------------------------------------------------------- 1. finite inputs, non-finite results


def test_an_adapter_whose_product_overflows_is_refused_on_import(library: Path, tmp_path: Path) -> None:
    folder = tmp_path / "huge"
    run_cli("library", "export", "sst2-a", "--library", library, "--out", folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    config["lora_alpha"] = 1e308  # a finite scale (1e308 / r) whose s * B @ A overflows
    (folder / "adapter_config.json").write_text(json.dumps(config))
    before = snapshot(library)
    refused("library", "import", folder, "--library", library, "--name", "huge", contains="scale * B @ A")
    assert snapshot(library) == before


def test_json_output_never_holds_a_non_finite_number(library: Path) -> None:
    lib = Library(library)
    record = lib.get("sst2-a")
    lib.record_metrics("sst2-a", record.base_fingerprint, "sst2", "test", {"loss": math.inf, "accuracy": 0.5}, 8)
    with sqlite3.connect(library / "catalog.sqlite") as conn:  # stored as no number, not as a number
        assert conn.execute("SELECT value FROM metrics WHERE metric = 'loss'").fetchall() == [(None,)]
    result = run_cli("library", "show", "sst2-a", "--library", library, "--json")
    shown = strict_json(result.stdout)
    assert [m["value"] for m in shown["metrics"] if m["metric"] == "loss"] == [None]
    assert "not a finite number, printed as null: /metrics/" in result.stderr


def test_a_diverged_test_time_adaptation_is_an_error(library: Path) -> None:
    before = snapshot(library)
    args = ("tta", task_dir("sst2"), "--library", library, "--adapter", "sst2-a", "--method", "tent")
    refused(*args, "--lr", "1e30", "--limit", 8, contains=("adaptation diverged", "--lr (now 1e+30)"))
    assert snapshot(library) == before


# --------------------------------------------------------------------------------------- a real server


@pytest.fixture()
def library_server(library: Path, minilm):
    from adaptforge.pipelines.serve import build_service, start_in_thread
    from adaptforge.serve import ServeConfig

    with start_in_thread(build_service(Library(library), ServeConfig(port=0, max_wait_ms=5.0), backbone=minilm)) as s:
        yield s


MERGE = {"texts": ["a fine film"], "labels": ["good", "bad"], "merge": {"adapters": ["sst2-a", "agnews-a"]}}
ARROW = {"texts": ["a fine film"], "labels": ["good", "bad"], "route": {"method": "arrow"}}
NON_FINITE = [  # finite numbers in, NaN or infinite scores out
    ({**MERGE, "merge": {**MERGE["merge"], "weights": [1e30, 1e30]}}, "merge.weights"),
    ({**MERGE, "merge": {**MERGE["merge"], "weights": [1e308, 1e308]}}, "merge.weights"),
    ({**MERGE, "merge": {**MERGE["merge"], "params": {"scaling": 1e308}}}, "merge.params"),
    ({**ARROW, "route": {"method": "arrow", "params": {"temperature": 1e-300}}}, "route.params"),
]
SURROGATES = [  # "\ud800" is a lone UTF-16 surrogate: valid JSON, no text
    ({"texts": ["\ud800"], "adapter": "sst2-a"}, "texts[0]"),
    ({"texts": ["x"], "adapter": "sst2-a", "labels": ["good", "\ud800"]}, "labels[1]"),
    ({"texts": ["x"], "adapter": "sst2-a", "labels": ["a", "b"], "description": "\ud800"}, "description"),
    ({"texts": ["x"], "adapter": "\ud800"}, "adapter"),
    ({**MERGE, "merge": {**MERGE["merge"], "params": {"\ud800": 1}}}, "merge.params"),
]


def post(c: httpx.Client, path: str, body: dict) -> httpx.Response:
    """POST ``body`` as ASCII JSON, which can carry a lone surrogate as an escape (UTF-8 cannot)."""
    return c.post(path, content=json.dumps(body), headers={"content-type": "application/json"})


def test_non_finite_results_and_surrogates_are_422_naming_the_field(library_server, caplog) -> None:
    with httpx.Client(base_url=library_server.url, timeout=120) as c:
        for body, field in NON_FINITE + SURROGATES:
            response = post(c, "/v1/classify", body)
            assert response.status_code == 422, (body, response.text)
            error = response.json()["error"]
            assert error["field"] == field and error["message"].startswith(field), error
        embedding = post(c, "/v1/embeddings", {"model": "sst2-a", "input": ["\ud800"]})
        assert embedding.status_code == 422 and embedding.json()["error"]["field"].startswith("input")
        assert c.post("/v1/classify", json=MERGE).status_code == 200  # the server goes on
    assert "Traceback" not in caplog.text


# --------------------------------------------------------------------------------- 2. unbounded sweep specs

BOMB = """\
name: bomb
train:
  tasks: &a [{task}, {task}, {task}, {task}, {task}, {task}, {task}, {task}, {task}]
  rank: 4
  options: &b {{targets: [*a, *a, *a, *a, *a, *a, *a, *a, *a]}}
  lr: [*b, *b, *b, *b, *b, *b, *b, *b, *b]
"""


def test_yaml_aliases_are_refused_in_specs_and_recipes(library: Path, tmp_path: Path) -> None:
    spec = tmp_path / "bomb.yaml"
    spec.write_text(BOMB.format(task=task_dir("sst2")))
    before = snapshot(library)
    refused("sweep", spec, "--library", library, contains=(f"{spec}: line 5:", "alias *a refused"))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("adapters: &x [sst2-a, agnews-a]\nout: m\nparams: {weights: *x}\n")
    refused("merge", "--recipe", recipe, "--library", library, contains=(f"{recipe}: line 3:", "alias *x refused"))
    assert snapshot(library) == before


def test_a_grid_above_the_cell_limit_is_refused_before_any_cell(library: Path, tmp_path: Path) -> None:
    from adaptforge.pipelines.sweep_spec import SweepSpec

    spec = tmp_path / "grid.yaml"
    grid = {"rank": list(range(1, 101)), "lr": [1e-3 + i * 1e-6 for i in range(100)], "seeds": list(range(100))}
    spec.write_text(json.dumps({"train": {"tasks": [str(task_dir("sst2"))], **grid}}))  # JSON is YAML
    before = snapshot(library)
    refused("sweep", spec, "--library", library, contains=("1000000 cells", "limit of 10000", "--max-cells"))
    refused("sweep", spec, "--library", library, "--max-cells", 99, contains="limit of 99")
    assert snapshot(library) == before
    grid["seeds"] = [0, 1]  # 20000 cells: above the default, within an explicit limit
    spec.write_text(json.dumps({"train": {"tasks": [str(task_dir("sst2"))], **grid}}))
    refused("sweep", spec, "--library", library, contains="20000 cells")
    assert len(SweepSpec.from_yaml(spec, max_cells=20_000).train.axes["seed"]) == 2


# ------------------------------------------------------------------------------------ 4. deeply nested JSON

DEEP = "[" * 50_000 + "]" * 50_000  # valid JSON, deeper than Python's parser can follow


def test_deeply_nested_json_is_one_error_naming_file_and_line(library: Path, tmp_path: Path) -> None:
    before = snapshot(library)
    folder = tmp_path / "peft"
    run_cli("library", "export", "sst2-a", "--library", library, "--out", folder)
    config = folder / "adapter_config.json"
    config.write_text(config.read_text().replace("{", '{\n"deep": ' + DEEP + ",\n", 1))
    refused(
        "library", "import", folder, "--library", library, "--name", "deep", contains=f"{config}: line 2: JSON nested"
    )
    task = tmp_path / "task"
    task.mkdir()
    (task / "task.json").write_text(json.dumps({"name": "t", "description": "d", "labels": ["a", "b"]}))
    lines = [json.dumps({"text": f"x{i}", "label": "ab"[i % 2]}) for i in range(4)]
    (task / "test.jsonl").write_text("\n".join([lines[0], '{"text": ' + DEEP + ', "label": "a"}', *lines[1:]]))
    refused("eval", task, "--library", library, "--zero-shot", contains=f"{task / 'test.jsonl'}: line 2: JSON nested")
    texts = tmp_path / "inputs.jsonl"
    texts.write_text(json.dumps({"text": "fine"}) + "\n" + DEEP + "\n")
    refused("predict", texts, "--library", library, "--adapter", "sst2-a", contains=f"{texts}: line 2: JSON nested")
    prompts = tmp_path / "prompts.jsonl"  # prompts to answer (generation) are read by the same reader
    deep = "[" * 20_000 + "]" * 20_000  # as deep a value, within predict's 100,000 characters a line
    prompts.write_text(json.dumps({"prompt": "fine"}) + "\n" + '{"prompt": ' + deep + "}\n")
    refused("predict", prompts, "--library", library, "--adapter", "sst2-a", contains=f"{prompts}: line 2: JSON nested")
    gen = tmp_path / "gen"
    gen.mkdir()
    (gen / "task.json").write_text(json.dumps({"name": "g", "description": "d", "type": "generation"}))
    (gen / "test.jsonl").write_text(json.dumps({"prompt": "p", "response": "r"}) + "\n" + DEEP + "\n")
    refused("eval", gen, "--library", library, "--zero-shot", contains=f"{gen / 'test.jsonl'}: line 2: JSON nested")
    assert snapshot(library) == before
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "deep.json").write_text(DEEP)
    (bench / "big.json").write_text(json.dumps({"rows": [{"method": f"m{i}", "accuracy": 0.5} for i in range(600)]}))
    page = tmp_path / "report.html"
    result = run_cli("report", "--library", library, "--bench", bench, "--out", page, "--json")
    html = page.read_text()
    assert "deep.json: line 1: JSON nested more than 100 levels deep" in html
    assert "big.json: showing the first 500 of 600 rows" in html and "m499" in html and "m500" not in html
    assert "Traceback" not in result.output


# ------------------------------------------------------------------------------- 7. predict's output path


def test_predict_checks_its_output_and_input_before_the_work(library: Path, tmp_path: Path) -> None:
    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text(json.dumps({"text": "a fine film"}) + "\n")
    args = ("predict", inputs, "--library", library, "--adapter", "sst2-a", "--labels", "good,bad")
    refused(*args, "--out", tmp_path, contains=f"--out {tmp_path} is a folder")
    refused(*args, "--out", inputs, contains=f"--out {inputs} is the input")
    assert inputs.read_text() == json.dumps({"text": "a fine film"}) + "\n"
    inputs.write_text(json.dumps({"text": "fine"}) + "\n" + json.dumps({"text": "x" * 200_000}) + "\n")
    refused(*args, contains=f"{inputs}:2: 200012 characters, more than the limit of 100000")


# -------------------------------------------------------------------- 3. a config that contradicts its weights


@pytest.mark.parametrize("layers", [12, 3])  # MiniLM has 6: 6 layers would be random, or 3 dropped
def test_a_model_folder_whose_config_contradicts_its_weights_is_refused(
    minilm, library: Path, tmp_path: Path, layers: int
) -> None:
    folder = tmp_path / f"minilm-{layers}"
    folder.mkdir()
    for item in Path(minilm.path).iterdir():
        (folder / item.name).symlink_to(item)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").unlink()
    (folder / "config.json").write_text(json.dumps({**config, "num_hidden_layers": layers}))
    missing = "missing from its weights" if layers > 6 else "in its weights but not in its config"
    task = tmp_path / "task"
    task.mkdir()
    (task / "task.json").write_text(json.dumps({"name": "t", "description": "d", "labels": ["a", "b"]}))
    for split in ("train", "dev", "test"):
        (task / f"{split}.jsonl").write_text(
            "\n".join(json.dumps({"text": f"x{i}", "label": "ab"[i % 2]}) for i in range(4))
        )
    before = snapshot(library)
    contains = (f"{folder}: config.json does not match the weights", missing, "encoder.layer.")
    refused("eval", task, "--library", library, "--zero-shot", "--model", folder, contains=contains)
    out = tmp_path / "pruned"
    prune = ("prune", "--model", folder, "--method", "magnitude", "--sparsity", 0.5, "--domain", task, "--out", out)
    refused(*prune, contains=contains)
    assert not out.exists() and snapshot(library) == before


# ------------------------------------------------------------------------------ 6. gc beside a live train


def test_gc_and_verify_leave_a_live_run_alone(library: Path) -> None:
    lib = Library(library)
    live, dead = lib.run_dir("live"), lib.run_dir("dead")
    staged = lib.runs_dir / ".tmp-live-0123abcd"  # the checkpoint a live train is writing
    dead_staged = lib.runs_dir / ".tmp-dead-0123abcd"
    for folder in (live, dead, staged, dead_staged):
        folder.mkdir(parents=True)
        (folder / "state.safetensors").write_bytes(b"x")
    with lib.run_lock("live"):  # the very lock `adaptforge train --name live` holds while it runs
        verify = run_cli("library", "verify", "--library", library, ok=False).output
        assert f"run in progress (a live train holds its lock; leave it): {live}" in " ".join(verify.split())
        assert f"delete it): {live}" not in verify and str(staged) not in verify
        run_cli("library", "gc", "--library", library, "--min-age", 0)
        assert staged.is_dir() and live.is_dir()
    assert not dead_staged.exists() and dead.is_dir()  # a dead run's staging goes, its checkpoint stays


# ------------------------------------------------------------------- weak spot: a full disk is not a damaged catalog


def test_a_full_disk_names_free_space_not_rebuild(tmp_path: Path) -> None:
    """The kernel refuses every write (a file-size limit of one byte, the way a full disk refuses them): the
    catalog cannot open its journal, and the remedy named is free space, not `library rebuild` (which would drop
    the stored metrics of a catalog that is not damaged)."""
    import os
    import resource
    import signal
    import subprocess
    import sys

    from helpers import random_delta

    lib = Library(tmp_path / "lib")
    lib.add(random_delta(["encoder.layer.0.attention.self.query"]), name="x", base=BaseRef("m", "fp"))
    before = snapshot(lib.root)

    def no_writes() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1, 1))

    for args in (["library", "list"], ["library", "rm", "x"]):
        done = subprocess.run(
            [sys.executable, "-m", "adaptforge.cli", *args, "--library", str(lib.root)],
            capture_output=True,
            text=True,
            preexec_fn=no_writes,
            timeout=300,
            env={**os.environ, "COLUMNS": "400"},
        )
        assert done.returncode == 2, done.stdout + done.stderr
        assert "looks full" in done.stderr and "free space" in done.stderr and "Traceback" not in done.stderr
        assert "library rebuild --library" not in done.stderr
    assert snapshot(lib.root) == before
