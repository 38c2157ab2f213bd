"""``adaptforge compose`` and ``adaptforge generate`` end to end on the real MiniLM and a real library.

Four tiny adapters (three tasks, one with two variants) are trained for real into a library shared by
the module; each test works on a private copy. The new task (movie_review) is never in the library.
"""

from __future__ import annotations

import json

import pytest
import torch
from helpers import library_copy, small_task
from helpers import run_cli as run

from adaptforge.core import AdaptforgeError
from adaptforge.evaluate import evaluate
from adaptforge.library import Library
from adaptforge.tasks import write_task


@pytest.fixture(scope="module")
def setup(trained_library, tmp_path_factory):
    """The shared library (sst2-a, sst2-b, subjectivity-a, agnews-a) and movie_review, a task it lacks."""
    new_task = write_task(small_task("movie_review", n_train=24, n_test=32), tmp_path_factory.mktemp("new") / "mr")
    return trained_library[0], new_task


@pytest.fixture
def lib(setup, tmp_path) -> Library:
    return library_copy((setup[0], None), tmp_path / "lib")


def names(lib: Library) -> list[str]:
    return sorted(r.name for r in lib.list())


def test_compose_lorahub_stores_lineage_recipe_and_reports_zero_shot(lib, setup):
    before = names(lib)
    out = run(
        "compose",
        setup[1],
        "--library",
        lib.root,
        "--shots",
        "8",
        "--method",
        "lorahub",
        "--out",
        "mr",
        "--candidates",
        "3",
        "--param",
        "budget=8",
        "--limit",
        "32",
        "--json",
    ).stdout
    got = json.loads(out)
    assert names(lib) == sorted([*before, "mr"])
    record = lib.get("mr")
    assert record.method == "lorahub" and record.task == "movie_review"
    assert record.recipe["kind"] == "compose" and record.recipe["shots"]["k"] == 8
    assert len(record.recipe["candidates"]) == 3 and record.embedding is not None
    parents = {p.name for p in lib.lineage("mr")}
    assert parents and parents <= set(before)
    weights = record.recipe["weights"]
    assert set(weights) == {c["name"] for c in record.recipe["candidates"]}
    assert got["eval"]["zero_shot"]["n"] == got["eval"]["adapter"]["n"] == 32
    # the stored adapter is what was evaluated: re-evaluating it from the library gives the same accuracy
    again = json.loads(run("eval", setup[1], "--library", lib.root, "-a", "mr", "--limit", "32", "--json").stdout)
    assert again["results"][0]["accuracy"] == pytest.approx(got["eval"]["adapter"]["accuracy"])


def test_compose_tuned_stores_the_sum_with_the_retrieved_parent(lib, setup):
    args = ["--library", lib.root, "--shots", "8", "--candidates", "3", "--limit", "32", "--json", "--out", "mr-t"]
    got = json.loads(run("compose", setup[1], *args, "--method", "tuned", "--param", "epochs=2").stdout)
    record = lib.get("mr-t")
    chosen = record.recipe["info"]["inner"]["chosen"]
    assert [p.name for p in lib.lineage("mr-t")] == [chosen] and record.recipe["info"]["tune"]["steps"] == 2
    parent, _ = lib.load(chosen)
    tuned, _ = lib.load("mr-t")
    assert all(tuned[m].rank == parent[m].rank + 8 for m in parent)  # the parent's factors plus the new LoRA
    again = json.loads(run("eval", setup[1], "--library", lib.root, "-a", "mr-t", "--limit", "32", "--json").stdout)
    assert again["results"][0]["accuracy"] == pytest.approx(got["eval"]["adapter"]["accuracy"])


def test_compose_is_reproducible_for_a_seed(lib, setup):
    for name in ("a", "b"):
        run(
            "compose",
            setup[1],
            "--library",
            lib.root,
            "--shots",
            "8",
            "--out",
            name,
            "--candidates",
            "3",
            "--param",
            "budget=6",
            "--no-eval",
            "--seed",
            "3",
        )
    assert lib.get("a").recipe["weights"] == lib.get("b").recipe["weights"]
    da, _ = lib.load("a")
    db, _ = lib.load("b")
    for module in da:
        assert torch.equal(da.dense(module), db.dense(module))


def test_compose_without_shots_retrieval_and_arrow(lib, setup, minilm):
    def compose0(method: str, out: str) -> dict:
        args = ["--library", lib.root, "--shots", "0", "--limit", "16", "--json"]
        return json.loads(run("compose", setup[1], *args, "--method", method, "--out", out).stdout)

    got = compose0("retrieval", "mr-r")
    best = max(got["candidates"], key=lambda c: c["similarity"])
    assert lib.get("mr-r").recipe["weights"][best["name"]] == 1.0
    assert [p.name for p in lib.lineage("mr-r")] == [best["name"]]
    arrow = compose0("arrow", "mr-a")
    assert arrow["info"]["router"]["top_k"] >= 1 and arrow["eval"]["adapter"]["n"] == 16
    # `adaptforge eval` of the stored Arrow adapter routes per token (rebuilt from its candidates), as
    # compose measured it, not through the static fallback tensors stored for it
    again = json.loads(run("eval", setup[1], "--library", lib.root, "-a", "mr-a", "--limit", "16", "--json").stdout)
    assert again["results"][0]["accuracy"] == pytest.approx(arrow["eval"]["adapter"]["accuracy"])
    from adaptforge.routing import stored_router
    from adaptforge.scorers import make_scorer
    from adaptforge.tasks import load_task

    record = lib.get("mr-a")
    routing = stored_router(lib, record, minilm.fingerprint)
    assert routing is not None and len(routing.deltas) == len(record.recipe["candidates"])
    static = evaluate(make_scorer(minilm), load_task(setup[1]), "test", lib.load("mr-a")[0], limit=16)
    routed_loss = routing.evaluate(make_scorer(minilm), load_task(setup[1]), "test", limit=16).loss
    assert routed_loss != pytest.approx(static.loss, rel=1e-4)  # the router is not the fallback
    lib.remove(record.recipe["candidates"][0]["name"], force=True)  # a parent: refused without force
    with pytest.raises(AdaptforgeError, match="not in the library"):
        stored_router(lib, record, minilm.fingerprint)


def test_generate_from_description_reuses_its_generator(lib, setup):
    args = [
        "generate",
        "--library",
        lib.root,
        "--description",
        "Is the sentiment of this movie review positive?",
        "--labels",
        "negative,positive",
        "--json",
    ]
    made = run(*args, "--out", "gen-1", "--eval", setup[1], "--limit", "16")
    first = json.loads(made.stdout)
    assert first["eval"]["adapter"]["n"] == 16
    assert "warning: the generator learns from only 4 adapters" in " ".join(made.output.split())
    record = lib.get("gen-1")
    assert (record.kind, record.method) == ("generate", "span") and len(lib.lineage("gen-1")) == 4
    assert record.recipe["generator_parameters"] > 0 and record.recipe["training_adapters"] == 4
    folders = list((lib.root / "generators").iterdir())
    run(*args, "--out", "gen-2")
    assert list((lib.root / "generators").iterdir()) == folders  # same adapters, same config: reused
    d1, _ = lib.load("gen-1")
    d2, _ = lib.load("gen-2")
    for module in d1:
        assert torch.equal(d1.dense(module), d2.dense(module))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--shots", "0", "--method", "lorahub"], "shots"),
        (["--shots", "5000"], "5000"),
        (["--shots", "4", "--method", "nope"], "nope"),
        (["--shots", "4", "--out", "sst2-a"], "already exists"),
    ],
)
def test_compose_bad_inputs_are_clear_and_write_nothing(lib, setup, args, message):
    before = names(lib)
    full = ["compose", setup[1], "--library", lib.root, "--out", "x", *args]
    if "--out" in args:
        full = ["compose", setup[1], "--library", lib.root, *args]
    result = run(*full, ok=False)
    assert result.exit_code == 2 and message in result.output.replace("\n", " ")
    assert names(lib) == before


def test_generate_bad_inputs(lib, setup, tmp_path):
    result = run("generate", "--library", lib.root, "--out", "g", "--description", "x", "--labels", "only", ok=False)
    assert result.exit_code == 2 and "two" in result.output
    empty = Library(tmp_path / "empty")
    result = run("generate", "--library", empty.root, "--out", "g", "--description", "x", "--labels", "a,b", ok=False)
    assert result.exit_code == 2 and "no adapters" in result.output
    result = run(
        "generate",
        "--library",
        lib.root,
        "--out",
        "g",
        "--description",
        "Sentiment?",
        "--labels",
        "bad,good",
        "--eval",
        setup[1],
        ok=False,
    )
    assert result.exit_code == 2 and "labels" in result.output and "g" not in names(lib)
