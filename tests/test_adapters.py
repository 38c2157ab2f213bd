"""PEFT interoperability: our files load in PEFT with the same scores, PEFT's files import into ours."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from helpers import random_delta, small_task
from peft import LoraConfig, PeftModel, get_peft_model

from adaptforge.adapters import AdapterFormatError, IncompatibleAdapterError, read_adapter, write_adapter
from adaptforge.core import LoraDelta, LoraModule
from adaptforge.evaluate import predict_logits
from adaptforge.library import BaseMismatchError, BaseRef, Library
from adaptforge.pipelines.importing import import_peft_folder
from adaptforge.scorers import make_scorer
from adaptforge.train.config import TrainConfig
from adaptforge.train.trainer import train


def mixed_delta(seed: int = 0) -> LoraDelta:
    """Three modules with two ranks and two scales, so PEFT's rank and alpha patterns are exercised."""
    shapes = {"layer.0.q": (8, 16), "layer.1.q": (8, 16), "layer.10.v": (8, 16)}
    return random_delta(
        shapes,
        rank={"layer.0.q": 4, "layer.1.q": 2, "layer.10.v": 4},
        scale={"layer.0.q": 2.0, "layer.1.q": 0.75, "layer.10.v": 2.0},
        seed=seed,
    )


def test_write_read_round_trip_keeps_ranks_and_scales(tmp_path):
    delta = mixed_delta()
    write_adapter(delta, tmp_path, base_model="base")
    back, config = read_adapter(tmp_path)
    assert back.targets == delta.targets and config["base_model_name_or_path"] == "base"
    for name in delta:
        assert torch.equal(back[name].A, delta[name].A) and torch.equal(back[name].B, delta[name].B)
        assert back[name].scale == pytest.approx(delta[name].scale, rel=1e-12)


def test_reader_rejects_what_it_cannot_read_exactly(tmp_path):
    write_adapter(mixed_delta(), tmp_path, base_model="base")
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    (tmp_path / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(AdapterFormatError, match="use_dora"):
        read_adapter(tmp_path)
    (tmp_path / "adapter_config.json").write_text("{\n  oops")
    with pytest.raises(AdapterFormatError, match=r"adapter_config.json: line 2"):
        read_adapter(tmp_path)


def _same_logits(scorer, task, ours_delta, peft_model) -> None:
    with scorer.backbone.applied(ours_delta) as model:
        ours, gold = predict_logits(scorer, task, "test", model)
    theirs, gold2 = predict_logits(scorer, task, "test", peft_model)
    assert torch.equal(gold, gold2)
    torch.testing.assert_close(ours, theirs, atol=2e-4, rtol=1e-4)
    assert not torch.allclose(ours, predict_logits(scorer, task, "test")[0], atol=1e-3)  # the adapter matters


def test_peft_loads_an_adaptforge_adapter_with_the_same_scores(minilm, tmp_path):
    task = small_task("agnews", n_train=48, n_test=24)
    result = train(task, minilm, TrainConfig(epochs=1, batch_size=16, rank=4, lr=3e-3))
    lib = Library(tmp_path / "lib")
    lib.add(result.delta, name="ag", base=minilm)
    folder = lib.export("ag", tmp_path / "exported")
    peft_model = PeftModel.from_pretrained(copy.deepcopy(minilm.model), str(folder))
    wrapped = {n for n, m in peft_model.named_modules() if hasattr(m, "lora_A")}
    assert {n.removeprefix("base_model.model.") for n in wrapped} == set(result.delta.targets)
    delta, _ = lib.load("ag", expected_fingerprint=minilm.fingerprint)
    _same_logits(make_scorer(minilm), task, delta, peft_model.eval())


def test_a_peft_made_adapter_imports_and_scores_the_same(minilm, tmp_path):
    task = small_task("sst2", n_train=8, n_test=24)
    config = LoraConfig(
        r=4,
        lora_alpha=12,
        use_rslora=True,
        target_modules=["query", "value"],
        rank_pattern={"layer.0.attention.self.query": 2},
        alpha_pattern={"value": 3.0},
    )
    torch.manual_seed(1)
    peft_model = get_peft_model(copy.deepcopy(minilm.model), config)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    peft_model.save_pretrained(tmp_path / "peft")
    lib = Library(tmp_path / "lib")
    rec = import_peft_folder(tmp_path / "peft", minilm, lib, "imported", task=task)
    assert rec.method == "import" and rec.embedding is not None
    delta, _ = lib.load("imported", expected_fingerprint=minilm.fingerprint)
    assert delta["encoder.layer.0.attention.self.query"].rank == 2
    assert delta["encoder.layer.3.attention.self.value"].scale == pytest.approx(3.0 / 2.0)  # rsLoRA: alpha/sqrt(r)
    _same_logits(make_scorer(minilm), task, delta, peft_model.eval())


def test_adapter_for_another_base_is_refused(minilm, tiny_llama, tmp_path):
    task = small_task("sst2", n_train=16, n_test=8)
    result = train(task, tiny_llama, TrainConfig(epochs=1, batch_size=8))
    with (
        pytest.raises(IncompatibleAdapterError, match="does not exist in the base model"),
        minilm.applied(result.delta),
    ):
        pass
    write_adapter(result.delta, tmp_path / "llama-adapter", base_model=tiny_llama.path)
    with pytest.raises(IncompatibleAdapterError, match=r"target module .model\.layers\.0\."):
        import_peft_folder(tmp_path / "llama-adapter", minilm, Library(tmp_path / "lib"), "x")
    lib = Library(tmp_path / "lib")
    assert not lib.exists("x")
    lib.add(result.delta, name="llama", base=BaseRef(tiny_llama.path, tiny_llama.fingerprint))
    with pytest.raises(BaseMismatchError, match=tiny_llama.fingerprint):
        lib.load("llama", expected_fingerprint=minilm.fingerprint)


def test_shape_mismatch_names_the_module(minilm):
    name = "encoder.layer.0.attention.self.query"
    bad = LoraDelta({name: LoraModule(torch.zeros(2, 100), torch.zeros(384, 2), 1.0)})
    with (
        pytest.raises(IncompatibleAdapterError, match=r"encoder.layer.0.attention.self.query.*\(384, 100\)"),
        minilm.applied(bad),
    ):
        pass
