"""GPT-2-style ``Conv1D`` layers (weight stored in x out) through every verb, on a tiny random GPT-2."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import random_delta, small_task, task_dir
from helpers import run_cli as run

from adaptforge.adapters import IncompatibleAdapterError, check_compatible, read_adapter
from adaptforge.backbone import Backbone
from adaptforge.core import AdaptforgeError
from adaptforge.layers import is_transposed, lora_layers, weight_view

BLOCK = "transformer.h.{}.attn.{}"


@pytest.fixture(scope="module")
def gpt2(tiny_gpt2_dir):
    return Backbone.load(str(tiny_gpt2_dir))


def test_weight_view_is_the_out_in_weight_of_either_layout():
    from transformers.pytorch_utils import Conv1D

    conv = Conv1D(nf=5, nx=3)  # in 3, out 5: weight stored (3, 5)
    x = torch.randn(2, 3)
    assert tuple(weight_view(conv).shape) == (5, 3) and is_transposed(conv)
    torch.testing.assert_close(conv(x), x @ weight_view(conv).T + conv.bias)
    with torch.no_grad():
        weight_view(conv).add_(1.0)  # a view: the write reaches the layer
    assert bool((conv.weight != 0).all())


def test_default_targets_and_delta_application_on_gpt2(gpt2):
    assert gpt2.default_targets() == ("c_attn", "attn.c_proj")
    assert {type(m).__name__ for m in lora_layers(gpt2.model).values()} == {"Conv1D", "Linear"}
    shapes = {BLOCK.format(0, "c_attn"): (192, 64), BLOCK.format(1, "c_proj"): (64, 64)}
    defaults = gpt2.target_shapes()  # (out, in) of the Conv1D layers, whose weights are stored (in, out)
    assert len(defaults) == 4 and {n: defaults[n] for n in shapes} == shapes
    delta = random_delta(shapes, rank=2, std=0.1)
    ids = torch.tensor([[5, 6, 7, 8]])
    before = gpt2.model(ids).logits
    with gpt2.applied(delta) as model:
        merged = model(ids).logits
        block = model.get_submodule(BLOCK.format(0, "c_attn"))
        x = torch.randn(1, 64)
        expected = x @ (weight_view(block) - delta.dense(BLOCK.format(0, "c_attn"))).T + block.bias
        torch.testing.assert_close(block(x) - x @ delta.dense(BLOCK.format(0, "c_attn")).T, expected)
    assert not torch.allclose(before, merged)
    torch.testing.assert_close(gpt2.model(ids).logits, before, rtol=0, atol=0)  # restored exactly
    wrong = random_delta({BLOCK.format(0, "c_attn"): (64, 192)}, rank=2)  # Linear's layout read the wrong way
    shape_error = r"has delta shape \(64, 192\) but the base weight is \(192, 64\) \(out, in\)"
    with pytest.raises(IncompatibleAdapterError, match=shape_error):
        check_compatible(wrong, gpt2.model)
    with pytest.raises(IncompatibleAdapterError, match="'transformer.wte' is a Embedding in the base model"):
        check_compatible(random_delta({"transformer.wte": (64, 600)}), gpt2.model)


def test_hooks_and_mixed_batches_match_merged_weights_on_gpt2(gpt2):
    """The forward-hook paths (LoraMixture for merge/compose/tta, the serve gather) act on a layer's input and
    output, so they need no layout; checked against the weights merged in Conv1D's storage."""
    from adaptforge.lora.hooks import LoraMixture
    from adaptforge.serve.batched import MixedLora, Resident, SlotTable, prepare

    shapes = {BLOCK.format(i, m): (192 if m == "c_attn" else 64, 64) for i in range(2) for m in ("c_attn", "c_proj")}
    delta = random_delta(shapes, rank=2, std=0.1)
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    with torch.no_grad():
        with gpt2.applied(delta) as model:
            merged = model(ids).logits
        with LoraMixture(gpt2.model, [delta], torch.ones(len(shapes), 1)):
            hooked = gpt2.model(ids).logits
        rank, factors = prepare(delta, torch.float32)
        table = SlotTable(rank, torch.float32)
        resident = Resident("d", table, table.put(factors), frozenset(delta))
        with MixedLora(gpt2.model, [resident]) as mixed:
            mixed.select([0, -1])
            rows = gpt2.model(ids).logits
        base = gpt2.model(ids).logits
    torch.testing.assert_close(hooked, merged, rtol=0, atol=1e-5)
    torch.testing.assert_close(rows[0], merged[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(rows[1], base[1], rtol=0, atol=1e-5)


def test_gpt2_train_eval_export_import_merge_through_the_cli(gpt2, tiny_gpt2_dir, tmp_path):
    from peft import AutoPeftModelForCausalLM

    lib, other = tmp_path / "lib", tmp_path / "other"
    sst2 = task_dir("sst2")
    for name, seed in (("g-a", 0), ("g-b", 1)):
        run("train", sst2, "--model", tiny_gpt2_dir, "--library", lib, "--name", name, "--seed", seed,
            "--max-train", 16, "--epochs", 1, "--batch-size", 8, "--rank", 2)  # fmt: skip
    shown = json.loads(run("library", "show", "g-a", "--library", lib, "--json").stdout)
    assert shown["recipe"]["config"]["targets"] == ["c_attn", "attn.c_proj"]
    assert shown["targets"] == [BLOCK.format(i, m) for i in range(2) for m in ("c_attn", "c_proj")]
    trained = json.loads(run("eval", sst2, "--library", lib, "-a", "g-a", "--limit", 8, "--json").stdout)

    # export: a PEFT folder that AutoPeftModel loads with fan_in_fan_out and the same logits as adaptforge's
    run("library", "export", "g-a", "--library", lib, "--out", tmp_path / "exported")
    config = json.loads((tmp_path / "exported" / "adapter_config.json").read_text())
    assert config["fan_in_fan_out"] is True and config["task_type"] == "CAUSAL_LM"
    peft_model = AutoPeftModelForCausalLM.from_pretrained(tmp_path / "exported").eval()
    delta, _ = read_adapter(tmp_path / "exported")
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with torch.no_grad(), gpt2.applied(delta) as model:
        ours = model(ids).logits
        theirs = peft_model(input_ids=ids).logits
    assert float((ours - theirs).abs().max()) < 5e-6
    assert float((ours - gpt2.model(ids).logits).abs().max()) > 1e-4  # the adapter does something

    # import: the exported folder back, evaluated the same
    run("library", "import", tmp_path / "exported", "--library", other, "--name", "again", "--task", sst2,
        "--model", tiny_gpt2_dir)  # fmt: skip
    again = json.loads(run("eval", sst2, "--library", other, "-a", "again", "--limit", 8, "--json").stdout)
    assert again["results"][0]["accuracy"] == trained["results"][0]["accuracy"]
    assert again["results"][0]["loss"] == pytest.approx(trained["results"][0]["loss"], abs=1e-6)

    # merge with a dense copy: the full model's weights are W + dW in Conv1D's (in, out) storage
    run("merge", "g-a", "g-b", "--library", lib, "--method", "task_arithmetic", "--out", "g-ab",
        "--dense-out", tmp_path / "dense")  # fmt: skip
    from transformers import AutoModelForCausalLM

    dense = AutoModelForCausalLM.from_pretrained(tmp_path / "dense").eval()
    merged, _ = read_adapter(next(p for p in (lib / "adapters").iterdir() if _named(p, "g-ab")))
    with torch.no_grad(), gpt2.applied(merged) as model:
        torch.testing.assert_close(dense(ids).logits, model(ids).logits, rtol=0, atol=1e-5)
    name = BLOCK.format(1, "c_attn")
    expected = gpt2.model.get_submodule(name).weight + merged.dense(name).T
    torch.testing.assert_close(dense.get_submodule(name).weight, expected, rtol=0, atol=1e-6)


def test_prune_reads_conv1d_weights_as_out_in_rows(gpt2, tmp_path):
    """Wanda compares weights within output rows, N:M groups run along the inputs, D-Pruner's gradients are
    transposed to (out, in): on Conv1D the same as on nn.Linear. FFN surgery builds nn.Linear: refused."""
    from adaptforge.pipelines.prune import prune_model
    from adaptforge.prune import prunable_layers

    task = small_task("sst2", n_train=8, n_test=4)
    layers = prunable_layers(gpt2)
    assert len(layers) == 8 and all(is_transposed(m) for m in layers.values())
    runs = {"wanda": {"sparsity": 0.5}, "sparsegpt": {"pattern": "2:4", "sparsity": 0.5}, "dpruner": {"sparsity": 0.5}}
    for method, params in runs.items():
        outcome = prune_model(
            method, task, tmp_path / method, params={**params, "calibration_size": 8}, backbone=gpt2, limit=4
        )
        assert outcome.report.sparsity == pytest.approx(0.5, abs=0.01), method
        assert {r.name: r.shape for r in outcome.report.layers}[BLOCK.format(0, "c_attn")] == (192, 64)
        pruned = Backbone.load(str(tmp_path / method))
        for name in layers:
            w = weight_view(pruned.model.get_submodule(name))
            if method == "sparsegpt":  # 2 zeros in every 4 consecutive inputs of each output row
                assert bool(((w.reshape(w.shape[0], -1, 4) == 0).sum(-1) == 2).all()), name
            elif method == "wanda":
                assert bool(((w == 0).sum(1) == w.shape[1] // 2).all()), name
    with pytest.raises(AdaptforgeError, match=r"--pattern ffn supports nn.Linear layers only; .* 8 Conv1D \(GPT-2"):
        prune_model("magnitude", task, tmp_path / "ffn", params={"pattern": "ffn"}, backbone=gpt2, limit=4)
    assert not (tmp_path / "ffn").exists()


def _named(folder, name: str) -> bool:
    record = folder / "adaptforge.json"
    return record.is_file() and json.loads(record.read_text()).get("name") == name
