"""Generation tasks on a tiny random LLaMA with a chat template: task files, the response-only loss, SFT,
greedy decoding (batched == one at a time), metrics and the refusals."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import WORDS, reverse_task

from adaptforge.core import AdaptforgeError
from adaptforge.generation import (
    IGNORE,
    SFTScorer,
    encode_prompts,
    evaluate_generation,
    exact_match,
    generate,
    mean_response_loss,
    rouge_l,
    sft_labels,
)
from adaptforge.tasks import Example, TaskFormatError, load_task, write_task


def write_split(folder, meta: dict, rows: list) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "task.json").write_text(json.dumps(meta))
    (folder / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")


GEN_META = {"name": "g", "type": "generation", "description": "Answer."}


def test_generation_task_round_trips(tmp_path):
    chat = Example("and then?", "the end", (("user", "start"), ("assistant", "middle")))
    task = reverse_task().with_splits(dev=[chat])
    loaded = load_task(write_task(task, tmp_path / "t"))
    assert loaded == task and loaded.generative and loaded.labels == ()
    assert loaded.split("dev")[0].history == (("user", "start"), ("assistant", "middle"))
    assert len(loaded.sample("train", 5, seed=1)) == 5


@pytest.mark.parametrize(
    ("row", "field"),
    [
        ({"prompt": "q"}, "response"),
        ({"prompt": "q", "response": "  "}, "response"),
        ({"response": "a"}, "prompt"),
        ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}]}, "messages[1].content"),
        ({"messages": [{"role": "user", "content": "q"}]}, "messages"),
    ],
)
def test_bad_generation_rows_name_file_line_and_field(tmp_path, row, field):
    write_split(tmp_path / "t", GEN_META, [{"prompt": "ok", "response": "fine"}, row])
    with pytest.raises(TaskFormatError) as err:
        load_task(tmp_path / "t")
    assert f"train.jsonl, line 2, field {field!r}" in str(err.value)


def test_response_only_labels(tiny_llama):
    task = reverse_task()
    scorer = SFTScorer(tiny_llama, max_length=64)
    encoded = scorer.encode(task, task.split("train")[:3])
    tok = tiny_llama.tokenizer
    for ids, start, example in zip(encoded.ids, encoded.targets, task.split("train")[:3], strict=True):
        assert tok.decode(ids[start:]) == example.label + tok.eos_token  # the response and eos, nothing else
        assert tok.decode(ids[:start]).endswith("<s>assistant\n")  # the chat template's generation prompt
        assert "Reverse the two words.\n\n" + example.text in tok.decode(ids[:start])
    from adaptforge.batching import pad

    input_ids, mask = pad(encoded.ids, tok.pad_token_id)
    labels = sft_labels(input_ids, mask, torch.tensor(encoded.targets))
    for row, (ids, start) in enumerate(zip(encoded.ids, encoded.targets, strict=True)):
        assert (labels[row, :start] == IGNORE).all() and (labels[row, len(ids) :] == IGNORE).all()
        assert labels[row, start : len(ids)].tolist() == list(ids[start:])


def test_response_loss_skips_prompt_logits_and_equals_the_full_computation(tiny_llama):
    """The output layer runs only from the earliest response start on; the NLL is the one of full logits."""
    import torch.nn.functional as F

    from adaptforge.batching import make_batch, pad
    from adaptforge.generation import keeps_logits, response_nll

    task = reverse_task()
    encoded = SFTScorer(tiny_llama, max_length=64).encode(task, task.split("train")[:6])
    batch = make_batch(encoded, list(range(6)))
    model, pad_id = tiny_llama.model, tiny_llama.tokenizer.pad_token_id
    assert keeps_logits(model)
    input_ids, mask = pad(batch.ids, pad_id)
    labels = sft_labels(input_ids, mask, batch.targets)
    with torch.no_grad():
        full = model(input_ids=input_ids, attention_mask=mask).logits[:, :-1]
        expected = F.cross_entropy(full.transpose(1, 2), labels[:, 1:], ignore_index=IGNORE, reduction="sum")
        seen = []
        hook = model.lm_head.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[1]))
        try:
            nll, count = response_nll(model, batch, pad_id)
        finally:
            hook.remove()
    assert int(count) == int((labels != IGNORE).sum())
    torch.testing.assert_close(nll, expected, rtol=1e-5, atol=1e-5)
    # the rows' pass: only the positions from the earliest response on (a shared-prefix pass before it keeps 1)
    assert seen[-1] == input_ids.shape[1] - int(batch.targets.min()) + 1 < input_ids.shape[1]
    assert seen[:-1] in ([], [1])


def test_sft_lowers_response_loss(tiny_llama):
    from adaptforge.train.config import TrainConfig
    from adaptforge.train.trainer import train

    task = reverse_task()
    scorer = SFTScorer(tiny_llama, max_length=64)
    encoded = scorer.encode(task, task.split("train"))
    before = mean_response_loss(scorer, tiny_llama.model, encoded, 8)
    seen = []
    every = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")  # random weights learn slowly
    cfg = TrainConfig(epochs=25, batch_size=8, grad_accum=2, lr=1e-2, rank=8, targets=every, checkpoint_every=0)
    result = train(task, tiny_llama, cfg, progress=lambda step, total, loss, tps: seen.append(tps))
    with tiny_llama.applied(result.delta) as model:
        after = mean_response_loss(scorer, model, encoded, 8)
    assert after < before - 0.5, (before, after)
    assert result.tokens_per_second > 0 and all(t > 0 for t in seen)
    assert sum(result.draws) == 2 * len(seen)  # two micro-batches per optimizer step


def test_metrics_on_known_strings():
    assert exact_match(["Paris.", "the cat  sat", "no"], ["paris", "The cat sat", "yes"]) == pytest.approx(2 / 3)
    assert rouge_l(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(1.0)
    assert rouge_l(["the cat"], ["the cat sat on the mat"]) == pytest.approx(2 * (1 * 2 / 6) / (1 + 2 / 6))
    assert rouge_l(["xyz"], ["abc"]) == 0.0


def test_batched_generation_equals_one_at_a_time(tiny_llama):
    task = reverse_task(n_train=8)
    prompts = encode_prompts(tiny_llama.tokenizer, task.description, task.split("train"), 100)
    prompts[1] = prompts[1][-5:]  # lengths differ, so the batch is left-padded
    batched = generate(tiny_llama.model, tiny_llama.tokenizer, prompts, 6, batch_size=8)
    single = [generate(tiny_llama.model, tiny_llama.tokenizer, [p], 6)[0] for p in prompts]
    assert batched == single


def test_evaluate_generation_and_refusals(tiny_llama, minilm, caplog):
    task = reverse_task()
    res = evaluate_generation(tiny_llama, task, "test", max_new_tokens=4)
    assert res.n == 6 and 0 <= res.exact_match <= 1 and 0 <= res.rouge_l <= 1 and res.loss > 0
    assert set(res.metric_values()) == {"exact_match", "rouge_l", "loss"}
    for bad in (0, -3, 512):
        with pytest.raises(AdaptforgeError, match="--max-new-tokens"):
            evaluate_generation(tiny_llama, task, "test", max_new_tokens=bad)
    with pytest.raises(AdaptforgeError, match="need a causal LM"):
        evaluate_generation(minilm, task, "test")
    long = task.with_splits(test=[Example(" ".join(WORDS * 60), "a")])
    caplog.set_level("WARNING")
    assert evaluate_generation(tiny_llama, long, "test", max_new_tokens=2).n == 1
    assert "cut from the left" in caplog.text


def test_classification_only_method_refuses_generation_task(tiny_llama):
    from adaptforge.scorers import make_scorer

    with pytest.raises(AdaptforgeError, match="classification only.*'reverse2' is a generation task"):
        make_scorer(tiny_llama).encode(reverse_task(), reverse_task().split("test"))


LONG_INSTRUCTION = "Read the two words below and answer with the same two words in reverse order, nothing else."


def _lora_llama(folder, dropout: float = 0.0):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    targets = ["q_proj", "v_proj", "down_proj"]
    config = LoraConfig(r=4, lora_alpha=8, target_modules=targets, lora_dropout=dropout, init_lora_weights=False)
    return get_peft_model(base, config).train()


def _nll_and_grads(model, batch, pad_id):
    from adaptforge.generation import response_nll

    model.zero_grad(set_to_none=True)
    calls = []
    embed = model.get_base_model().get_input_embeddings()
    hook = embed.register_forward_hook(lambda m, args, out: calls.append(tuple(args[0].shape)))
    try:
        nll, count = response_nll(model, batch, pad_id)
        nll.backward()
    finally:
        hook.remove()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return nll.detach(), int(count), grads, calls


def test_shared_prompt_prefix_runs_once_with_the_same_loss_and_gradients(tiny_llama, tiny_llama_dir, monkeypatch):
    """The tokens every row starts with (template + instruction) run as one row whose KV cache the rows attend to;
    the training loss and every LoRA gradient equal those of the rows run in full."""
    from adaptforge import generation
    from adaptforge.batching import make_batch

    task = reverse_task()
    task = type(task)(task.name, LONG_INSTRUCTION, (), dict(task.splits), task_type="generation")
    encoded = SFTScorer(tiny_llama, max_length=160).encode(task, task.split("train")[:6])
    batch = make_batch(encoded, list(range(6)))
    pad_id = tiny_llama.tokenizer.pad_token_id
    model = _lora_llama(tiny_llama_dir)
    nll, count, grads, calls = _nll_and_grads(model, batch, pad_id)
    width, shared = max(len(x) for x in batch.ids), calls[0][1]
    assert calls == [(1, shared), (6, width - shared)]  # the prefix once, then the rows' own tokens
    assert generation.SHARED_PREFIX_MIN <= shared < min(encoded.targets)
    assert all(x[:shared] == batch.ids[0][:shared] for x in batch.ids) and batch.ids[0][shared] != batch.ids[1][shared]
    monkeypatch.setattr(generation, "SHARED_PREFIX_MIN", 10**6)  # the plain path: every row in full
    full_nll, full_count, full_grads, full_calls = _nll_and_grads(model, batch, pad_id)
    assert full_calls == [(6, width)]
    assert count == full_count
    torch.testing.assert_close(nll, full_nll, rtol=1e-5, atol=1e-5)
    assert full_grads.keys() == grads.keys() and len(grads) == 2 * 3 * 2  # A and B of 3 targets in 2 layers
    for name, grad in grads.items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(grad, full_grads[name], rtol=1e-4, atol=1e-6)


def test_no_shared_prefix_pass_while_dropout_is_drawn(tiny_llama, tiny_llama_dir):
    """With LoRA dropout the rows would share one dropout mask over the prefix: every row runs in full."""
    from adaptforge.batching import make_batch

    task = reverse_task()
    task = type(task)(task.name, LONG_INSTRUCTION, (), dict(task.splits), task_type="generation")
    encoded = SFTScorer(tiny_llama, max_length=160).encode(task, task.split("train")[:4])
    batch = make_batch(encoded, list(range(4)))
    model = _lora_llama(tiny_llama_dir, dropout=0.2)
    *_, calls = _nll_and_grads(model, batch, tiny_llama.tokenizer.pad_token_id)
    assert calls == [(4, max(len(x) for x in batch.ids))]
    model.eval()  # no dropout in eval mode: the prefix is shared again
    *_, calls = _nll_and_grads(model, batch, tiny_llama.tokenizer.pad_token_id)
    assert len(calls) == 2 and calls[0][0] == 1
