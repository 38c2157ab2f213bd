"""``adaptforge train --snapshots N``: evenly spaced LoRA snapshots stored in the adapter's folder, checksummed,
not listed as adapters, counted by ``library show``, and kept across a resumed run."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import run_cli, small_task

from adaptforge.library import CorruptAdapterError, Library
from adaptforge.pipelines.train import train_into_library
from adaptforge.snapshots import SNAPSHOTS_FILE, snapshot_steps
from adaptforge.train.config import TrainConfig
from adaptforge.train.trainer import train

CFG = dict(max_train=32, batch_size=8, rank=2, targets=("query",), epochs=2)  # 8 steps


def test_snapshot_steps_are_evenly_spaced_and_end_at_the_last_step() -> None:
    assert snapshot_steps(8, 4) == [2, 4, 6, 8]
    assert snapshot_steps(3, 10) == [1, 2, 3]
    assert snapshot_steps(8, 0) == []


def test_snapshots_are_stored_checksummed_and_not_adapters(tmp_path, minilm) -> None:
    lib = Library(tmp_path / "lib")
    task = small_task("sst2", n_train=32, n_test=8)
    trained = train_into_library(task, minilm, lib, "s", TrainConfig(snapshots=4, **CFG), eval_splits=())
    record = trained.record
    assert list(record.extra_checksums) == [SNAPSHOTS_FILE]
    assert [r.name for r in lib.list()] == ["s"]
    snaps = lib.snapshots("s")
    assert snaps is not None and snaps.steps == [2, 4, 6, 8] and len(snaps.demonstrations) == 32
    final, _ = lib.load("s")
    last = snaps.deltas({m: final[m].scale for m in final})[-1]
    for m in final:  # the last snapshot is the adapter itself
        assert torch.equal(last[m].A, final[m].A) and torch.equal(last[m].B, final[m].B)
    shown = json.loads(run_cli("library", "show", "s", "--library", lib.root, "--json").stdout)
    assert shown["snapshots"] == {"count": 4, "steps": [2, 4, 6, 8]}
    assert "4 (steps 2..8), not separate adapters" in run_cli("library", "show", "s", "--library", lib.root).stdout
    with (record.path / SNAPSHOTS_FILE).open("r+b") as fh:  # a flipped byte is caught like in the PEFT files
        fh.seek(-3, 2)
        byte = fh.read(1)
        fh.seek(-3, 2)
        fh.write(bytes([byte[0] ^ 1]))
    with pytest.raises(CorruptAdapterError, match=f"{SNAPSHOTS_FILE} at .* has sha256"):
        lib.load("s")
    assert any(SNAPSHOTS_FILE in p for p in lib.verify())


def test_a_resumed_run_keeps_the_snapshots_taken_before_it_stopped(tmp_path, minilm) -> None:
    task = small_task("sst2", n_train=32, n_test=8)
    cfg = TrainConfig(snapshots=4, checkpoint_every=1, **CFG)
    whole = train(task, minilm, cfg)
    train(task, minilm, cfg, checkpoint_dir=tmp_path / "run", stop_after=5)
    resumed = train(task, minilm, cfg, checkpoint_dir=tmp_path / "run", resume=True)
    assert resumed.resumed_from == 5
    assert resumed.snapshots is not None and whole.snapshots is not None
    assert resumed.snapshots.steps == whole.snapshots.steps == [2, 4, 6, 8]
    for a, b in zip(resumed.snapshots.factors, whole.snapshots.factors, strict=True):
        for m in a:
            assert torch.allclose(a[m][0], b[m][0]) and torch.allclose(a[m][1], b[m][1])
