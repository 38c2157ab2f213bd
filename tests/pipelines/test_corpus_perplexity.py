"""``adaptforge eval CORPUS --metric perplexity`` and ``prune --domain CORPUS`` on a tiny random LLaMA: the value is
exp of the mean next-token NLL computed by hand, strided windows predict every token once, bad corpora are one
clear line naming the file (and line)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import run_cli

from adaptforge.backbone import Backbone
from adaptforge.core import AdaptforgeError
from adaptforge.evaluate import corpus_perplexity, strided_windows
from adaptforge.prune import read_record

SHORT = ["the movie was a delight from start to finish", "stocks fell sharply on tuesday after the report"]
LONG = (
    "the company said on monday that its profit rose in the third quarter as sales of its new phones grew "
    "faster than analysts had expected, and it raised its forecast for the year while shares climbed in early "
    "trading on the news that the deal with the government would go ahead"
)


def nll_by_hand(model, ids: list[int], start: int, end: int, first: int) -> tuple[float, int]:
    """Summed NLL of tokens ``first..end-1`` read in the window ``ids[start:end]`` (no padding, no batching)."""
    window = torch.tensor([ids[start:end]])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=window).logits[0].double(), dim=-1)
    total = -sum(float(logp[j - start - 1, ids[j]]) for j in range(first, end))
    return total, end - first


def test_short_texts_perplexity_is_exp_of_the_mean_nll(tiny_llama):
    model, tok = tiny_llama.model, tiny_llama.tokenizer
    total, count = 0.0, 0
    for text in SHORT:  # each shorter than the context: one window, HF's own shifted loss over its tokens
        ids = torch.tensor([tok(text)["input_ids"]])
        with torch.no_grad():
            total += float(model(input_ids=ids, labels=ids).loss) * (ids.shape[1] - 1)
        count += ids.shape[1] - 1
    got = corpus_perplexity(model, tok, SHORT, context=256, stride=128, batch_size=2)
    assert (got.tokens, got.texts) == (count, 2)
    assert got.value == pytest.approx(math.exp(total / count), rel=1e-5)
    assert got.nll == pytest.approx(total / count, rel=1e-5)


def test_strided_windows_predict_every_token_once_with_the_context_before_it(tiny_llama):
    model, tok = tiny_llama.model, tiny_llama.tokenizer
    ids = tok(LONG)["input_ids"]
    assert len(ids) > 40
    windows = strided_windows(len(ids), 16, 6)
    scored = [j for _, end, first in windows for j in range(first, end)]
    assert scored == list(range(1, len(ids)))  # each token after the first exactly once, in order
    assert all(end - start <= 16 and first - start >= 16 - 6 for start, end, first in windows[1:])
    total = sum(nll_by_hand(model, ids, *w)[0] for w in windows)
    got = corpus_perplexity(model, tok, [LONG, *SHORT], context=16, stride=6, batch_size=3)
    short = corpus_perplexity(model, tok, SHORT, context=16, stride=6)
    n_short = short.tokens
    assert got.tokens == len(ids) - 1 + n_short
    assert got.nll * got.tokens == pytest.approx(total + short.nll * n_short, rel=1e-5)
    whole = corpus_perplexity(model, tok, [LONG], context=256, stride=128)
    assert whole.value != pytest.approx(corpus_perplexity(model, tok, [LONG], context=16, stride=6).value, rel=1e-3)
    with pytest.raises(AdaptforgeError, match="stride 16 must be at least 1 and below the context"):
        corpus_perplexity(model, tok, SHORT, context=16, stride=16)


def test_eval_metric_perplexity_through_the_cli(tiny_llama, tiny_llama_dir, tmp_path):
    jsonl = tmp_path / "corpus.jsonl"
    jsonl.write_text("".join(json.dumps({"text": t}) + "\n" for t in [LONG, *SHORT]))
    txt = tmp_path / "corpus.txt"
    txt.write_text("\n".join(SHORT) + "\n\n")
    got = run_cli("eval", jsonl, txt, "--metric", "perplexity", "--model", tiny_llama_dir, "--context", 16,
                  "--stride", 6, "--json")  # fmt: skip
    rows = json.loads(got.stdout)["results"]
    by_hand = corpus_perplexity(tiny_llama.model, tiny_llama.tokenizer, [LONG, *SHORT], context=16, stride=6)
    assert rows[0]["corpus"] == str(jsonl) and rows[0]["metric"] == "perplexity"
    assert rows[0]["perplexity"] == pytest.approx(by_hand.value, rel=1e-6) and rows[0]["tokens"] == by_hand.tokens
    assert (rows[0]["context"], rows[0]["stride"], rows[0]["texts"]) == (16, 6, 3)
    assert rows[1]["texts"] == 2 and rows[1]["perplexity"] == pytest.approx(
        corpus_perplexity(tiny_llama.model, tiny_llama.tokenizer, SHORT, context=16, stride=6).value, rel=1e-6
    )
    table = " ".join(run_cli("eval", txt, "--metric", "perplexity", "--model", tiny_llama_dir).stdout.split())
    default = corpus_perplexity(tiny_llama.model, tiny_llama.tokenizer, SHORT)
    assert "windows of 256 tokens, stride 128" in table and f"{default.value:.3f}" in table


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.jsonl", "\n\n", "empty.jsonl: empty corpus (no non-empty text)"),
        ("bad.jsonl", '{"text": "ok"}\n{"body": "x"}\n', "bad.jsonl:2: expected an object with a string field 'text'"),
        ("notes.csv", "text\nhello\n", "notes.csv: not a text corpus"),
    ],
)  # fmt: skip
def test_a_bad_corpus_is_one_line_naming_the_file(tiny_llama_dir, tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    bad = run_cli("eval", tmp_path / name, "--metric", "perplexity", "--model", tiny_llama_dir, ok=False)
    assert bad.exit_code != 0 and message in " ".join(bad.output.split())
    assert "Traceback" not in bad.output


def test_perplexity_needs_a_causal_model(tmp_path):
    (tmp_path / "c.txt").write_text("some text here\n")
    bad = run_cli("eval", tmp_path / "c.txt", "--metric", "perplexity", ok=False)
    assert bad.exit_code != 0 and "needs a causal language model" in bad.output


def test_prune_on_a_text_domain_and_eval_the_pruned_folder(tiny_llama, tiny_llama_dir, tmp_path):
    """D-Pruner with a plain-text domain and a plain-text general corpus: gradients of the next-token loss."""
    domain = tmp_path / "legal.jsonl"
    domain.write_text("".join(json.dumps({"text": f"{LONG} case {i}"}) + "\n" for i in range(6)))
    general = tmp_path / "general.txt"
    general.write_text("\n".join(SHORT * 3) + "\n")
    out = tmp_path / "pruned"
    got = json.loads(
        run_cli("prune", "--method", "dpruner", "--sparsity", "0.5", "--domain", domain, "--general", general,
                "--model", tiny_llama_dir, "--param", "gradient_examples=4", "--param", "batch_size=2",
                "--limit", 4, "--out", out, "--json").stdout
    )  # fmt: skip
    assert got["sparsity"] == pytest.approx(0.5, abs=0.01) and got["eval"] == {}
    assert set(got["perplexity"]) == {"general"} and got["prune_seconds"] > 0
    record = read_record(out)
    assert record is not None
    assert record.calibration["domain"]["source"] == f"{domain} (n=4)"
    assert record.calibration["general"]["n"] == 6
    pruned = Backbone.load(str(out))
    assert not torch.equal(
        pruned.model.model.layers[0].mlp.up_proj.weight, tiny_llama.model.model.layers[0].mlp.up_proj.weight
    )
    rows = json.loads(run_cli("eval", domain, "--metric", "perplexity", "--model", out, "--json").stdout)["results"]
    texts = [json.loads(line)["text"] for line in domain.read_text().splitlines()]
    assert rows[0]["perplexity"] == pytest.approx(
        corpus_perplexity(pruned.model, pruned.tokenizer, texts).value, rel=1e-6
    )
    encoder = run_cli("prune", "--method", "wanda", "--domain", domain, "--out", tmp_path / "enc", ok=False)
    assert encoder.exit_code != 0 and "plain domain text needs a causal LM" in encoder.output
    assert not (tmp_path / "enc").exists()
