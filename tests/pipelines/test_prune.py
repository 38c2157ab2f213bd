"""``adaptforge prune`` end to end: a loadable pruned folder with its record, dense vs pruned zero-shot,
FFN neurons removed for real (a smaller model), and bad requests refused before anything is written."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import run_cli, small_task

from adaptforge.backbone import Backbone
from adaptforge.core import AdaptforgeError
from adaptforge.pipelines.prune import prune_model
from adaptforge.prune import RECORD_FILE, prunable_layers, read_record
from adaptforge.tasks import write_task


@pytest.fixture(scope="module")
def task_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("prune-tasks")
    return {name: write_task(small_task(name, n_train=32, n_test=24), root / name) for name in ("sst2", "agnews")}


def test_wanda_through_the_cli_writes_a_loadable_sparse_model_with_its_record(minilm, task_dirs, tmp_path):
    out = tmp_path / "pruned"
    args = [
        "prune",
        "--method",
        "wanda",
        "--sparsity",
        "0.5",
        "--domain",
        task_dirs["sst2"],
        "--eval",
        task_dirs["agnews"],
    ]
    got = json.loads(run_cli(*args, "--calibration-size", "16", "--limit", "16", "--out", out, "--json").stdout)
    assert got["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert set(got["eval"]) == {"sst2", "agnews"} and all(v["retention"] is not None for v in got["eval"].values())
    pruned = Backbone.load(str(out))
    assert pruned.fingerprint != minilm.fingerprint
    for name, layer in prunable_layers(pruned).items():
        zeros = (layer.weight == 0).float().mean(dim=1)  # Wanda: half of every output row
        assert torch.allclose(zeros, torch.full_like(zeros, 0.5)), name
    dense = dict(minilm.model.named_parameters())
    for name, p in pruned.model.named_parameters():  # embeddings and layer norms untouched
        if "embeddings" in name or "LayerNorm" in name:
            assert torch.equal(p, dense[name]), name
    record = read_record(out)
    assert record is not None and record.prune_method == "wanda" and record.parent_fingerprint == minilm.fingerprint
    assert record.fingerprint == pruned.fingerprint and record.calibration["domain"]["n"] == 16
    assert not list(tmp_path.glob(".tmp-*"))


def test_ffn_pattern_makes_a_smaller_model_transformers_loads(tiny_llama, tmp_path):
    from transformers import AutoModelForCausalLM

    before = {k: v.clone() for k, v in tiny_llama.model.state_dict().items()}
    outcome = prune_model(
        "magnitude",
        small_task("sst2", n_train=16, n_test=8),
        tmp_path / "ffn",
        params={"pattern": "ffn", "sparsity": 0.5},
        backbone=tiny_llama,
        limit=8,
    )
    assert all(torch.equal(v, tiny_llama.model.state_dict()[k]) for k, v in before.items())  # caller's model intact
    small = AutoModelForCausalLM.from_pretrained(tmp_path / "ffn")
    assert small.config.intermediate_size == 64 and outcome.record.intermediate_size == 64
    assert small.model.layers[0].mlp.down_proj.weight.shape == (64, 64)
    dense_params, pruned_params = outcome.parameters
    assert pruned_params == sum(p.numel() for p in small.parameters()) < dense_params
    assert dense_params - pruned_params == 2 * 3 * 64 * 64  # 2 blocks x (gate, up, down) x 64 neurons x hidden 64
    logits = small(torch.tensor([[1, 2, 3, 4]])).logits
    assert torch.isfinite(logits).all()
    assert set(outcome.evals["sst2"]) == {"dense", "pruned"}


def test_ffn_keeps_the_neurons_with_the_largest_weights(tiny_llama, tmp_path):
    outcome = prune_model(
        "magnitude",
        small_task("sst2", n_train=8, n_test=8),
        tmp_path / "ffn",
        params={"pattern": "ffn", "sparsity": 0.25},
        backbone=tiny_llama,
        limit=8,
    )
    mlp = tiny_llama.model.model.layers[1].mlp
    score = sum(m.weight.abs().sum(dim=1) for m in (mlp.gate_proj, mlp.up_proj)) + mlp.down_proj.weight.abs().sum(0)
    kept = torch.sort(score.topk(96).indices).values
    small = Backbone.load(str(outcome.path)).model.model.layers[1].mlp
    assert torch.equal(small.up_proj.weight, mlp.up_proj.weight[kept])
    assert torch.equal(small.down_proj.weight, mlp.down_proj.weight[:, kept])


@pytest.mark.parametrize(
    ("method", "params", "message"),
    [
        ("sparsegpt", {"pattern": "ffn"}, "supports --pattern unstructured, 2:4, 4:8"),
        ("magnitude", {"pattern": "ffn", "sparsity": [0.5, 0.2]}, "one --sparsity value"),
        ("magnitude", {"sparsity": [0.5, 0.2, 0.1]}, "3 values for 2 transformer blocks"),
        ("wanda", {"sparsity": 1.5}, r"'sparsity' must be in \[0, 1\)"),
    ],
)
def test_bad_requests_are_refused_and_nothing_is_written(tiny_llama, tmp_path, method, params, message):
    with pytest.raises(AdaptforgeError, match=message):
        prune_model(
            method, small_task("sst2", n_train=8, n_test=8), tmp_path / "out", params=params, backbone=tiny_llama
        )
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".tmp-*"))


def test_an_existing_output_folder_is_never_overwritten(tiny_llama, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(AdaptforgeError, match="exists and is not an empty folder"):
        prune_model("magnitude", small_task("sst2", n_train=8, n_test=8), out, backbone=tiny_llama)
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and not (out / RECORD_FILE).exists()


def test_an_output_inside_a_library_is_refused_through_the_cli(tiny_llama_dir, tmp_path):
    """verify and gc never look at a model folder under LIB/adapters: prune refuses to write one there."""
    from helpers import snapshot

    from adaptforge.library import Library

    lib = Library(tmp_path / "lib")
    before = snapshot(lib.root)
    task = write_task(small_task("sst2", n_train=8, n_test=8), tmp_path / "sst2")
    args = ["prune", "--method", "magnitude", "--sparsity", "0.5", "--domain", task, "--model", tiny_llama_dir]
    refused = run_cli(*args, "--out", lib.root / "adapters" / "pruned", ok=False)
    assert refused.exit_code == 2
    assert f"is inside the adapter library {lib.root.resolve()}" in " ".join(refused.output.split())
    assert snapshot(lib.root) == before and not (lib.root / "adapters" / "pruned").exists()


def test_a_causal_lm_reports_held_out_perplexity_before_and_after(tiny_llama, tiny_llama_dir, task_dirs, tmp_path):
    """General = the shipped open-domain texts calibration did not read; domain = the evaluated split."""
    from adaptforge.evaluate import perplexity
    from adaptforge.prune.calibration import CalibrationText, shipped_general_path
    from adaptforge.tasks import load_task, read_texts

    out = tmp_path / "pruned"
    args = ["prune", "--method", "wanda", "--sparsity", "0.5", "--domain", task_dirs["sst2"], "--model", tiny_llama_dir]
    got = json.loads(run_cli(*args, "--calibration-size", "16", "--limit", "8", "--out", out, "--json").stdout)
    ppl = got["perplexity"]
    assert set(ppl) == {"general", "domain"}
    assert ppl["domain"]["source"] == "task sst2 (dev, n=8)" and ppl["general"]["n"] == 8
    pruned = Backbone.load(str(out))
    general = read_texts(shipped_general_path())[:: 256 // 8][:8]  # wanda calibrates on domain text only
    assert ppl["general"]["sha256"] == CalibrationText(tuple(general), "").sha256
    domain = [e.text for e in load_task(task_dirs["sst2"]).sample("dev", 8, seed=0)]
    for key, texts in (("general", general), ("domain", domain)):
        dense_value = perplexity(tiny_llama.model, tiny_llama.tokenizer, texts).value
        pruned_value = perplexity(pruned.model, pruned.tokenizer, texts).value
        assert ppl[key]["dense"]["value"] == pytest.approx(dense_value, rel=1e-6), key
        assert ppl[key]["pruned"]["value"] == pytest.approx(pruned_value, rel=1e-6), key
        assert ppl[key]["ratio"] == pytest.approx(pruned_value / dense_value, rel=1e-6)
        assert ppl[key]["pruned"]["value"] != ppl[key]["dense"]["value"]
    shown = " ".join(
        run_cli(*args, "--calibration-size", "16", "--limit", "8", "--out", tmp_path / "again").stdout.split()
    )
    assert (
        f"general perplexity {ppl['general']['dense']['value']:.2f} -> {ppl['general']['pruned']['value']:.2f}" in shown
    )


def test_an_encoder_prune_reports_no_perplexity(minilm, task_dirs, tmp_path):
    outcome = prune_model(
        "magnitude", small_task("sst2", n_train=8, n_test=8), tmp_path / "p", backbone=minilm, limit=4
    )
    assert outcome.perplexity == {} and outcome.to_json()["perplexity"] == {}


def test_held_out_general_text_never_holds_a_calibration_text():
    from adaptforge.prune.calibration import held_out_general, read_general

    used = read_general([], 128, 0)
    held = held_out_general(used, 64)
    assert held is not None and len(held.texts) == 64 and not set(held.texts) & set(used.texts)
    assert held_out_general(read_general([], 256, 0), 64) is None  # calibration read all of it
