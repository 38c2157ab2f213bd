"""Every provenance type reads back from what it writes: stored through the library, the record's typed
provenance writes the same recipe and params again, and the record's accessors agree with it."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import random_delta

from adaptforge.library import KINDS, BaseRef, Library, TaskEntry
from adaptforge.provenance import (
    PROVENANCE_TYPES,
    ComposeProvenance,
    GenerateProvenance,
    ImportProvenance,
    MergeProvenance,
    Provenance,
    PruneProvenance,
    TaskRef,
    TrainProvenance,
    TtaProvenance,
    read,
)

ROUTER = {"router": "entropy", "temperature": 1.0, "adapter_ids": ["0123456789abcdef", "fedcba9876543210"]}
TASK = {"name": "t1", "fingerprint": "tf1", "path": None}

EXAMPLES: list[Provenance] = [
    TrainProvenance(
        config={"rank": 8, "lr": 0.001},
        tasks=[TaskRef("t1", 2, "tf1")],
        labels={"t1": ["neg", "pos"]},
        n_train=100,
        seconds=1.234,
        history=[[0, 1, 0.5]],
        curves={"t1": [[10, 0.4, 0.8]]},
        draws={"t1": 10},
        resumed_from=5,
    ),
    TrainProvenance(
        config={},
        tasks=[TaskRef("t1", None, "tf1"), TaskRef("t2", "v1", "tf2")],
        labels={"t1": ["a", "b"], "t2": ["c", "d", "e"]},
        n_train=10,
        seconds=0.5,
    ),
    ImportProvenance(source="/peft/folder", peft_config={"r": 8, "lora_alpha": 16}),
    MergeProvenance(
        merge_recipe={"method": "ties", "adapters": ["a", "b"], "params": {"density": 0.5}, "out": "m"},
        typed_params={"density": 0.5, "weights": [1.0, 1.0]},
        adapter_ids=["0123456789abcdef", "fedcba9876543210"],
        data=[{"task": "t1", "n": 8}],
        reconstruction_error={"blocks.0.q": 0.01},
        router=ROUTER,
        info={"fit": 1},
        seconds=2.5,
    ),
    ComposeProvenance(
        composer="lorahub",
        composer_params={"steps": 40, "seed": 3},
        task=TASK,
        labels=["neg", "pos"],
        shots={"k": 5, "seed": 0, "fit": 4, "holdout": 1},
        candidates=[{"name": "a", "similarity": 0.5}],
        weights={"a": 0.7, "b": 0.0},
        router=None,
        info={"loss": 0.3},
    ),
    GenerateProvenance(
        task="t1",
        labels=["neg", "pos"],
        seed=7,
        info={"generator": "g", "training_adapters": 9},
        generator_method="icm",
        generator_id="abcdefabcdefabcd",
        condition_source="16 demonstrations",
    ),
    PruneProvenance(
        prune_method="wanda",
        prune_params={"sparsity": 0.5},
        parent_model="m",
        parent_fingerprint="fp0",
        fingerprint="fp1",
        calibration={"domain": {"n": 16}},
        layers={"l0": 0.5},
        sparsity=0.5,
        intermediate_size=None,
        seconds=3.21,
    ),
    TtaProvenance(
        tta_method="tent",
        tta_params={"lr": 0.001},
        granularity="batch",
        batch_size=8,
        parent={"name": "a", "id": "0123456789abcdef"},
        task=TASK,
        labels=["neg", "pos"],
        split="test",
        limit=32,
        n=32,
        updated=4,
        resets=0,
        metrics={"before": 0.5, "after": 0.6},
        candidates=["b"],
        pool=["c"],
        seconds=1.5,
    ),
]


def test_every_kind_a_verb_makes_has_a_typed_reader() -> None:
    assert set(PROVENANCE_TYPES) == set(KINDS) - {"other"}
    assert {type(p).kind for p in EXAMPLES} == set(PROVENANCE_TYPES)


@pytest.mark.parametrize("made", EXAMPLES, ids=lambda p: f"{type(p).__name__}")
def test_provenance_round_trips_through_the_library(made: Provenance, tmp_path: Path) -> None:
    lib = Library(tmp_path / "lib")
    stored = lib.add(
        random_delta({"m": (4, 4)}, rank=2), name="x", base=BaseRef("base", "fp"), task=TaskEntry("t1"), provenance=made
    )
    record = lib.get("x")
    assert record.recipe == stored.recipe and record.kind == made.kind and record.method == made.method
    again = record.provenance
    assert type(again) is type(made)
    assert again.recipe() == record.recipe and again.params() == record.params and again.method == made.method
    assert again.recipe()["kind"] == made.kind
    assert record.labels == again.labels_by_task() == {t: tuple(v) for t, v in made.params().get("labels", {}).items()}
    assert record.router_settings == again.router_settings()


def test_legacy_recipes_read_through_the_typed_readers() -> None:
    """Keys older versions wrote are handled by the readers, once."""
    multitask = read("train", {"kind": "train_multitask", "tasks": [{"name": "t1"}, {"name": "t2"}]}, {})
    assert isinstance(multitask, TrainProvenance) and multitask.method == "train_multitask"
    assert multitask.recipe()["kind"] == "train"
    arrow = {"kind": "compose", "method": "arrow", "routing": {"router": "arrow", "top_k": 2}}
    arrow["candidates"] = [{"name": "a"}, {"name": "b"}]
    composed = read("compose", arrow, {"labels": {"t1": ["x", "y"]}})
    assert isinstance(composed, ComposeProvenance)
    assert composed.router_settings() == {"router": "arrow", "top_k": 2} and composed.routed_over() == ("a", "b")
    dawin = {"kind": "merge", "method": "dawin", "adapter_ids": ["i1", "i2"], "router": {"router": "entropy"}}
    merged = read("merge", dawin, {})
    assert isinstance(merged, MergeProvenance) and merged.routed_over() == ("i1", "i2")
    broken = read("train", {"kind": "train", "n_train": "many", "history": "none", "curves": [1]}, {"labels": 3})
    assert isinstance(broken, TrainProvenance) and broken.n_train == 0 and broken.labels_by_task() == {}
    assert read("other", {"kind": "x"}, {}) is None
