"""``adaptforge tta`` end to end on the real MiniLM and a real trained library (sst2-a, sst2-b, subjectivity-a,
agnews-a), adapting to movie_review, a task the library lacks; and on the tiny random LLaMA.

The labels of the adapted split are never read by a method: replacing them changes the scores, never the
adapted predictions. Everything a user can get wrong is refused before any work, with the library unchanged.
"""

from __future__ import annotations

import json
import re

import pytest
from helpers import library_copy, random_delta, small_task, snapshot
from helpers import run_cli as run

from adaptforge.library import BaseRef, Library, TaskEntry
from adaptforge.pipelines.tta import tta_on_task
from adaptforge.tasks import Example, write_task
from adaptforge.tta import TTA_METHODS

QUICK: dict[str, dict] = {
    "tent": {},
    "eata": {"e_margin": 1.0, "d_margin": 1.0},
    "sar": {"e_margin": 1.0},
    "pseudo": {"steps": 1, "samples": 2, "agreement": 0.5},
    "input-lora": {"steps": 1, "views": 1},
    "ttt-nn": {"neighbours": 2, "pool_per_task": 4},
    "atlas-unsup": {"steps": 1, "candidates": 1},
    "em-prior": {"source_prior": "uniform"},  # sst2-a's own task has other label names (Good, Bad)
}


@pytest.fixture(scope="module")
def tta_setup(trained_library, tmp_path_factory):
    """A module-private copy of the shared library (tests here that write take their own) and movie_review."""
    root = tmp_path_factory.mktemp("tta")
    task = small_task("movie_review", n_train=8, n_test=8)
    return library_copy(trained_library, root / "lib"), task, write_task(task, root / "mr"), trained_library[1]


def test_cli_reports_before_and_after_on_the_same_inputs_with_cost_and_resets(trained_copy, tta_setup):
    mr = tta_setup[2]
    before = snapshot(trained_copy.root)
    args = ["tta", mr, "--library", trained_copy.root, "--adapter", "sst2-a", "--method", "tent"]
    got = json.loads(run(*args, "--limit", "6", "--batch-size", "3", "--json").stdout)
    assert got["method"] == "tent" and got["granularity"] == "batch" and got["n"] == 6
    assert got["before"]["n"] == got["after"]["n"] == 6 and got["after"]["adapter"] == "sst2-a+tent"
    assert got["cost"]["units"] == 2 and got["cost"]["tta_ms_per_input"] > 0 and got["cost"]["plain_ms_per_input"] > 0
    assert got["resets"] == 0 and got["saved"] is None and got["params"]["steps"] == 1
    table = run(*args, "--limit", "2", "--granularity", "input", "--steps", "2", "--lr", "0.01").stdout
    assert "before" in table and "after" in table and "resets: 0" in table and "input)" in table
    assert snapshot(trained_copy.root) == before  # without --save nothing is written
    # "before" is the adapter as `adaptforge eval` scores it on the same examples
    evaluated = json.loads(
        run("eval", mr, "--library", trained_copy.root, "-a", "sst2-a", "--limit", "6", "--json").stdout
    )
    assert evaluated["results"][0]["accuracy"] == pytest.approx(got["before"]["accuracy"])


GUARDED = {"lr": 0.5, "anchor_agreement": 1.0, "last_blocks": 0}  # a stream that drifts (every norm layer moves),
# with the anchor guard firing on any change


@pytest.mark.parametrize(
    ("method", "extra", "granularity", "batch_size"),
    [(m, {}, None, 4) for m in TTA_METHODS.names()] + [(m, GUARDED, "stream", 2) for m in ("tent", "eata", "sar")],
)
def test_the_labels_of_the_adapted_split_are_never_read(tta_setup, minilm, method, extra, granularity, batch_size):
    """Same texts with every label flipped, or all replaced by one label: identical adapted predictions (the
    scores differ, so the labels were read, by the scoring only); also with the anchor guard on and firing."""
    lib, task, _, _ = tta_setup
    examples = sorted(task.split("test"), key=lambda e: len(e.text))[:4]  # the 4 shortest, both labels
    flipped = {label: other for label, other in zip(task.labels, reversed(task.labels), strict=True)}
    variants = [
        task.with_splits(test=[Example(e.text, flipped[e.label]) for e in examples]),
        task.with_splits(test=[Example(e.text, task.labels[0]) for e in examples]),
    ]
    pool = [small_task("sst2", 8, 4)]
    outcomes = [
        tta_on_task(
            v,
            lib,
            "sst2-a",
            method=method,
            params={**QUICK[method], **extra},
            granularity=granularity,
            batch_size=batch_size,
            backbone=minilm,
            pool=pool,
        )  # fmt: skip
        for v in variants
    ]
    assert outcomes[0].predictions == outcomes[1].predictions
    if extra:
        assert outcomes[0].run.drifts == outcomes[1].run.drifts >= 1
    assert outcomes[1].after.accuracy == pytest.approx(sum(p == 0 for p in outcomes[1].predictions) / len(examples))
    assert outcomes[0].before.loss != pytest.approx(outcomes[1].before.loss)


def test_save_stores_the_stream_adapter_with_lineage(trained_copy, tta_setup):
    mr = tta_setup[2]
    args = ["tta", mr, "--library", trained_copy.root, "--adapter", "sst2-a", "--method", "tent", "--batch-size", "4"]
    got = json.loads(
        run(*args, "--granularity", "stream", "--param", "update=lora", "--save", "mr-tent", "--json").stdout
    )
    record = trained_copy.get("mr-tent")
    assert got["saved"] == {"name": "mr-tent", "id": record.id}
    assert record.kind == "tta" and record.method == "tent" and record.task == "movie_review"
    assert not record.is_task_adapter and record.embedding is not None
    assert [p.name for p in trained_copy.lineage("mr-tent")] == ["sst2-a"]
    recipe = record.recipe
    assert recipe["granularity"] == "stream" and recipe["parent"]["name"] == "sst2-a" and recipe["n"] == 8
    assert recipe["params"]["update"] == "lora" and recipe["metrics"]["after"]["accuracy"] == got["after"]["accuracy"]
    assert record.params["labels"] == {"movie_review": ["negative", "positive"]}
    parent, _ = trained_copy.load("sst2-a")
    saved, _ = trained_copy.load("mr-tent")
    assert saved.targets == parent.targets and saved.ranks == parent.ranks
    # the stored adapter evaluates like any other
    run("eval", mr, "--library", trained_copy.root, "-a", "mr-tent", "--json")


def test_atlas_unsup_saves_its_fold_with_the_candidates_as_parents(trained_copy, tta_setup, minilm):
    outcome = tta_on_task(
        tta_setup[1], trained_copy, "sst2-a", method="atlas-unsup", params={"steps": 1, "candidates": 2},
        granularity="stream", batch_size=4, save="mr-atlas", backbone=minilm,
    )  # fmt: skip
    assert len(outcome.candidates) == 2 and "sst2-a" not in outcome.candidates
    parents = [p.name for p in trained_copy.lineage("mr-atlas")]
    assert parents == ["sst2-a", *outcome.candidates]
    assert trained_copy.get("mr-atlas").rank == 12  # three rank-4 adapters, concatenated exactly


def test_ttt_nn_defaults_to_the_library_tasks_training_pools(tta_setup, minilm):
    outcome = tta_on_task(
        tta_setup[1], tta_setup[0], "sst2-a", method="ttt-nn", params=QUICK["ttt-nn"], limit=2, backbone=minilm
    )
    assert outcome.pool == ["agnews", "sst2", "subjectivity"]  # the library's tasks, shipped with the package
    assert outcome.granularity == "input" and outcome.run.units == 2


def test_em_prior_takes_the_source_prior_from_the_adapters_own_task(tta_setup, minilm, tmp_path):
    """agnews-a on agnews inputs: its train split's prior comes from the package's agnews (or a --pool task of
    that name); sst2-a on movie_review: label names differ, refused unless the prior is uniform."""
    lib = tta_setup[0]
    agnews = small_task("agnews", n_train=8, n_test=8)
    args = ["tta", write_task(agnews, tmp_path / "agnews"), "--library", lib.root, "--adapter", "agnews-a"]
    got = json.loads(run(*args, "--method", "em-prior", "--json").stdout)
    assert got["granularity"] == "batch" and got["n"] == 8 and got["params"]["source_prior"] == "train"
    pooled = tta_on_task(agnews, lib, "agnews-a", method="em-prior", pool=[agnews], backbone=minilm)
    assert pooled.n == 8 and pooled.run.updated + 8 * pooled.run.resets >= 8
    mr = ["tta", tta_setup[2], "--library", lib.root, "--adapter", "sst2-a", "--method", "em-prior"]
    refused = run(*mr, ok=False)
    assert refused.exit_code == 2 and "adapter's task 'sst2' has labels ['Good', 'Bad']" in refused.output
    run(*mr, "--param", "source_prior=uniform")


def test_everything_is_checked_before_any_work(trained_copy, tta_setup, tiny_llama_dir):
    mr = tta_setup[2]
    before = snapshot(trained_copy.root)
    base = ["tta", mr, "--library", trained_copy.root, "--adapter", "sst2-a"]
    cases = [
        (["--method", "tnet"], "unknown tta method 'tnet'.*Did you mean 'tent'"),
        (["--method", "tent", "--steps", "0"], "--steps: tta method 'tent': 'steps' must be >= 1, got 0"),
        (["--method", "tent", "--lr", "0"], "--lr: tta method 'tent': 'lr' must be > 0"),
        (["--method", "tent", "--lr", "-0.1"], "'lr' must be > 0"),
        (["--method", "tent", "--steps", "2", "--param", "steps=3"], "--steps and --param steps=... both given"),
        (["--method", "tent", "--granularity", "epoch"], "--granularity must be one of input, batch, stream"),
        (["--method", "tent", "--batch-size", "0"], "--batch-size must be a positive integer"),
        (["--method", "tent", "--split", "validation"], "has no split 'validation'"),
        (["--method", "tent", "--save", "x"], "--save stores the adapter a stream adapted: pass --granularity stream"),
        (["--method", "tent", "--granularity", "stream", "--save", "x"], "update=lora to store"),
        (["--method", "eata", "--param", "update=lora", "--save", "sst2-b"], "'sst2-b' already exists"),
        (["--method", "tent", "--param", "d_margin=0.5"], "unknown parameter 'd_margin'"),
        (["--method", "input-lora", "--param", "objective=lm"], "objective 'lm' needs a causal LM"),
        (["--method", "tent", "--model", tiny_llama_dir], "was made for base model"),
        (
            ["--method", "em-prior", "--granularity", "stream", "--save", "x"],
            "--save: tta method 'em-prior' changes no weights",
        ),
        (["--method", "em-prior", "--param", "source_prior=test"], "'source_prior' must be one of 'train', 'uniform'"),
        (["--method", "em-prior", "--steps", "2"], "--steps: tta method 'em-prior' takes no gradient step"),
        (["--method", "em-prior", "--param", "lr=0.1"], "unknown parameter 'lr'"),
        (["--method", "eata", "--param", "anchor_agreement=1.5"], r"'anchor_agreement' must be in \[0, 1\], got 1.5"),
    ]
    for extra, message in cases:
        result = run(*base, *extra, ok=False)
        assert result.exit_code == 2, (extra, result.output)
        assert re.search(message, " ".join(result.output.split())), (extra, result.output)
    result = run("tta", mr, "--library", trained_copy.root, "--adapter", "sst2-x", "--method", "tent", ok=False)
    assert result.exit_code == 2 and "sst2-a" in result.output  # the unknown name gets close names
    assert snapshot(trained_copy.root) == before


def test_tiny_llama_stream_adapts_and_saves(tmp_path, tiny_llama, tiny_llama_dir):
    lib = Library(tmp_path / "lib")
    names = {
        f"model.layers.{i}.self_attn.{m}": s for i in range(2) for m, s in (("q_proj", (64, 64)), ("v_proj", (32, 64)))
    }
    task = small_task("sst2", n_train=8, n_test=4)
    lib.add(
        random_delta(names, rank=2, scale=1.0, std=0.1),
        name="ll",
        base=BaseRef(str(tiny_llama_dir), tiny_llama.fingerprint),
        task=TaskEntry("sst2", description=task.description),
    )
    folder = write_task(task, tmp_path / "sst2")
    args = ["--granularity", "stream", "--batch-size", "2", "--param", "update=lora", "--save", "ll-tent"]
    got = json.loads(
        run("tta", folder, "--library", lib.root, "--adapter", "ll", "--method", "tent", *args, "--json").stdout
    )
    assert got["n"] == 4 and got["cost"]["units"] == 2 and got["saved"]["name"] == "ll-tent"
    assert lib.get("ll-tent").base_fingerprint == tiny_llama.fingerprint
    assert [p.name for p in lib.lineage("ll-tent")] == ["ll"]


def test_list_shows_every_method_with_its_paper_and_params():
    text = run("tta", "--list").stdout
    for name in TTA_METHODS.names():
        assert name in text
    assert "https://arxiv.org/abs/2006.10726" in text and "default granularity stream" in text
    assert f"{len(TTA_METHODS.names())} tta method(s)" in text
