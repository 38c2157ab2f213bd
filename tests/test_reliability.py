"""Hostile input through the real CLI: every case ends in a one-line error (exit 2) and loses nothing.

Each test reproduces one defect of the reliability probe (issue 11) on the real embedded model, real SQLite
and real files; the library is compared before and after every refused command.
"""

from __future__ import annotations

import json
import math
import os
import resource
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from helpers import MINILM_ATTENTION, minilm_delta, refused, run_cli, small_task, snapshot, task_dir
from safetensors.torch import load_file, save_file

from adaptforge.adapters import CONFIG_FILE, WEIGHTS_FILE, write_adapter
from adaptforge.core import LoraDelta, LoraModule
from adaptforge.library import EXPORT_RECORD_FILE, Library, LibraryError, TaskEntry

MODULES = MINILM_ATTENTION


# ------------------------------------------------------------------------------------------- data loss


@pytest.mark.parametrize("name", ["..", ".", ".hidden", "a/../..", "x\ty", "x" * 200])
def test_a_name_never_deletes_the_library(library: Path, name: str) -> None:
    before = snapshot(library)
    refused("train", task_dir("sst2"), "--library", library, "--name", name, "--max-train", 16, "--epochs", 1)
    assert snapshot(library) == before
    assert (library / "notes.txt").read_text() == "the user's own file"


def test_removal_never_leaves_its_owner(tmp_path: Path) -> None:
    from adaptforge.durable import UnsafeRemovalError, remove_inside

    owner = tmp_path / "owner"
    (owner / "inner").mkdir(parents=True)
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "file").write_text("keep")
    for path in (owner, owner / ".", owner / "..", owner / "inner" / ".." / "..", tmp_path / "precious"):
        with pytest.raises(UnsafeRemovalError):
            remove_inside(path, owner)
    (owner / "link").symlink_to(outside, target_is_directory=True)
    assert remove_inside(owner / "link", owner)  # the link goes, not what it points at
    assert (outside / "file").read_text() == "keep"
    assert remove_inside(owner / "inner", owner) and not (owner / "inner").exists()
    assert owner.is_dir()


@pytest.mark.parametrize("damage", ["deleted", "truncated"])
def test_a_lost_catalog_is_refused_then_rebuilt(library: Path, damage: str) -> None:
    rows_before, files_before = snapshot(library)
    catalog = library / "catalog.sqlite"
    if damage == "deleted":
        catalog.unlink()
    else:
        catalog.write_bytes(b"")
    for args in (("library", "list"), ("library", "verify")):
        refused(*args, "--library", library, contains="library rebuild")
    export = library.parent / "peft"
    write_adapter(minilm_delta(3), export, "all-MiniLM-L6-v2")
    refused("library", "import", export, "--library", library, "--name", "new", contains="orphan")
    assert snapshot(library)[1] == files_before  # nothing written, no adapter lost

    out = run_cli("library", "rebuild", "--library", library).output
    assert "3 adapter(s)" in out
    lib = Library(library, create=False)
    assert sorted(r.name for r in lib.list()) == ["agnews-a", "child", "sst2-a"]
    assert [p.name for p in lib.lineage("child")] == ["sst2-a", "agnews-a"]
    adapters, lineage, _ = snapshot(library)[0]
    assert (adapters, lineage) == rows_before[:2]  # every row and lineage row exactly as before
    assert lib.verify() == []
    refused("library", "rebuild", "--library", library, contains="readable catalog")


def test_a_damaged_catalog_is_kept_aside_by_rebuild(library: Path) -> None:
    catalog = library / "catalog.sqlite"
    catalog.write_bytes(b"not a database, garbage " * 100)
    refused("library", "list", "--library", library, contains="library rebuild")
    run_cli("library", "rebuild", "--library", library)
    assert len(Library(library, create=False)) == 3
    kept = list(library.glob("catalog.sqlite.damaged-*"))
    assert len(kept) == 1 and kept[0].read_bytes().startswith(b"not a database")


# ------------------------------------------------------------------------------------- wrong numbers


def peft_folder(tmp_path: Path, delta: LoraDelta, name: str = "peft", **config_changes: object) -> Path:
    folder = write_adapter(delta, tmp_path / name, "all-MiniLM-L6-v2")
    if config_changes:
        config = json.loads((folder / CONFIG_FILE).read_text())
        config.update(config_changes)
        (folder / CONFIG_FILE).write_text(json.dumps(config))
    return folder


def test_non_finite_adapters_are_refused_everywhere(minilm, library: Path, tmp_path: Path) -> None:
    before = snapshot(library)
    bad = minilm_delta(0)
    bad.modules[MODULES[3]].B[0, 0] = float("nan")
    refused("library", "import", peft_folder(tmp_path, bad, "nan"), "--library", library, "--name", "x", contains="NaN")
    inf = minilm_delta(0)
    inf.modules[MODULES[0]].A[1, 2] = float("inf")
    refused("library", "import", peft_folder(tmp_path, inf, "inf"), "--library", library, "--name", "x", contains="NaN")
    alpha = peft_folder(tmp_path, minilm_delta(0), "alpha", lora_alpha=float("nan"))
    refused("library", "import", alpha, "--library", library, "--name", "x", contains="lora_alpha")
    assert snapshot(library) == before
    # Merges, compositions and generated adapters all land through Library.add, which refuses the same.
    with pytest.raises(LibraryError, match="NaN"):
        Library(library).add(bad, name="merged", base=minilm)
    scale = LoraDelta({MODULES[0]: LoraModule(A=torch.ones(2, 384), B=torch.ones(384, 2), scale=math.inf)})
    with pytest.raises(LibraryError, match="scale"):
        Library(library).add(scale, name="merged", base=minilm)
    assert snapshot(library) == before


def test_a_diverged_training_run_stores_nothing(library: Path) -> None:
    before = snapshot(library)
    refused(
        "train",
        task_dir("sst2"),
        "--library",
        library,
        "--name",
        "hot",
        "--lr",
        "1e6",
        "--max-train",
        320,
        "--epochs",
        1,
        "--batch-size",
        16,
        contains=("diverged", "Lower --lr"),
    )
    assert snapshot(library)[0] == before[0]
    assert not Library(library).exists("hot")


def test_config_must_describe_the_tensors(library: Path, tmp_path: Path) -> None:
    before = snapshot(library)
    rank = peft_folder(tmp_path, minilm_delta(0, rank=8), "rank", r=4, lora_alpha=8.0)  # would act at 2x
    refused("library", "import", rank, "--library", library, "--name", "x", contains=("rank 4", "shape (8, 384)"))
    targets = peft_folder(tmp_path, minilm_delta(0), "targets", target_modules=["key"])
    refused("library", "import", targets, "--library", library, "--name", "x", contains="target_modules")
    ints = peft_folder(tmp_path, minilm_delta(0), "ints")
    tensors = load_file(str(ints / WEIGHTS_FILE))
    save_file({k: (v * 100).to(torch.int32) for k, v in tensors.items()}, str(ints / WEIGHTS_FILE))
    refused("library", "import", ints, "--library", library, "--name", "x", contains="int32")
    assert snapshot(library) == before


MALFORMED_CONFIGS = [
    ["not", "an", "object"],
    "just a string",
    {"peft_type": "LORA", "r": "abc", "lora_alpha": 16},
    {"peft_type": "LORA", "r": 0, "lora_alpha": 16},
    {"peft_type": "LORA", "r": 8, "lora_alpha": None},
    {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "rank_pattern": {"(unclosed": 4}},
    {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "rank_pattern": ["query", 4]},
    {"peft_type": "LORA", "r": True, "lora_alpha": 16},
    {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "alpha_pattern": {"query": "x"}},
    {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": 3},
    {"peft_type": "PREFIX_TUNING"},
]


@pytest.mark.parametrize("config", MALFORMED_CONFIGS, ids=range(len(MALFORMED_CONFIGS)))
def test_malformed_config_fields_are_one_line_errors(library: Path, tmp_path: Path, config: object) -> None:
    from adaptforge.adapters import AdapterFormatError, read_adapter

    folder = peft_folder(tmp_path, minilm_delta(0))
    (folder / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(AdapterFormatError, match=CONFIG_FILE):
        read_adapter(folder)
    if config == MALFORMED_CONFIGS[2]:  # and one through the CLI, end to end
        before = snapshot(library)
        refused("library", "import", folder, "--library", library, "--name", "x", contains="'r'")
        assert snapshot(library) == before


# ---------------------------------------------------------------------------- validate before any work


def test_limit_zero_and_bogus_split_are_refused_before_anything_is_stored(library: Path) -> None:
    before = snapshot(library)
    sst2 = task_dir("sst2")
    for limit_args in (("--limit", 0),):
        refused("eval", sst2, "--library", library, "-a", "sst2-a", *limit_args, contains="--limit")
        refused("merge", "sst2-a", "agnews-a", "--library", library, "--out", "m", "--eval", sst2, *limit_args)
        refused("compose", sst2, "--library", library, "--out", "c", "--shots", 0, "--method", "retrieval", *limit_args)
    start = time.perf_counter()
    refused(
        "compose",
        sst2,
        "--library",
        library,
        "--out",
        "c",
        "--method",
        "lorahub",
        "--split",
        "bogus",
        contains="no split 'bogus'",
    )
    assert time.perf_counter() - start < 60  # refused up front, not after a composition (minutes)
    refused("merge", "sst2-a", "agnews-a", "--library", library, "--out", "m", "--eval", sst2, "--split", "bogus")
    refused("eval", sst2, "--library", library, "-a", "sst2-a", "--split", "bogus", contains="no split 'bogus'")
    assert snapshot(library) == before


def test_bad_targets_and_model_folders_name_the_problem(library: Path, tmp_path: Path, tiny_llama_dir: Path) -> None:
    refused(
        "train",
        task_dir("sst2"),
        "--library",
        library,
        "--name",
        "t",
        "--targets",
        "nonexistent",
        contains=("'nonexistent'", "query"),
    )
    only_config = tmp_path / "only-config"
    only_config.mkdir()
    (only_config / "config.json").write_text((tiny_llama_dir / "config.json").read_text())
    refused("eval", task_dir("sst2"), "--model", only_config, contains="no weights")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    for f in tiny_llama_dir.iterdir():
        if f.suffix != ".safetensors":
            (pickled / f.name).write_bytes(f.read_bytes())
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    refused("eval", task_dir("sst2"), "--model", pickled, contains=("pickle", "safetensors"))
    refused("eval", task_dir("sst2"), "--model", tmp_path / "nowhere", contains="no model folder at")


def test_a_full_disk_during_import_is_an_error_and_leaves_nothing(library: Path, tmp_path: Path) -> None:
    folder = peft_folder(tmp_path, minilm_delta(5))  # ~300 KB of tensors
    before = snapshot(library)

    def limit_file_size() -> None:  # a real EFBIG from the kernel once a file passes 64 KB
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "adaptforge.cli",
            "library",
            "import",
            str(folder),
            "--library",
            str(library),
            "--name",
            "x",
        ],
        capture_output=True,
        text=True,
        preexec_fn=limit_file_size,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "not stored" in proc.stderr, proc.stderr
    assert snapshot(library) == before


def test_resume_errors_name_what_changed_and_what_is_missing(minilm, library: Path, caplog) -> None:
    from adaptforge.pipelines.train import train_into_library
    from adaptforge.train.config import TrainConfig
    from adaptforge.train.trainer import train_tasks

    task = small_task("sst2", n_train=32, n_test=16)
    lib = Library(library)
    cfg = TrainConfig(epochs=1, batch_size=8, checkpoint_every=1)
    train_tasks([task], minilm, cfg, checkpoint_dir=lib.run_dir("r"), resume=False, stop_after=2)
    with pytest.raises(Exception, match=r"lr 0\.001 -> 0\.002"):
        train_into_library(task, minilm, lib, "r", TrainConfig(epochs=1, batch_size=8, lr=2e-3), resume=True)
    state = lib.run_dir("r") / "state.json"
    meta = json.loads(state.read_text())
    del meta["draws"]
    state.write_text(json.dumps(meta))
    with pytest.raises(Exception, match="'draws'"):
        train_into_library(task, minilm, lib, "r", cfg, resume=True)
    one_label = task.with_splits(train=[e for e in task.split("train") if e.label == task.labels[0]])
    with caplog.at_level("WARNING"):
        train_tasks([one_label], minilm, TrainConfig(epochs=1, batch_size=8), stop_after=1)
    assert "single label" in caplog.text


def test_non_utf8_task_names_the_line(tmp_path: Path) -> None:
    folder = tmp_path / "task"
    folder.mkdir()
    (folder / "task.json").write_text(json.dumps({"name": "t", "description": "d", "labels": ["a", "b"]}))
    (folder / "train.jsonl").write_bytes(b'{"text": "ok", "label": "a"}\n{"text": "caf\xe9", "label": "b"}\n')
    refused("eval", folder, "--split", "train", contains="train.jsonl, line 2")
    csv = tmp_path / "t.csv"
    csv.write_bytes(b"text,label\nfine,a\nalso fine,b\nbad \xff,a\n")
    refused("eval", csv, contains="t.csv, line 4")


# ---------------------------------------------------------------------------------- integrity and gc


def test_show_and_verify_report_damage_and_leftovers(library: Path) -> None:
    lib = Library(library)
    assert run_cli("library", "verify", "--library", library).exit_code == 0
    record = lib.get("agnews-a")
    with open(record.path / WEIGHTS_FILE, "r+b") as fh:
        fh.seek(-8, os.SEEK_END)
        fh.write(b"\x00" * 8)
    shown = run_cli("library", "show", "agnews-a", "--library", library, ok=False)
    assert shown.exit_code == 1 and "damaged:" in shown.output and "sha256" in shown.output
    (record.path / EXPORT_RECORD_FILE).unlink()
    orphan = library / "adapters" / "0123456789abcdef"
    write_adapter(minilm_delta(9), orphan, "all-MiniLM-L6-v2")
    stale = library / "adapters" / ".tmp-crashed"
    stale.mkdir()
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    checkpoint_tmp = library / "runs" / ".tmp-ckpt-old"
    checkpoint_tmp.mkdir(parents=True)
    os.utime(checkpoint_tmp, (time.time() - 7200, time.time() - 7200))
    report = json.loads(run_cli("library", "verify", "--library", library, "--json", ok=False).stdout)
    assert any("agnews-a" in p and "sha256" in p for p in report["problems"])
    assert any(str(orphan) in p for p in report["leftovers"])
    assert any(str(stale) in p for p in report["leftovers"])
    assert any(str(checkpoint_tmp) in p for p in report["leftovers"])
    removed = run_cli("library", "gc", "--library", library).output
    assert "3 leftover(s) removed" in removed
    assert not orphan.exists() and not stale.exists() and not checkpoint_tmp.exists()
    assert lib.exists("agnews-a") and (library / "notes.txt").exists()


def test_two_trainings_of_one_name_cannot_share_a_run(library: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
            import sys, time
            from adaptforge.library import Library
            with Library({str(library)!r}).run_lock("same"):
                print("locked", flush=True)
                time.sleep(120)
        """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        refused(
            "train",
            task_dir("sst2"),
            "--library",
            library,
            "--name",
            "same",
            "--max-train",
            16,
            "--epochs",
            1,
            contains="in use by another process",
        )
    finally:
        holder.kill()
        holder.wait()
    assert not Library(library).exists("same")


# ------------------------------------------------------------------------------------- honest output


def test_user_text_prints_literally(minilm, library: Path) -> None:
    Library(library).add(minilm_delta(4), name="[red]evil", base=minilm, task=TaskEntry("sst2"))
    listing = run_cli("library", "list", "--library", library).output
    assert "[red]evil" in listing
    out = refused("merge", "sst2-a", "agnews-a", "--library", library, "--out", "m", "--weights", "nan,1")
    assert "nan" in out.lower()
    refused("library", "rm", "sst2-a", "--library", library, contains="--force")
    run_cli("library", "rm", "sst2-a", "--library", library, "--force")
    export = library.parent / "again"
    write_adapter(minilm_delta(3), export, "all-MiniLM-L6-v2")
    refused("library", "import", export, "--library", library, "--name", "agnews-a", contains="--overwrite")
    run_cli("library", "import", export, "--library", library, "--name", "agnews-a", "--overwrite")


def test_csv_with_custom_columns_evaluates(library: Path, tmp_path: Path) -> None:
    csv = tmp_path / "reviews.csv"
    rows = [("great film", "positive"), ("awful plot", "negative")] * 6
    csv.write_text("review,sentiment\n" + "".join(f"{t},{lab}\n" for t, lab in rows))
    refused("eval", csv, "--library", library, "-a", "sst2-a", contains="'text'")
    out = run_cli(
        "eval", csv, "--library", library, "-a", "sst2-a", "--text-col", "review", "--label-col", "sentiment", "--json"
    ).stdout
    cells = json.loads(out)["results"]
    assert cells[0]["adapter"] == "sst2-a" and cells[0]["n"] >= 1
