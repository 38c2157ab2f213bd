"""Batched per-row LoRA scoring equals scoring each input alone under its own merged model.

The reference is the per-example loop routed evaluation ran before :mod:`adaptforge.lora.rows`: one
forward per input (and, for the encoder, one for its labels) under a :class:`LoraMixture` holding that
input's coefficients, or under Arrow's per-token hooks.
"""

from __future__ import annotations

import pytest
import torch
from helpers import minilm_delta, random_delta, small_task

from adaptforge.batching import make_batch
from adaptforge.compose.arrow import ArrowRouter
from adaptforge.core import AdaptforgeError
from adaptforge.library import Library
from adaptforge.lora.hooks import LoraMixture, eval_mode
from adaptforge.lora.rows import RowMixture, mixed_logits
from adaptforge.merge.dawin import EntropyRouter
from adaptforge.provenance import read as made_by
from adaptforge.routing import RECIPE_KEY, routed_settings, stored_router
from adaptforge.scorers import make_scorer


@torch.no_grad()
def one_at_a_time(scorer, task, examples, deltas=None, coefficients=None, router=None) -> torch.Tensor:
    """Each example scored alone: its label context and its text, under its own coefficients (or Arrow's hooks)."""
    model = scorer.backbone.model
    encoded, labels = scorer.encode(task, examples), scorer.encode_labels(task)
    out = torch.empty(len(examples), len(task.labels))
    with eval_mode(model):
        if router is not None:
            with router.applied(model):
                for j in range(len(examples)):
                    out[j] = scorer.logits(model, make_batch(encoded, [j]), scorer.label_context(model, labels))[0]
            return out
        n_modules = len(deltas[0])
        with LoraMixture(model, deltas, torch.zeros(n_modules, len(deltas))) as mixture:
            for j in range(len(examples)):
                mixture.set_coefficients(coefficients[j].float().expand(n_modules, -1))
                out[j] = scorer.logits(model, make_batch(encoded, [j]), scorer.label_context(model, labels))[0]
    return out


@pytest.fixture(scope="module")
def trec():
    return small_task("trec_question_type", n_train=8, n_test=13)


def test_dawin_batched_equals_one_forward_per_input(minilm, trec):
    scorer = make_scorer(minilm)
    deltas = [minilm_delta(seed) for seed in range(3)]
    router = EntropyRouter(deltas, temperature=0.05)
    examples = trec.split("test")
    coefs = router.route(scorer, trec, examples)
    assert coefs.std(0).max() > 1e-3  # the inputs really get different merges
    expected = one_at_a_time(scorer, trec, examples, deltas, coefs)
    torch.testing.assert_close(router.logits(scorer, trec, examples), expected, rtol=1e-4, atol=1e-4)
    # chunks smaller than the split, with padding inside each: the same numbers
    chunked = mixed_logits(scorer, trec, deltas, examples, coefs, batch_size=5)
    torch.testing.assert_close(chunked, expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(AdaptforgeError, match=r"expected \(13, 3\)"):
        mixed_logits(scorer, trec, deltas, examples, coefs[:4])


def test_arrow_batched_equals_one_forward_per_input(minilm, trec):
    scorer = make_scorer(minilm)
    router = ArrowRouter([minilm_delta(seed) for seed in range(3)], top_k=2)
    examples = trec.split("test")
    expected = one_at_a_time(scorer, trec, examples, router=router)
    torch.testing.assert_close(router.logits(scorer, trec, examples), expected, rtol=1e-4, atol=1e-4)


def test_a_stored_router_scores_as_one_forward_per_input(minilm, trec, tmp_path):
    lib = Library(tmp_path / "lib")
    deltas = [minilm_delta(seed) for seed in range(2)]
    ids = [lib.add(d, name=f"a{i}", base=minilm).id for i, d in enumerate(deltas)]
    made = EntropyRouter(deltas, temperature=0.05, scaling=1.5, prior=[1.0, 2.0])
    routed = made_by("merge", {"method": "dawin", RECIPE_KEY: routed_settings(made, ids)}, {})
    lib.add(deltas[0], name="routed", base=minilm, provenance=routed, parents=ids)
    rebuilt = stored_router(lib, lib.get("routed"), minilm.fingerprint)
    scorer = make_scorer(minilm)
    examples = trec.split("test")
    coefs = rebuilt.route(scorer, trec, examples)
    torch.testing.assert_close(coefs.sum(1), torch.full((13,), 1.5))
    expected = one_at_a_time(scorer, trec, examples, rebuilt.deltas, coefs)
    torch.testing.assert_close(rebuilt.logits(scorer, trec, examples), expected, rtol=1e-4, atol=1e-4)


def test_causal_rows_repeat_each_inputs_coefficients_per_label(tiny_llama):
    task = small_task("trec_question_type", n_train=8, n_test=7)
    scorer = make_scorer(tiny_llama)
    shapes = tiny_llama.target_shapes()  # the default targets: attention and MLP (gate/up/down) projections
    assert {n.rsplit(".", 1)[-1] for n in shapes} >= {"gate_proj", "up_proj", "down_proj"}
    assert shapes["model.layers.0.mlp.down_proj"] == (64, 128)
    deltas = [random_delta(shapes, rank=4, scale=1.0, seed=s, std=0.3) for s in range(2)]
    coefs = torch.rand(7, 2, generator=torch.Generator().manual_seed(0))
    examples = task.split("test")
    expected = one_at_a_time(scorer, task, examples, deltas, coefs)
    got = mixed_logits(scorer, task, deltas, examples, coefs, batch_size=3)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    plain = mixed_logits(scorer, task, deltas, examples, torch.zeros(7, 2))
    assert (got - plain).abs().max() > 1e-3  # the adapters change the scores


def test_a_forward_with_other_rows_than_selected_is_refused(minilm):
    deltas = [minilm_delta(0)]
    with RowMixture(minilm.model, deltas, torch.ones(3, 1)) as mixture, eval_mode(minilm.model):
        mixture.select([0, 2])
        ids = torch.ones(3, 4, dtype=torch.long)
        with pytest.raises(RuntimeError, match="got 3 rows, 2 were selected"):
            minilm.model(input_ids=ids, attention_mask=torch.ones_like(ids))
    with pytest.raises(AdaptforgeError, match=r"expected \(rows, 1\)"):
        RowMixture(minilm.model, deltas, torch.ones(3, 2))
