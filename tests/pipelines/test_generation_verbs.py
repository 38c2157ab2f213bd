"""The verbs on a generation task with a tiny random LLaMA: train (SFT), eval --json, predict (task and prompt
file), plain merges of LLM adapters, and the one-line refusals that come before the base model loads and write
nothing."""

from __future__ import annotations

import json

import pytest
from helpers import reverse_task, run_cli, snapshot

from adaptforge.library import BaseRef


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_llama_dir):
    from adaptforge.tasks import write_task

    root = tmp_path_factory.mktemp("gen")
    folder = write_task(reverse_task(n_train=16, n_test=4), root / "reverse2")
    lib = root / "lib"
    common = ("--model", tiny_llama_dir, "--max-length", "64", "--batch-size", "8", "--rank", "4")
    run_cli("train", folder, "--library", lib, "--name", "rev", "--epochs", "1", *common)
    run_cli("train", folder, "--library", lib, "--name", "rev-b", "--epochs", "1", "--seed", "1", *common)
    return folder, lib, tiny_llama_dir


def test_eval_json_rows_carry_generation_metrics(trained):
    folder, lib, model = trained
    result = run_cli("eval", folder, "--library", lib, "-a", "rev", "--zero-shot", "--json", "--max-new-tokens", "4")
    rows = json.loads(result.stdout)["results"]
    assert [r["adapter"] for r in rows] == [None, "rev"]
    for row in rows:
        assert set(row) == {"task", "adapter", "split", "n", "exact_match", "rouge_l", "loss"} and row["n"] == 4


def test_predict_answers_a_task_and_a_prompt_file(trained, tmp_path):
    folder, lib, model = trained
    lines = run_cli("predict", folder, "--library", lib, "-a", "rev", "--max-new-tokens", "3").stdout.splitlines()
    rows = [json.loads(x) for x in lines if x.startswith("{")]
    assert len(rows) == 4 and all(set(r) == {"prompt", "output", "gold"} for r in rows)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "good film"}\n{"prompt": "bad plot"}\n')
    out = tmp_path / "answers.jsonl"
    run_cli("predict", prompts, "--library", lib, "-a", "rev", "--max-new-tokens", "3", "--out", out)
    answers = [json.loads(x) for x in out.read_text().splitlines()]
    assert [a["prompt"] for a in answers] == ["good film", "bad plot"] and all(
        set(a) == {"prompt", "output"} for a in answers
    )


@pytest.mark.parametrize("tokens", ["0", "-1", "512"])
def test_bad_max_new_tokens_is_one_line_and_writes_nothing(trained, tmp_path, tokens):
    folder, lib, model = trained
    out = tmp_path / "o.jsonl"
    result = run_cli(
        "predict", folder, "--library", lib, "-a", "rev", "--max-new-tokens", tokens, "--out", out, ok=False
    )
    assert result.exit_code != 0 and "--max-new-tokens" in result.output and not out.exists()


def test_classification_only_method_on_generation_task_writes_nothing(trained):
    folder, lib, model = trained
    before = snapshot(lib)
    result = run_cli("tta", folder, "--library", lib, "-a", "rev", "--method", "tent", ok=False)
    assert result.exit_code != 0 and "generation task" in result.output
    assert snapshot(lib) == before


REFUSALS = {
    "merge --data": ("merge", "rev", "rev-b", "-l", "{lib}", "--method", "atlas", "--data", "{task}", "--out", "m"),
    "merge --eval": ("merge", "rev", "rev-b", "-l", "{lib}", "--eval", "{task}", "--out", "m"),
    "prune --domain": ("prune", "--method", "wanda", "--sparsity", "0.5", "--domain", "{task}", "--out", "{tmp}/p"),
    "generate --eval": ("generate", "-l", "{lib}", "-o", "g", "--description", "d", "--labels", "a,b", "--eval",
                        "{task}"),
    "generate --examples": (
        "generate", "-l", "{lib}", "-o", "g", "--description", "d", "--labels", "a,b", "--method", "icm",
        "--examples", "{task}",
    ),
}  # fmt: skip


@pytest.mark.parametrize("verb", sorted(REFUSALS))
def test_label_scoring_on_generation_task_is_refused_before_loading(trained, tmp_path, no_model_load, verb):
    folder, lib, model = trained
    args = [str(a).format(task=folder, tmp=tmp_path, lib=lib) for a in REFUSALS[verb]]
    before = snapshot(lib)
    result = run_cli(*args, "--model", model, ok=False)
    assert result.exit_code == 2, result.output + repr(result.exception)  # an AdaptforgeError, not a crash
    message = [line for line in result.output.splitlines() if line.strip()]
    assert len(message) == 1 and "generation task" in message[0] and "classification only" in message[0]
    assert snapshot(lib) == before and not (tmp_path / "p").exists()


@pytest.mark.parametrize("method", ["task_arithmetic", "ties"])
def test_plain_merges_of_llm_adapters_work_and_generate(trained, method):
    """Merging needs no data: defined for LLM adapters; the merged adapter answers the generation task."""
    folder, lib, model = trained
    run_cli("merge", "rev", "rev-b", "--library", lib, "--method", method, "--out", f"m-{method}", "--overwrite")
    result = run_cli("eval", folder, "--library", lib, "-a", f"m-{method}", "--json", "--max-new-tokens", "4")
    (row,) = json.loads(result.stdout)["results"]
    assert row["adapter"] == f"m-{method}" and row["n"] == 4 and 0 <= row["rouge_l"] <= 1


def peft_vs_ours(folder, tiny_llama, base_dir=None):
    """Max |logit difference| between PEFT's load of an exported folder and adaptforge's delta on the same base,
    and how far the adapter moves the base's logits; ``base_dir``: PeftModel on that base (the card's recipe)."""
    import torch
    from peft import AutoPeftModelForCausalLM, PeftModel
    from transformers import AutoModelForCausalLM

    from adaptforge.adapters import read_adapter
    from adaptforge.generation import encode_prompts

    if base_dir is None:
        theirs = AutoPeftModelForCausalLM.from_pretrained(folder).eval()
    else:
        theirs = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), folder).eval()
    task = reverse_task(n_train=1, n_test=2)
    ids = torch.tensor(encode_prompts(tiny_llama.tokenizer, task.description, task.split("test")[:1], 64))
    delta, _ = read_adapter(folder)
    with torch.no_grad(), tiny_llama.applied(delta) as model:
        ours = model(ids).logits
        peft_logits = theirs(input_ids=ids).logits
    with torch.no_grad():
        base = tiny_llama.model(ids).logits
    return float((ours - peft_logits).abs().max()), float((ours - base).abs().max())


def test_export_of_llm_adapter_loads_in_peft_with_our_logits(trained, tiny_llama, tmp_path):
    folder, lib, model = trained
    run_cli("library", "export", "rev", "--library", lib, "--out", tmp_path / "exported")
    config = json.loads((tmp_path / "exported" / "adapter_config.json").read_text())
    assert config["task_type"] == "CAUSAL_LM" and config["fan_in_fan_out"] is False
    assert config["base_model_name_or_path"] == str(model.resolve())  # a user's folder: the path is its name
    card = (tmp_path / "exported" / "README.md").read_text()
    assert "# rev" in card and 'AutoPeftModelForCausalLM.from_pretrained("<this folder>")' in card
    gap, moved = peft_vs_ours(tmp_path / "exported", tiny_llama)
    assert gap < 1e-4 and moved > 10 * gap


def test_export_of_embedded_llm_adapter_names_the_hub_id(trained, tiny_llama, tmp_path, monkeypatch):
    """An adapter of ``smollm2`` is exported with the hub id, never this machine's cache path, and the card's
    recipe (PeftModel on the converted folder) gives our logits. The tiny LLaMA stands in for the converted
    folder (the real one takes minutes to convert): only the name's resolution is redirected."""
    from adaptforge.adapters import read_adapter
    from adaptforge.embedded import HUB_ID
    from adaptforge.library import Library
    from adaptforge.pipelines import exporting

    folder, lib, model = trained
    library = Library(lib)
    delta, record = library.load("rev")
    library.add(delta, name="rev-smol", base=BaseRef("smollm2", record.base_fingerprint), overwrite=True)
    monkeypatch.setattr(exporting, "resolve_model_path", lambda name: str(model) if name == "smollm2" else name)
    out = exporting.export_adapter(library, "rev-smol", tmp_path / "exported")
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == HUB_ID and config["task_type"] == "CAUSAL_LM"
    card = (out / "README.md").read_text()
    assert f"`{HUB_ID}`" in card and 'resolve_model_path("smollm2")' in card and str(model) not in card
    first = next(iter(delta))
    assert read_adapter(out)[0].dense(first).equal(delta.dense(first))  # the weights are copied as they are
    gap, moved = peft_vs_ours(out, tiny_llama, base_dir=model)
    assert gap < 1e-4 and moved > 10 * gap


SWEEP_REFUSALS = {
    "merge.eval.tasks": ("merge:\n  merges: [[rev, rev-b]]\n  eval:\n    tasks:\n      - {task}\n", 5),
    "merge.data": ("merge:\n  merges: [[rev, rev-b]]\n  methods: [atlas]\n  data:\n    - {task}\n", 5),
    "compose.tasks": ("compose:\n  k: [4]\n  tasks: [{task}]\n", 3),
}


@pytest.mark.parametrize("key", sorted(SWEEP_REFUSALS))
def test_sweep_refuses_generation_tasks_where_it_scores_labels(trained, tmp_path, no_model_load, key):
    """A sweep stage that scores label sets is refused at planning, naming the key, its line and the task, before
    any model loads or any cell runs."""
    folder, lib, model = trained
    text, line = SWEEP_REFUSALS[key]
    spec = tmp_path / "grid.yaml"
    spec.write_text(f"name: s\nmodel: {model}\n" + text.format(task=folder))
    before = snapshot(lib)
    result = run_cli("sweep", spec, "--library", lib, ok=False)
    assert result.exit_code == 2, result.output + repr(result.exception)
    errors = [x for x in result.output.splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.output
    assert f"{spec} line {line + 2}: key '{key}': " in errors[0]
    assert "classification only" in errors[0] and "'reverse2' is a generation task" in errors[0]
    assert snapshot(lib) == before


def test_sweep_trains_on_a_generation_task_and_shows_exact_match(trained, tmp_path):
    folder, lib, model = trained
    spec = tmp_path / "grid.yaml"
    spec.write_text(
        f"name: g\nmodel: {model}\ntrain:\n  tasks: [{folder}]\n  rank: [2]\n  epochs: [1]\n"
        "  options: {batch_size: 8, max_length: 64}\n  eval: {split: test}\n"
    )
    (cell,) = json.loads(run_cli("sweep", spec, "--library", lib, "--json").stdout)["cells"]
    assert cell["status"] == "ran" and cell["split"] == "test"
    from adaptforge.library import Library

    (em,) = [m.value for m in Library(lib).metrics(cell["adapter"], split="test") if m.metric == "exact_match"]
    assert cell["accuracy"] == em  # the table's score of a generation cell is its exact match


def _gguf_field(reader, key):
    field = reader.fields[key]
    value = field.parts[field.data[0]]
    return bytes(value).decode() if field.types[0].name == "STRING" else value.tolist()[0]


def test_export_gguf_writes_llama_cpp_lora_tensors(trained, tmp_path):
    """``library export --format gguf`` of an adapter on the default targets (attention and MLP): llama.cpp's
    adapter keys, its tensor names (``attn_*``, ``ffn_gate/up/down``) and the shapes its loader checks against the
    base's tensors, A as trained and B with the q/k rows in llama.cpp's rotary order, which transformers' GGUF
    reader turns back into ours."""
    import numpy as np
    from gguf import GGUFReader
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    from adaptforge.backbone import Backbone
    from adaptforge.library import Library

    folder, lib, model = trained
    dest = tmp_path / "rev.gguf"
    run_cli("library", "export", "rev", "--library", lib, "--out", dest, "--format", "gguf")
    reader = GGUFReader(dest)
    assert _gguf_field(reader, "general.type") == "adapter" and _gguf_field(reader, "adapter.type") == "lora"
    assert _gguf_field(reader, "general.architecture") == "llama"
    delta, record = Library(lib).load("rev")
    (scale,) = {m.scale for m in delta.modules.values()}
    assert _gguf_field(reader, "adapter.lora.alpha") == pytest.approx(scale * record.rank)  # 16: PEFT's lora_alpha
    tensors = {t.name: np.array(t.data) for t in reader.tensors}
    kinds = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output"}
    kinds |= {"gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}
    expected = {f"blk.{i}.{g}.weight.lora_{ab}" for i in range(2) for g in kinds.values() for ab in "ab"}
    assert set(tensors) == expected and all(t.tensor_type.name == "F32" for t in reader.tensors)
    heads = LlamaTensorProcessor(config={"num_attention_heads": 4, "num_key_value_heads": 2})
    base = Backbone.load(str(model)).target_shapes()  # (out, in): a GGUF base tensor's numpy shape
    for module, lora in delta.modules.items():
        layer, kind = module.split(".")[2], module.rsplit(".", 1)[-1]
        name = f"blk.{layer}.{kinds[kind]}.weight"
        a, b = tensors[f"{name}.lora_a"], tensors[f"{name}.lora_b"]
        assert a.shape == tuple(lora.A.shape) and b.shape == tuple(lora.B.shape)
        # llama.cpp's loader: lora_a's rows span the base tensor's input, lora_b's rows its output, same rank
        (out_dim, in_dim), rank = base[module], record.rank
        assert a.shape == (rank, in_dim) and b.shape == (out_dim, rank)
        np.testing.assert_array_equal(a, lora.A.numpy())
        back = heads.process(b, name).weights  # how transformers reads a llama.cpp q/k tensor
        np.testing.assert_array_equal(back, lora.B.numpy())
        assert kind in ("q_proj", "k_proj") or np.array_equal(b, lora.B.numpy())
        if kind in ("q_proj", "k_proj"):
            assert not np.array_equal(b, lora.B.numpy())  # the rows really were reordered
    again = run_cli("library", "export", "rev", "--library", lib, "--out", dest, "--format", "gguf", ok=False)
    assert again.exit_code == 2 and "exists" in again.output and dest.stat().st_size > 0


def test_gguf_tensors_fold_mixed_scales_and_refuse_other_architectures():
    import torch
    from transformers import GPT2Config, LlamaConfig

    from adaptforge.core import AdaptforgeError, LoraDelta, LoraModule
    from adaptforge.lora.llamacpp import gguf_tensors

    config = LlamaConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1)
    gen = torch.Generator().manual_seed(0)
    up = LoraModule(torch.randn(2, 8, generator=gen), torch.randn(16, 2, generator=gen), 2.0)
    down = LoraModule(torch.randn(4, 16, generator=gen), torch.randn(8, 4, generator=gen), 0.5)  # 2 x 2 != 0.5 x 4
    tensors, alpha = gguf_tensors(
        LoraDelta({"model.layers.0.mlp.up_proj": up, "model.layers.0.mlp.down_proj": down}), config
    )
    assert alpha == 0.0  # llama.cpp then applies B @ A as written: each module's scale is folded into its B
    torch.testing.assert_close(
        tensors["blk.0.ffn_up.weight.lora_b"] @ tensors["blk.0.ffn_up.weight.lora_a"], up.dense()
    )
    torch.testing.assert_close(
        tensors["blk.0.ffn_down.weight.lora_b"] @ tensors["blk.0.ffn_down.weight.lora_a"], down.dense()
    )
    with pytest.raises(AdaptforgeError, match="LLaMA-family bases.*'gpt2'.*PEFT folder"):
        gguf_tensors(LoraDelta({"h.0.attn.c_attn": up}), GPT2Config())


def copy_task(n_train: int = 16, n_test: int = 4):
    """Say the two words again, in the same order: the other generation task, whose adapter misleads on reverse2."""
    from adaptforge.tasks import Example, Task

    task = reverse_task(n_train, n_test)
    splits = {s: [Example(e.text, e.text) for e in task.split(s)] for s in ("train", "test")}
    return Task("copy2", "Repeat the two words.", (), splits, task_type="generation")


def test_lorahub_composes_llm_adapters_by_response_nll(trained, tmp_path):
    """LoraHub on a generation task (its original setting): the weights favour the adapter of the shots' task,
    the stored composition is evaluated by generation and the weighted shot NLL beats the bare base's."""
    from adaptforge.library import Library
    from adaptforge.tasks import write_task

    folder, lib, model = trained
    copy = write_task(copy_task(), tmp_path / "copy2")
    lib = tmp_path / "lib"  # two adapters trained long enough to differ clearly on the shots
    common = ("--library", lib, "--model", model, "--max-length", "64", "--batch-size", "8", "--rank", "4")
    run_cli("train", folder, "--name", "rev", "--epochs", "4", "--lr", "0.01", *common)
    run_cli("train", copy, "--name", "copy", "--epochs", "4", "--lr", "0.01", *common)
    shots = ("--shots", "8", "--candidates", "2", "--limit", "4", "--param", "budget=30", "--param", "alpha=0.01")
    result = run_cli(
        "compose", folder, "--library", lib, "--method", "lorahub", *shots, "--out", "hub", "--json", "--model", model
    )
    got = json.loads(result.stdout)
    record = Library(lib).get("hub")
    weights, info = record.recipe["weights"], record.recipe["info"]
    assert record.method == "lorahub" and set(weights) == {"rev", "copy"}
    print(weights, info["shot_loss"], info["initial_objective"])
    assert weights["rev"] > weights["copy"] and weights["rev"] > 0
    assert info["shot_loss"] < info["initial_objective"]  # the search improved on the bare base's response NLL
    assert got["eval"]["adapter"]["n"] == 4 and "exact_match" in got["eval"]["adapter"]


@pytest.mark.parametrize("method", ["atlas", "arrow"])
def test_compose_methods_without_a_generative_objective_refuse(trained, no_model_load, method):
    folder, lib, model = trained
    before = snapshot(lib)
    result = run_cli("compose", folder, "--library", lib, "--method", method, "--out", "c", "--model", model, ok=False)
    message = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(message) == 1, result.output
    assert f"compose {method!r}" in message[0] and "generation task" in message[0]
    assert snapshot(lib) == before
