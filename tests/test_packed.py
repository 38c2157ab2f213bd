"""The packed form of a pruned model (issue 15, ``prune --compact``): smaller, and it loads back exactly."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from helpers import run_cli, small_task

from adaptforge.backbone import Backbone
from adaptforge.core import AdaptforgeError
from adaptforge.packed import PACKED_FILE, pack, packed_only, read_packed, unpack
from adaptforge.tasks import write_task


def test_pack_round_trip_is_exact_for_every_pattern_and_keeps_aliases():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(8, 16, generator=gen)
    two_four = w * (torch.arange(16) % 4 < 2)  # 2:4, with -0.0 where w < 0 (what pruning by a mask leaves)
    unstructured = w * (torch.rand(8, 16, generator=gen) < 0.5)
    dense = torch.randn(8, 16, generator=gen)
    shared = torch.randn(4, 4, generator=gen)
    state = {"a": two_four, "b": unstructured, "dense": dense, "norm": torch.ones(16), "tied1": shared, "tied2": shared}
    tensors, metadata = pack(state)
    assert set(tensors) == {
        "a@values",
        "a@mask",
        "a@negzero",
        "b@values",
        "b@mask",
        "b@negzero",
        "dense",
        "norm",
        "tied1",
    }
    assert tensors["a@values"].numel() == 64 and tensors["a@mask"].dtype == torch.uint8
    back = unpack(tensors, metadata)
    assert set(back) == set(state) and all(torch.equal(back[k], state[k]) for k in state)
    assert all(torch.equal(torch.signbit(back[k]), torch.signbit(state[k])) for k in state)  # -0.0 stays -0.0
    assert json.loads(metadata["adaptforge_packed"])["aliases"] == {"tied2": "tied1"}
    with pytest.raises(AdaptforgeError, match="where: not a packed model"):
        unpack(tensors, {"format": "pt"}, "where")


def test_prune_compact_writes_a_smaller_file_that_loads_back_exactly(tiny_llama, tiny_llama_dir, tmp_path):
    domain = write_task(small_task("sst2", n_train=16, n_test=8), tmp_path / "sst2")
    out = tmp_path / "pruned"
    args = ["prune", "--method", "magnitude", "--sparsity", "0.5", "--domain", domain, "--model", tiny_llama_dir]
    got = json.loads(run_cli(*args, "--limit", "4", "--out", out, "--compact", "--json").stdout)
    sizes = got["file_bytes"]
    assert sizes["packed"] == (out / PACKED_FILE).stat().st_size < sizes["pruned"]
    hf = Backbone.load(str(out))  # the Hugging Face weights, as before
    alone = tmp_path / "packed-only"
    shutil.copytree(out, alone, ignore=shutil.ignore_patterns("model.safetensors"))
    assert packed_only(alone) and not packed_only(out)
    packed = Backbone.load(str(alone))
    assert packed.fingerprint == hf.fingerprint
    hf_state, packed_state = hf.model.state_dict(), packed.model.state_dict()
    assert set(hf_state) == set(packed_state) and all(torch.equal(hf_state[k], packed_state[k]) for k in hf_state)
    assert set(read_packed(alone)) == set(hf_state)
    # the blocks' projections are what was packed: 50% values + a bitmask of 1/32 in float32
    layer = "model.layers.0.mlp.up_proj.weight"
    assert layer in json.loads(_header(alone / PACKED_FILE))["packed"]
    shown = " ".join(run_cli(*args, "--limit", "4", "--out", tmp_path / "again", "--compact").stdout.split())
    assert f"(packed {sizes['packed'] / 1e6:.1f} MB, {sizes['packed'] / sizes['pruned']:.2f}x)" in shown


def _header(path) -> str:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.metadata()["adaptforge_packed"]
