"""The adapter library against real SQLite, real files and real processes."""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import os
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import random_delta

from adaptforge.adapters import CONFIG_FILE, WEIGHTS_FILE, read_adapter
from adaptforge.core import LoraDelta
from adaptforge.library import (
    SCHEMA_VERSION,
    BaseMismatchError,
    BaseRef,
    CorruptAdapterError,
    Library,
    LibraryError,
    MetricRow,
    TaskEntry,
)
from adaptforge.provenance import read as made_by

FP = "fp-base-1"
BASE = "sentence-transformers/all-MiniLM-L6-v2"


def make_delta(seed: int) -> LoraDelta:
    """Two modules with different ranks and scales, so rank/alpha patterns are exercised."""
    return random_delta(
        {"blocks.0.q": (6, 8), "blocks.1.v": (8, 8)},
        rank={"blocks.0.q": 4, "blocks.1.v": 2},
        scale={"blocks.0.q": 2.0, "blocks.1.v": 0.5},
        seed=seed,
    )


def assert_same(a: LoraDelta, b: LoraDelta) -> None:
    assert a.targets == b.targets
    for name in a:
        assert torch.equal(a[name].A, b[name].A)
        assert torch.equal(a[name].B, b[name].B)
        assert a[name].scale == pytest.approx(b[name].scale, rel=0, abs=1e-12)


def catalog_count(lib: Library, table: str = "adapters") -> int:
    conn = sqlite3.connect(lib.root / "catalog.sqlite")
    try:
        return conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
    finally:
        conn.close()


def adapter_folders(lib: Library) -> list[str]:
    return sorted(p.name for p in (lib.root / "adapters").iterdir())


@pytest.fixture()
def lib(tmp_path: Path) -> Library:
    return Library(tmp_path / "lib")


def test_add_get_load_roundtrip(lib: Library) -> None:
    delta = make_delta(0)
    emb = np.arange(1, 5, dtype=np.float32)
    rec = lib.add(
        delta,
        name="sst2",
        base=BaseRef(BASE, FP),
        task=TaskEntry("sst2", description="sentiment", embedding=emb),
        provenance=made_by(
            "train", {"config": {"lr": 0.001}, "tasks": [{"name": "sst2"}]}, {"labels": {"sst2": ["neg", "pos"]}}
        ),
    )
    assert len(rec.id) == 16 and rec.path == lib.root / "adapters" / rec.id
    assert rec.rank == 4 and rec.targets == ("blocks.0.q", "blocks.1.v")
    assert rec.checksum == hashlib.sha256((rec.path / WEIGHTS_FILE).read_bytes()).hexdigest()
    assert rec.config_checksum == hashlib.sha256((rec.path / CONFIG_FILE).read_bytes()).hexdigest()

    got = lib.get("sst2")
    assert got == rec and lib.get(rec.id) == rec
    assert got.recipe["config"] == {"lr": 1e-3} and got.params == {"labels": {"sst2": ["neg", "pos"]}}
    assert got.method == "train" and got.kind == "train" and got.own_labels == ("neg", "pos")
    assert got.embedding is not None and np.array_equal(got.embedding, emb) and got.embedding.dtype == np.float32
    loaded, rec2 = lib.load("sst2", expected_fingerprint=FP)
    assert_same(loaded, delta)
    assert rec2 == rec
    assert json.loads(json.dumps(rec.to_json()))["embedding"] == [1.0, 2.0, 3.0, 4.0]
    assert "sst2" in lib and rec.id in lib and "nope" not in lib and len(lib) == 1

    # A second Library object on the same folder (create=False) sees the same catalog.
    again = Library(lib.root, create=False)
    assert again.list() == [rec]


def test_schema_wal_and_missing_library(tmp_path: Path, lib: Library) -> None:
    conn = sqlite3.connect(lib.root / "catalog.sqlite")
    assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.execute("UPDATE schema_version SET version = 99")
    conn.commit()
    conn.close()
    with pytest.raises(LibraryError, match="schema version 99"):
        Library(lib.root)
    missing = tmp_path / "nowhere"
    with pytest.raises(LibraryError, match=str(missing)):
        Library(missing, create=False)
    assert not missing.exists()


@pytest.mark.parametrize("bad", ["", "   ", "a/b", "a\\b", "x" * 129, " lead", "tab\tin", "0123456789abcdef"])
def test_bad_names_refused(lib: Library, bad: str) -> None:
    with pytest.raises(LibraryError, match="adapter name"):
        lib.add(make_delta(0), name=bad, base=BaseRef(BASE, FP))
    assert adapter_folders(lib) == [] and catalog_count(lib) == 0


def test_unknown_name_suggests(lib: Library) -> None:
    lib.add(make_delta(0), name="sentiment-sst2", base=BaseRef(BASE, FP))
    with pytest.raises(LibraryError, match="Did you mean 'sentiment-sst2'"):
        lib.get("sentiment-sst")


def test_lineage_metrics_and_list(lib: Library) -> None:
    a = lib.add(make_delta(1), name="a", base=BaseRef(BASE, FP), task=TaskEntry("t1"))
    b = lib.add(
        make_delta(2),
        name="b",
        base=BaseRef(BASE, FP),
        task=TaskEntry("t2"),
        metrics=[MetricRow(None, FP, "t2", "dev", "accuracy", 0.75, 40)],
    )
    merged = lib.add(
        make_delta(3),
        name="ab-ties",
        base=BaseRef(BASE, FP),
        provenance=made_by("merge", {"method": "ties"}, {"density": 0.2}),
        parents=["b", a.id],
    )
    assert merged.parents == (b.id, a.id) and lib.get("ab-ties").parents == (b.id, a.id)
    assert [r.name for r in lib.lineage("ab-ties")] == ["b", "a"]
    assert [r.name for r in lib.children("a")] == ["ab-ties"]
    assert [r.name for r in lib.list()] == ["a", "b", "ab-ties"]
    assert [r.name for r in lib.list(task="t2")] == ["b"]

    with pytest.raises(LibraryError, match="unknown parent adapter 'zzz'"):
        lib.add(make_delta(4), name="c", base=BaseRef(BASE, FP), parents=["a", "zzz"])
    assert "c" not in lib and len(adapter_folders(lib)) == 3

    lib.record_metrics("ab-ties", FP, "t1", "test", {"accuracy": 0.5, "macro_f1": float("nan")}, n=10)
    lib.record_metrics(None, FP, "t1", "test", {"accuracy": 0.25}, n=10)
    lib.record_metrics(None, "other-fp", "t1", "test", {"accuracy": 0.1}, n=10)
    rows = lib.metrics("ab-ties")
    assert [(r.metric, r.task, r.split, r.n) for r in rows] == [
        ("accuracy", "t1", "test", 10),
        ("macro_f1", "t1", "test", 10),
    ]
    assert rows[0].value == 0.5 and math.isnan(rows[1].value) and rows[0].adapter_id == merged.id
    assert [(r.adapter_id, r.value) for r in lib.metrics("b")] == [(b.id, 0.75)]
    zero = lib.metrics(base_fingerprint=FP, zero_shot=True)
    assert [(r.adapter_id, r.value) for r in zero] == [(None, 0.25)]
    assert len(lib.metrics()) == 5 and len(lib.metrics(base_fingerprint="other-fp")) == 1

    # A parent cannot be removed silently; with force the child's lineage keeps the id.
    with pytest.raises(LibraryError, match="parent of 'ab-ties'"):
        lib.remove("a")
    lib.remove("a", force=True)
    assert "a" not in lib and not a.path.exists()
    assert lib.get("ab-ties").parents == (b.id, a.id)
    assert [r.name for r in lib.lineage("ab-ties")] == ["b"]
    lib.remove("ab-ties")
    assert lib.metrics(zero_shot=True) and catalog_count(lib, "metrics") == 3  # b's row and two zero-shot rows
    assert catalog_count(lib, "lineage") == 0


def test_similar_ranks_by_cosine(lib: Library) -> None:
    vectors = {"x": [1.0, 0.0, 0.0], "xy": [1.0, 1.0, 0.0], "y": [0.0, 1.0, 0.0], "negx": [-1.0, 0.0, 0.1]}
    for name, vec in vectors.items():
        lib.add(make_delta(0), name=name, base=BaseRef(BASE, FP), task=TaskEntry(None, embedding=np.array(vec)))
    lib.add(
        make_delta(0),
        name="other-base",
        base=BaseRef(BASE, "fp-2"),
        task=TaskEntry(None, embedding=np.array([1, 0, 0])),
    )
    lib.add(make_delta(0), name="no-emb", base=BaseRef(BASE, FP))
    lib.add(make_delta(0), name="dim4", base=BaseRef(BASE, FP), task=TaskEntry(None, embedding=np.ones(4)))
    hits = lib.similar(np.array([2.0, 0.5, 0.0]), k=3, base_fingerprint=FP)
    assert [r.name for r, _ in hits] == ["x", "xy", "y"]
    assert hits[0][1] == pytest.approx(2 / math.sqrt(4.25), abs=1e-6)
    assert hits[0][1] > hits[1][1] > hits[2][1]
    assert {r.name for r, _ in lib.similar(np.array([1.0, 0.0, 0.0]), k=10)} == {"x", "xy", "y", "negx", "other-base"}
    with pytest.raises(LibraryError, match="all zeros"):
        lib.similar(np.zeros(3))


def test_similar_equals_scoring_every_record(lib: Library) -> None:
    """Scored from the embedding column, records built for the k returned only: the same adapters, order and
    scores as scoring every record, ties (equal embeddings) going to the older adapter."""
    rng = np.random.default_rng(3)
    vectors = [rng.standard_normal(8) for _ in range(30)]
    for i, vec in enumerate(vectors + vectors[:5]):  # five later adapters repeat an earlier embedding
        lib.add(make_delta(0), name=f"e{i}", base=BaseRef(BASE, FP), task=TaskEntry(None, embedding=vec))
    query = rng.standard_normal(8).astype(np.float32).astype(np.float64)
    records = lib.list()
    unit = query / np.linalg.norm(query)
    rows = [r.embedding.astype(np.float64) for r in records]
    scores = [float(np.dot(e, unit) / np.linalg.norm(e)) for e in rows]
    expected = sorted(range(len(records)), key=lambda i: (-round(scores[i], 12), records[i].created))
    hits = lib.similar(query, k=len(records))
    assert [r.id for r, _ in hits] == [records[i].id for i in expected]
    assert [s for _, s in hits] == pytest.approx([scores[i] for i in expected], abs=1e-12)
    assert hits[0][0] == lib.get(hits[0][0].id)


def test_corrupted_file_refused(lib: Library) -> None:
    rec = lib.add(make_delta(0), name="victim", base=BaseRef(BASE, FP))
    weights = rec.path / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # flip bits inside the tensor data: still parses, wrong values
    weights.write_bytes(bytes(data))
    with pytest.raises(CorruptAdapterError, match=r"'victim'.*adapter_model\.safetensors"):
        lib.load("victim")
    with pytest.raises(CorruptAdapterError):
        lib.export("victim", lib.root.parent / "out")
    assert len(lib.verify()) == 1

    rec2 = lib.add(make_delta(1), name="victim2", base=BaseRef(BASE, FP))
    config = rec2.path / CONFIG_FILE
    cfg = json.loads(config.read_text())
    cfg["lora_alpha"] = cfg["lora_alpha"] + 1.0  # a scale changed behind the catalog's back
    config.write_text(json.dumps(cfg))
    with pytest.raises(CorruptAdapterError, match=r"'victim2'.*adapter_config\.json"):
        lib.load("victim2")


def test_wrong_fingerprint_refused(lib: Library) -> None:
    lib.add(make_delta(0), name="a", base=BaseRef(BASE, FP))
    with pytest.raises(BaseMismatchError) as info:
        lib.load("a", expected_fingerprint="fp-other")
    assert FP in str(info.value) and "fp-other" in str(info.value) and BASE in str(info.value)


def test_duplicate_name_refused_and_overwrite(lib: Library) -> None:
    first = lib.add(
        make_delta(0), name="dup", base=BaseRef(BASE, FP), metrics=[MetricRow(None, FP, "t", "dev", "accuracy", 0.5, 4)]
    )
    with pytest.raises(LibraryError, match=f"adapter name 'dup' already exists in {lib.root}"):
        lib.add(make_delta(1), name="dup", base=BaseRef(BASE, FP))
    assert adapter_folders(lib) == [first.id] and catalog_count(lib) == 1

    second = lib.add(make_delta(1), name="dup", base=BaseRef(BASE, FP), overwrite=True)
    assert second.id != first.id
    assert adapter_folders(lib) == [second.id] and catalog_count(lib) == 1
    assert catalog_count(lib, "metrics") == 0  # the replaced adapter's metrics went with it
    delta, rec = lib.load("dup")
    assert_same(delta, make_delta(1)) and rec.id == second.id
    with pytest.raises(LibraryError, match="derived from it"):
        lib.add(make_delta(2), name="dup", base=BaseRef(BASE, FP), parents=["dup"], overwrite=True)
    assert adapter_folders(lib) == [second.id]


def test_failure_mid_add_leaves_nothing(lib: Library) -> None:
    lib.add(make_delta(0), name="ok", base=BaseRef(BASE, FP))
    before = adapter_folders(lib)
    conn = sqlite3.connect(lib.root / "catalog.sqlite")
    conn.execute(
        "CREATE TRIGGER boom BEFORE INSERT ON metrics WHEN NEW.metric = 'boom' "
        "BEGIN SELECT RAISE(ABORT, 'boom trigger'); END"
    )
    conn.commit()
    conn.close()
    with pytest.raises(LibraryError, match="boom trigger"):
        lib.add(
            make_delta(1),
            name="half",
            base=BaseRef(BASE, FP),
            parents=["ok"],
            metrics=[MetricRow(None, FP, "t", "dev", "boom", 1.0, 1)],
        )
    assert adapter_folders(lib) == before
    assert catalog_count(lib) == 1 and catalog_count(lib, "lineage") == 0 and catalog_count(lib, "metrics") == 0
    assert "half" not in lib


def test_gc_removes_stale_tmp_and_orphans(lib: Library) -> None:
    keep = lib.add(make_delta(0), name="keep", base=BaseRef(BASE, FP))
    adapters = lib.root / "adapters"
    stale, fresh, orphan = adapters / ".tmp-stale", adapters / ".tmp-fresh", adapters / "00000000deadbeef"
    for folder in (stale, fresh, orphan):
        folder.mkdir()
        (folder / WEIGHTS_FILE).write_bytes(b"partial")
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    assert [r.name for r in lib.list()] == ["keep"]  # reads ignore all three
    removed = lib.gc()
    assert sorted(removed) == sorted([stale, orphan])
    assert adapter_folders(lib) == sorted([".tmp-fresh", keep.id])
    assert lib.gc(min_age=0) == [fresh]
    # Run checkpoints: clear_run removes a finished run; gc removes long-interrupted checkpoint temp folders.
    run, run_tmp = lib.runs_dir / "keep", lib.runs_dir / ".tmp-ckpt-x"
    run.mkdir(parents=True)
    run_tmp.mkdir()
    os.utime(run_tmp, (old, old))
    assert lib.gc() == [run_tmp] and run.is_dir()
    lib.clear_run("keep")
    assert not run.exists() and lib.exists("keep") and lib.exists(keep.id) and not lib.exists("gone")
    assert_same(lib.load("keep")[0], make_delta(0))


def test_export_is_a_peft_folder(lib: Library, tmp_path: Path) -> None:
    delta = make_delta(5)
    lib.add(delta, name="exp", base=BaseRef(BASE, FP), task=TaskEntry("t", embedding=np.ones(3)))
    dest = lib.export("exp", tmp_path / "exported")
    assert sorted(p.name for p in dest.iterdir()) == sorted([CONFIG_FILE, WEIGHTS_FILE, "adaptforge.json"])
    read, config = read_adapter(dest)
    assert_same(read, delta)
    assert config["base_model_name_or_path"] == BASE
    meta = json.loads((dest / "adaptforge.json").read_text())
    assert meta["name"] == "exp" and meta["base_fingerprint"] == FP and meta["embedding"] == [1.0, 1.0, 1.0]
    with pytest.raises(LibraryError, match="not an empty folder"):
        lib.export("exp", dest)
    # Exported folders read back into the library unchanged.
    lib.add(
        read,
        name="exp-again",
        base=BaseRef(config["base_model_name_or_path"], FP),
        provenance=made_by("import", {"source": str(dest)}, {}),
    )
    assert_same(lib.load("exp-again")[0], delta)


def _worker(root: str, worker: int, count: int, barrier: object, out: object) -> None:
    lib = Library(root)
    barrier.wait()  # type: ignore[attr-defined]
    names = []
    for i in range(count):
        seed = 1000 * worker + i
        row = MetricRow(None, FP, "t", "dev", "acc", seed, 1)
        lib.add(
            make_delta(seed),
            name=f"w{worker}-{i}",
            base=BaseRef(BASE, FP),
            task=TaskEntry(None, embedding=np.full(3, float(seed + 1))),
            metrics=[row],
        )
        names.append(f"w{worker}-{i}")
    try:
        lib.add(make_delta(worker), name="contested", base=BaseRef(BASE, FP))
        contested = "won"
    except LibraryError as err:
        contested = str(err)
    out.put((worker, names, contested))  # type: ignore[attr-defined]


def test_two_processes_write_at_once(tmp_path: Path) -> None:
    root = tmp_path / "shared"  # neither process finds a library: creation races too
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(str(root), w, 10, barrier, out)) for w in (1, 2)]
    for p in procs:
        p.start()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    contested = sorted(r[2] for r in results)
    assert contested[1] == "won" and "adapter name 'contested' already exists" in contested[0]

    lib = Library(root, create=False)
    records = lib.list()
    assert len(records) == 21 and len({r.id for r in records}) == 21
    assert sorted(adapter_folders(lib)) == sorted(r.id for r in records)
    for worker in (1, 2):
        for i in range(10):
            delta, _ = lib.load(f"w{worker}-{i}", expected_fingerprint=FP)
            assert_same(delta, make_delta(1000 * worker + i))
    assert catalog_count(lib, "metrics") == 20
    assert lib.verify() == []


def test_kind_column_is_backfilled_when_an_old_catalog_is_opened(lib: Library) -> None:
    """Schema 1 had no ``kind``: opening it migrates and fills kind from each recipe (or method), so an aTLAS
    composition and an aTLAS merge, which share a method name, get different kinds."""
    specs = [
        ("own", "train", {"kind": "train"}, "t1"),
        ("multi", "train_multitask", {"kind": "train_multitask"}, "t1+t2"),
        ("imported", "import", {"kind": "import"}, "t2"),
        ("merged", "atlas", {"kind": "merge"}, "t1+t2"),
        ("composed", "atlas", {"kind": "compose"}, "t3"),
        ("generated", "generate", {"kind": "generate"}, "t4"),
        ("foreign", "ties", {}, None),
    ]
    for i, (name, _, _, task) in enumerate(specs):
        lib.add(make_delta(i), name=name, base=BaseRef(BASE, FP), task=TaskEntry(task))
    conn = sqlite3.connect(lib.root / "catalog.sqlite")
    for name, method, recipe, _ in specs:  # the method and recipe as versions of schema 1 wrote them
        conn.execute("UPDATE adapters SET method = ?, recipe = ? WHERE name = ?", (method, json.dumps(recipe), name))
    conn.execute("DROP INDEX adapters_kind")
    conn.execute("ALTER TABLE adapters DROP COLUMN kind")
    conn.execute("ALTER TABLE metrics DROP COLUMN subset")
    conn.execute("ALTER TABLE metrics DROP COLUMN task_fingerprint")
    conn.execute("ALTER TABLE adapters DROP COLUMN extra_checksums")
    conn.execute("UPDATE schema_version SET version = 1")
    conn.commit()
    conn.close()
    again = Library(lib.root)
    kinds = {r.name: r.kind for r in again.list()}
    assert kinds == {
        "own": "train",
        "multi": "train",
        "imported": "import",
        "merged": "merge",
        "composed": "compose",
        "generated": "generate",
        "foreign": "other",
    }
    assert [r.name for r in again.list() if r.is_task_adapter] == ["own", "imported"]
    assert [r.name for r in again.list(kind="merge")] == ["merged"]


def test_a_tasks_own_adapter_is_trained_or_imported_never_derived(lib: Library) -> None:
    """The one rule behind merge references, compose candidates and generator samples: a newer composition,
    merge or generated adapter of the same task is never taken for the task's own adapter."""
    own = lib.add(make_delta(1), name="own", base=BaseRef(BASE, FP), task=TaskEntry("t1"))
    for i, kind in enumerate(("compose", "merge", "generate"), start=2):
        recipe = {"method": "atlas", "task": {"name": "t1"}, "shots": {"k": 0, "seed": 0}}
        made = made_by(kind, recipe, {"generator_method": "atlas"})
        lib.add(make_delta(i), name=f"{kind}-t1", base=BaseRef(BASE, FP), task=TaskEntry("t1"), provenance=made)
    assert lib.task_adapter("t1", FP) == own
    assert lib.task_adapter("t1", FP, prefer=["compose-t1", "merge-t1"]) == own
    assert lib.task_adapter("t1", "another-base") is None
    made = made_by("import", {}, {})
    imported = lib.add(make_delta(9), name="imp", base=BaseRef(BASE, FP), task=TaskEntry("t1"), provenance=made)
    assert imported.kind == "import" and lib.task_adapter("t1", FP) == imported  # the newest own adapter
    assert lib.task_adapter("t1", FP, prefer=["own"]) == own


def test_metrics_are_kept_apart_by_subset_and_old_rows_say_unknown(lib: Library) -> None:
    """A --limit run and a full run of the same split are different rows; rows from before the subset column
    was added read back as 'unknown' and never pass for either."""
    lib.add(make_delta(1), name="a", base=BaseRef(BASE, FP), task=TaskEntry("t1"))
    lib.record_metrics("a", FP, "t1", "test", {"accuracy": 0.5}, 16, subset="sample:16:seed0", task_fingerprint="tf")
    lib.record_metrics("a", FP, "t1", "test", {"accuracy": 0.75}, 300, subset="all", task_fingerprint="tf")
    full = lib.metrics("a", subset="all")
    assert [(m.value, m.n, m.subset, m.task_fingerprint) for m in full] == [(0.75, 300, "all", "tf")]
    assert [m.value for m in lib.metrics("a", subset="sample:16:seed0")] == [0.5]
    conn = sqlite3.connect(lib.root / "catalog.sqlite")
    conn.execute("ALTER TABLE metrics DROP COLUMN subset")
    conn.execute("ALTER TABLE metrics DROP COLUMN task_fingerprint")
    conn.execute("ALTER TABLE adapters DROP COLUMN extra_checksums")
    conn.execute("UPDATE schema_version SET version = 2")
    conn.commit()
    conn.close()
    again = Library(lib.root)
    assert {m.subset for m in again.metrics("a")} == {"unknown"} and again.metrics("a", subset="all") == []
