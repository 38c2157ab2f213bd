"""``adaptforge merge`` end to end: lineage, identity through the library, recipes, bad inputs, eval, dense output.

Three tiny adapters are trained for real on the embedded MiniLM (32 examples, one epoch) into a
library shared by the module; tests that need a fresh library copy it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from helpers import LIBRARY_TASKS, small_task
from helpers import run_cli as run

from adaptforge.core import LoraDelta, LoraModule
from adaptforge.library import BaseRef, Library

TASKS = LIBRARY_TASKS


def said(result, pattern: str) -> bool:
    """``pattern`` (a regex without whitespace escapes) occurs in the output, whitespace ignored on both
    sides (Rich wraps long lines)."""
    return re.search(re.sub(r"\s+", "", pattern), re.sub(r"\s+", "", result.output)) is not None


def snapshot(lib: Library) -> tuple[list[str], list[str]]:
    return sorted(r.name for r in lib.list()), sorted(p.name for p in lib.adapters_dir.iterdir())


def test_merge_writes_lineage_and_resolved_recipe(trained_copy):
    out = json.loads(
        run(
            "merge",
            "sst2-a",
            "subjectivity-a",
            "agnews-a",
            "--method",
            "ties",
            "--density",
            "0.2",
            "--library",
            trained_copy.root,
            "--out",
            "m",
            "--json",
        ).stdout
    )
    ids = [trained_copy.get(n).id for n in ("sst2-a", "subjectivity-a", "agnews-a")]
    rec = trained_copy.get("m")
    assert (
        out["parents"] == ids
        and list(rec.parents) == ids
        and out["parent_names"] == ["sst2-a", "subjectivity-a", "agnews-a"]
    )
    assert rec.method == "ties" and rec.params["density"] == 0.2 and rec.params["majority_sign"] == "total"
    assert rec.recipe["kind"] == "merge" and rec.recipe["method"] == "ties" and rec.recipe["adapter_ids"] == ids
    assert rec.recipe["params"] == rec.params  # the resolved params, every default filled in
    err = rec.recipe["reconstruction_error"]
    assert not err["exact"] and 0.0 <= err["mean"] <= err["max"] <= 1.0 and len(err["per_module"]) == len(rec.targets)
    assert [p.name for p in trained_copy.lineage("m")][:3] == ["sst2-a", "subjectivity-a", "agnews-a"]
    assert rec.task == "sst2+subjectivity+agnews" and rec.rank == 4  # TIES default rank: the largest input rank


@pytest.mark.parametrize("weight", [1.0, -1.0])
def test_one_adapter_at_weight_one_is_itself_through_the_library(trained_copy, weight):
    run("merge", "sst2-a", "--weights", str(weight), "--library", trained_copy.root, "--out", "same")
    merged, rec = trained_copy.load("same")
    original, _ = trained_copy.load("sst2-a")
    assert rec.recipe["reconstruction_error"]["exact"]
    for name in original:
        torch.testing.assert_close(merged.dense(name), weight * original.dense(name), rtol=1e-6, atol=1e-7)


def test_bad_inputs_are_clear_errors_and_write_nothing(trained_copy):
    foreign = LoraDelta({n: LoraModule(m.A, m.B, m.scale) for n, m in trained_copy.load("sst2-a")[0].modules.items()})
    trained_copy.add(foreign, name="foreign", base=BaseRef("other-model", "f" * 32))
    own = trained_copy.get("sst2-a")
    first = foreign.targets[0]
    trained_copy.add(
        LoraDelta({first: foreign[first]}), name="fewer", base=BaseRef(own.base_model, own.base_fingerprint)
    )
    before = snapshot(trained_copy)
    cases = [
        (["nope-a", "sst2-a"], "unknown adapter 'nope-a'"),
        (["sst2-a", "foreign"], r"'sst2-a' and 'foreign' were trained on different base models: .*'other-model'"),
        (["sst2-a", "agnews-a", "--method", "ties", "--density", "1.5"], r"density .* must be in \(0, 1\], got 1.5"),
        (["sst2-a", "agnews-a", "--weights", "0.5,0.3,0.2"], "3 weights for 2 adapters"),
        (["--method", "ties"], "nothing to merge"),
        (["sst2-a", "agnews-a", "--method", "tie"], "Did you mean 'ties'"),
        (["sst2-a", "agnews-a", "--method", "task_arithmetic", "--density", "0.2"], "unknown parameter 'density'"),
        (["sst2-a", "agnews-a", "--weights", "a,b"], "expected comma-separated numbers"),
        (["sst2-a", "sst2-a"], "given twice"),
        (["sst2-a", "fewer"], r"adapters 0 and 1 target different modules"),
        (["sst2-a", "agnews-a", "--method", "atlas"], "learns from data"),
    ]
    for args, message in cases:
        result = run("merge", *args, "--library", trained_copy.root, "--out", "bad", ok=False)
        assert result.exit_code == 2, (args, result.output)
        assert said(result, message), (args, result.output)
        assert snapshot(trained_copy) == before, args
    exists = run("merge", "sst2-a", "--library", trained_copy.root, "--out", "agnews-a", ok=False)
    assert exists.exit_code == 2 and said(exists, "already exists") and snapshot(trained_copy) == before


def test_recipe_yaml_validation_and_run(trained_copy, tmp_path):
    def write(recipe: dict) -> Path:
        path = tmp_path / "merge.yaml"
        path.write_text(yaml.safe_dump(recipe))
        return path

    good = {
        "method": "dare_ties",
        "adapters": ["sst2-a", "agnews-a"],
        "params": {"density": 0.5, "seed": 3},
        "out": "from-recipe",
    }
    for bad, message in [
        ({**good, "densty": 0.2}, "unknown key 'densty'"),
        ({**good, "params": {"densty": 0.2}}, "key 'params': merge method 'dare_ties': unknown parameter 'densty'"),
        ({**good, "library": "x"}, "key 'library' is a runtime option"),
        ({k: v for k, v in good.items() if k != "method"}, "missing key 'method'"),
        ({**good, "adapters": []}, "key 'adapters': nothing to merge"),
        ({**good, "adapters": "sst2-a"}, "key 'adapters' must be a list"),
        ({**good, "out": "a/b"}, "key 'out'"),
    ]:
        result = run("merge", "--recipe", write(bad), "--library", trained_copy.root, ok=False)
        assert result.exit_code == 2 and said(result, re.escape(message.replace(" ", ""))), (bad, result.output)
    mixed = run("merge", "sst2-a", "--recipe", write(good), "--library", trained_copy.root, ok=False)
    assert mixed.exit_code == 2 and said(mixed, re.escape("dropNAME..."))
    assert trained_copy.list() and not trained_copy.exists("from-recipe")

    run("merge", "--recipe", write(good), "--library", trained_copy.root)
    rec = trained_copy.get("from-recipe")
    assert rec.method == "dare_ties" and rec.params["seed"] == 3 and rec.params["majority_sign"] == "total"
    assert rec.recipe["adapters"] == ["sst2-a", "agnews-a"] and rec.recipe["params"] == rec.params
    # The same recipe through flags gives the same tensors (seeded DARE).
    run(
        "merge",
        "sst2-a",
        "agnews-a",
        "--method",
        "dare_ties",
        "--density",
        "0.5",
        "--seed",
        "3",
        "--library",
        trained_copy.root,
        "--out",
        "from-flags",
    )
    a, b = trained_copy.load("from-recipe")[0], trained_copy.load("from-flags")[0]
    for name in a:
        assert torch.equal(a.dense(name), b.dense(name))


def test_eval_prints_normalized_accuracy_and_records_it(trained_copy, trained_library):
    dirs = trained_library[1]
    out = json.loads(
        run(
            "merge",
            "sst2-a",
            "subjectivity-a",
            "--method",
            "task_arithmetic",
            "--scaling",
            "0.5",
            "--library",
            trained_copy.root,
            "--out",
            "ta",
            "--eval",
            dirs["sst2"],
            "--eval",
            dirs["subjectivity"],
            "--eval",
            dirs["agnews"],
            "--json",
        ).stdout
    )
    report = out["eval"]
    rows = {r["task"]: r for r in report["tasks"]}
    assert set(rows) == {"sst2", "subjectivity", "agnews"} and all(r["n"] == 24 for r in rows.values())
    assert rows["sst2"]["reference"] == "sst2-a" and rows["agnews"]["reference"] == "agnews-a"
    for r in rows.values():
        assert r["normalized_accuracy"] == pytest.approx(r["accuracy"] / r["reference_accuracy"])
    assert report["average_accuracy"] == pytest.approx(sum(r["accuracy"] for r in rows.values()) / 3)
    assert report["worst_task"] in rows
    recorded = {(m.task, m.metric) for m in trained_copy.metrics("ta")}
    assert {("sst2", "accuracy"), ("agnews", "normalized_accuracy")} <= recorded
    # The references' accuracies were evaluated once and recorded; a second eval reuses them.
    assert any(m.task == "agnews" and m.metric == "accuracy" for m in trained_copy.metrics("agnews-a"))
    table = run("merge", "sst2-a", "agnews-a", "--library", trained_copy.root, "--out", "ta2", "--eval", dirs["agnews"])
    assert said(table, "normalized") and said(table, "worst normalized: agnews")


def test_dense_out_loads_with_automodel_and_scores_like_the_lora(trained_copy, trained_library, minilm, tmp_path):
    from transformers import AutoModel

    from adaptforge.backbone import Backbone
    from adaptforge.evaluate import predict_logits
    from adaptforge.scorers import make_scorer
    from adaptforge.tasks import load_task

    dense = tmp_path / "dense"
    run(
        "merge",
        "sst2-a",
        "agnews-a",
        "--method",
        "ties",
        "--library",
        trained_copy.root,
        "--out",
        "d",
        "--dense-out",
        dense,
    )
    assert (dense / "config.json").is_file() and (dense / "merge_recipe.yaml").is_file()
    assert isinstance(AutoModel.from_pretrained(dense), torch.nn.Module)
    task = load_task(trained_library[1]["sst2"])
    delta, _ = trained_copy.load("d")
    scorer = make_scorer(minilm)
    with minilm.applied(delta) as model:
        lora_logits, _ = predict_logits(scorer, task, "test", model)
    dense_backbone = Backbone.load(str(dense))
    dense_logits, _ = predict_logits(make_scorer(dense_backbone), task, "test")
    torch.testing.assert_close(dense_logits, lora_logits, rtol=1e-4, atol=1e-4)
    taken = run("merge", "sst2-a", "--library", trained_copy.root, "--out", "d2", "--dense-out", dense, ok=False)
    assert taken.exit_code == 2 and said(taken, "not an empty folder") and not trained_copy.exists("d2")


def test_data_driven_methods_through_the_cli(trained_copy, trained_library):
    dirs = trained_library[1]
    out = json.loads(
        run(
            "merge",
            "sst2-a",
            "agnews-a",
            "--method",
            "atlas",
            "--data",
            dirs["sst2"],
            "--data",
            dirs["agnews"],
            "--param",
            "steps=1",
            "--param",
            "examples_per_task=8",
            "--library",
            trained_copy.root,
            "--out",
            "at",
            "--json",
        ).stdout
    )
    rec = trained_copy.get("at")
    assert rec.method == "atlas" and rec.params["steps"] == 1 and out["reconstruction_error"] is None
    assert [d["name"] for d in rec.recipe["data"]] == ["sst2", "agnews"] and "coefficients" in rec.recipe["info"]
    routed = json.loads(
        run(
            "merge",
            "sst2-a",
            "agnews-a",
            "--method",
            "dawin",
            "--data",
            dirs["sst2"],
            "--param",
            "examples_per_task=4",
            "--library",
            trained_copy.root,
            "--out",
            "dw",
            "--eval",
            dirs["agnews"],
            "--limit",
            "8",
            "--json",
        ).stdout
    )
    assert (
        routed["routed"]
        and routed["eval"]["tasks"][0]["routed"]
        and trained_copy.get("dw").recipe["router"]["router"] == ("entropy")
    )
    assert {m.metric for m in trained_copy.metrics("dw")} >= {"routed_accuracy", "routed_normalized_accuracy"}
    # One adapter, one number: `adaptforge eval` of the stored DaWin adapter rebuilds its router from the
    # recipe and scores exactly what `merge --eval` scored, not the static fallback tensors stored for it.
    again = json.loads(
        run("eval", dirs["agnews"], "--library", trained_copy.root, "-a", "dw", "--limit", "8", "--json").stdout
    )
    assert again["results"][0]["accuracy"] == routed["eval"]["tasks"][0]["accuracy"]
    losses = {m.metric: m.value for m in trained_copy.metrics("dw") if m.metric in ("routed_loss", "loss")}
    assert losses["loss"] == pytest.approx(losses["routed_loss"], rel=1e-6)  # accuracy on 8 inputs could tie
    run(
        "merge",
        "sst2-a",
        "--method",
        "base_interp",
        "--data",
        dirs["sst2"],
        "--retain",
        dirs["subjectivity"],
        "--param",
        "grid=[0.5]",
        "--param",
        "examples_per_task=8",
        "--library",
        trained_copy.root,
        "--out",
        "bi",
    )
    rec = trained_copy.get("bi")
    assert rec.params["retention"] == ["subjectivity"] and rec.recipe["info"]["alpha"] in (0.0, 0.5)
    missing = run("merge", "sst2-a", "--method", "atlas", "--library", trained_copy.root, "--out", "x", ok=False)
    assert missing.exit_code == 2 and said(missing, "learns from data") and not trained_copy.exists("x")


def test_demo_merge_step_prints_its_table(trained_copy, trained_library, minilm):
    from rich.console import Console

    from adaptforge.cli.demo import RichView
    from adaptforge.pipelines.demo import DEMO_MERGES, demo_merge_step
    from adaptforge.tasks import load_task

    tasks = [load_task(trained_library[1][name]) for name in TASKS]
    console = Console(record=True, width=200)
    rows = demo_merge_step(tasks, minilm, trained_copy, RichView(console), adapters=[f"{n}-a" for n in TASKS])
    assert [r["method"] for r in rows] == [m for m, _ in DEMO_MERGES]
    for row in rows:
        assert trained_copy.get(row["adapter"]).method == row["method"] and len(row["tasks"]) == 3
        assert row["average_normalized_accuracy"] is not None
    assert "avg norm" in console.export_text()


def test_a_lossy_refactoring_is_reported_with_its_unit_and_a_warning(trained_copy):
    """TIES to rank 1 loses much of each delta: the summary names the unit and the warning says what to do."""
    got = run(
        "merge",
        "sst2-a",
        "subjectivity-a",
        "--method",
        "ties",
        "--rank",
        "1",
        "--library",
        trained_copy.root,
        "--out",
        "r1",
    )
    err = trained_copy.get("r1").recipe["reconstruction_error"]
    assert err["max"] > 0.1
    assert "SVD re-factoring error (relative Frobenius norm) max" in got.output
    assert "warning: re-factoring to rank 1 loses up to" in got.output and "--dense-out" in got.output
    exact = run("merge", "sst2-a", "subjectivity-a", "--library", trained_copy.root, "--out", "exact")
    assert "exact (rank concatenation)" in exact.output and "warning" not in exact.output


def test_dense_out_on_a_pruned_base_keeps_its_zeros_unless_asked(tiny_llama, tmp_path):
    """Folding an adapter into a Wanda/magnitude-pruned base: the zeros stay zero by default, and the report
    says how much sparsity a plain W + dW would have lost (a dense dW fills nearly every zero)."""
    from helpers import random_delta

    from adaptforge.adapters import write_adapter
    from adaptforge.backbone import Backbone
    from adaptforge.layers import weight_view
    from adaptforge.pipelines.prune import prune_model

    pruned_dir = tmp_path / "pruned"
    prune_model("magnitude", small_task("sst2", n_train=8, n_test=8), pruned_dir, backbone=tiny_llama, limit=4)
    pruned = Backbone.load(str(pruned_dir))
    shapes = {
        f"model.layers.{i}.self_attn.{m}": tuple(
            pruned.model.get_submodule(f"model.layers.{i}.self_attn.{m}").weight.shape
        )
        for i in range(2)
        for m in ("q_proj", "k_proj", "v_proj", "o_proj")
    }
    lib = tmp_path / "lib"
    for name, seed in (("a", 0), ("b", 1)):
        write_adapter(random_delta(shapes, rank=2, std=0.1, seed=seed), tmp_path / name, str(pruned_dir))
        run("library", "import", tmp_path / name, "--library", lib, "--name", name, "--model", pruned_dir)
    merge = ["merge", "a", "b", "--library", lib, "--model", pruned_dir, "--json"]
    kept = run(*merge, "--out", "m", "--dense-out", tmp_path / "kept")
    plain = run(*merge, "--out", "p", "--dense-out", tmp_path / "plain", "--no-keep-mask")
    report = json.loads(kept.stdout)["dense_mask"]
    assert report["layers"] == 8 and report["kept"] is True
    assert report["base_sparsity"] == pytest.approx(0.5, abs=0.01) and report["sparsity"] == report["base_sparsity"]
    assert report["plain_sparsity"] < 0.01
    said = " ".join(kept.output.split())
    assert (
        f"kept the pruned base's zeros in 8 adapted layers: sparsity {report['sparsity']:.3f} "
        f"(plain merging would have left {report['plain_sparsity']:.3f}; --no-keep-mask to merge plainly)"
    ) in said
    plain_report = json.loads(plain.stdout)["dense_mask"]
    assert plain_report["kept"] is False and plain_report["sparsity"] == report["plain_sparsity"]
    merged = Backbone.load(str(tmp_path / "kept"))
    plain_model = Backbone.load(str(tmp_path / "plain"))
    for name in shapes:
        base = weight_view(pruned.model.get_submodule(name))
        ours = weight_view(merged.model.get_submodule(name))
        assert torch.equal(ours == 0, base == 0), name  # exactly the base's zeros, no more, no fewer
        other = weight_view(plain_model.model.get_submodule(name))
        torch.testing.assert_close(ours, other * (base != 0), rtol=0, atol=0)  # elsewhere the same W + dW
    assert yaml.safe_load((tmp_path / "kept" / "merge_recipe.yaml").read_text())["dense_mask"] == report
