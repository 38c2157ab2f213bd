"""Streaming ``base + dW`` into a model folder writes what ``save_pretrained`` of the adapted model writes."""

from __future__ import annotations

import pytest
import torch
from helpers import random_delta
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from adaptforge.backbone import Backbone
from adaptforge.core import AdaptforgeError
from adaptforge.dense import can_stream, write_dense_model
from adaptforge.layers import transposed_layers, weight_view


def _saved(backbone: Backbone, delta, folder, keep_zeros=()) -> dict[str, torch.Tensor]:
    with backbone.applied(delta, keep_zeros=keep_zeros) as model:
        model.save_pretrained(folder)
    return load_file(str(folder / "model.safetensors"))


@pytest.mark.parametrize("model", ["tiny_llama_dir", "tiny_gpt2_dir"])
def test_streamed_weights_equal_the_saved_adapted_model(request, tmp_path, model):
    folder = request.getfixturevalue(model)
    backbone = Backbone.load(str(folder))
    named = dict(backbone.model.named_modules())
    suffixes = ("q_proj", "down_proj") if model == "tiny_llama_dir" else ("c_attn", "mlp.c_proj")
    shapes = {n: tuple(weight_view(m).shape) for n, m in named.items() if n.endswith(suffixes)}
    delta = random_delta(shapes, rank=4, scale=2.0, seed=0, std=0.1)
    assert can_stream(folder, delta, torch.float32)
    transposed = transposed_layers(backbone.model, list(delta))
    assert bool(transposed) == (model == "tiny_gpt2_dir")
    (tmp_path / "streamed").mkdir()
    zeros = [sorted(delta)[0]]
    with torch.no_grad():  # a pruned-looking weight: some zeros in one adapted module
        weight_view(named[zeros[0]])[:, ::3] = 0
        backbone.model.save_pretrained(tmp_path / "base")
    write_dense_model(tmp_path / "base", delta, tmp_path / "streamed", transposed, keep_zeros=zeros)
    ours = load_file(str(tmp_path / "streamed" / "model.safetensors"))
    theirs = _saved(backbone, delta, tmp_path / "saved", keep_zeros=zeros)
    assert set(theirs) <= set(ours)
    changed = 0
    for key, tensor in theirs.items():
        assert torch.equal(ours[key], tensor), key
        changed += int(key.removesuffix(".weight") in delta)
    assert changed == len(delta)
    assert (tmp_path / "streamed" / "config.json").is_file()
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "streamed")  # the folder loads as a model
    assert (weight_view(dict(reloaded.named_modules())[zeros[0]])[:, ::3] == 0).all()  # the zeros kept


def test_a_module_without_a_stored_weight_is_refused(tiny_llama_dir, tmp_path):
    delta = random_delta({"model.layers.0.self_attn.nope": (64, 64)}, rank=2)
    assert not can_stream(tiny_llama_dir, delta, torch.float32)
    assert not can_stream(tiny_llama_dir, random_delta({"model.layers.0.self_attn.q_proj": (64, 64)}), torch.float16)
    with pytest.raises(AdaptforgeError, match="no weight for 1 adapted modules"):
        write_dense_model(tiny_llama_dir, delta, tmp_path)
