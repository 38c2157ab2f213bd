"""Prune methods on real layers and calibration statistics: masks, Wanda's score, SparseGPT's reconstruction,
D-Pruner's refined importance."""

from __future__ import annotations

import pytest
import torch
from helpers import small_task

from adaptforge.batching import batch_order, make_batch
from adaptforge.core import AdaptforgeError
from adaptforge.lora.hooks import eval_mode
from adaptforge.prune import PRUNE_METHODS, PruneParams, prunable_layers
from adaptforge.prune.base import Calibration, nm_mask, unstructured_mask
from adaptforge.prune.calibration import InputStats, batch_gradients, collect_inputs
from adaptforge.prune.methods import DPrunerParams, SparseGptParams
from adaptforge.scorers import make_scorer


def test_unstructured_masks_remove_the_lowest_scores_per_row_or_per_layer():
    scores = torch.rand(8, 20, generator=torch.Generator().manual_seed(0))
    row = unstructured_mask(scores, 0.25, per_row=True)
    assert (row.sum(dim=1) == 15).all()
    for r in range(8):  # every removed score is below every kept one in its row
        assert scores[r][~row[r]].max() < scores[r][row[r]].min()
    layer = unstructured_mask(scores, 0.25, per_row=False)
    assert int((~layer).sum()) == 40 and scores[~layer].max() < scores[layer].min()
    assert unstructured_mask(scores, 0.0, per_row=True).all()


def test_nm_mask_keeps_n_of_every_m_inputs_and_names_a_layer_that_does_not_divide():
    scores = torch.rand(4, 16, generator=torch.Generator().manual_seed(1))
    keep = nm_mask(scores, 2, 4, "x")
    groups = keep.reshape(4, 4, 4)
    assert (groups.sum(dim=2) == 2).all()
    top = scores.reshape(4, 4, 4).topk(2, dim=2).indices
    assert torch.equal(groups.gather(2, top), torch.ones_like(top, dtype=torch.bool))
    with pytest.raises(AdaptforgeError, match="layer 'odd' has 10 inputs, not a multiple of 4"):
        nm_mask(torch.rand(3, 10), 2, 4, "odd")


def test_params_are_checked_before_any_work():
    with pytest.raises(AdaptforgeError, match=r"'sparsity' must be in \[0, 1\), got 1.0"):
        PruneParams(sparsity=1.0)
    with pytest.raises(AdaptforgeError, match="'sparsity' must be 0.5 for pattern 2:4"):
        PruneParams(sparsity=0.3, pattern="2:4")
    with pytest.raises(AdaptforgeError, match="'pattern' must be one of"):
        PRUNE_METHODS.get("wanda").parse_params({"pattern": "3:7"})
    with pytest.raises(AdaptforgeError, match="unknown prune method 'wand'.*Did you mean 'wanda'"):
        PRUNE_METHODS.get("wand")


def _calibration(stats: dict[str, InputStats], scorer=None, task=None) -> Calibration:
    return Calibration(general=stats, domain=stats, scorer=scorer, domain_task=task)  # type: ignore[arg-type]


def _layer_and_inputs(seed: int = 0, out_dim: int = 24, in_dim: int = 32, tokens: int = 400):
    gen = torch.Generator().manual_seed(seed)
    layer = torch.nn.Linear(in_dim, out_dim, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(out_dim, in_dim, generator=gen))
    # correlated inputs with very different feature scales: where activation-aware pruning matters
    X = (
        torch.randn(tokens, in_dim, generator=gen)
        @ torch.randn(in_dim, in_dim, generator=gen)
        * torch.linspace(0.1, 3.0, in_dim)
    )
    X = X.double()
    stats = InputStats(tokens, X.pow(2).sum(dim=0), X.T @ X)
    return layer, X, stats


def _output_error(original: torch.Tensor, pruned: torch.Tensor, X: torch.Tensor) -> float:
    return float((X @ original.double().T - X @ pruned.double().T).norm() / (X @ original.double().T).norm())


def test_wanda_scores_weight_times_input_norm_within_rows():
    layer, X, stats = _layer_and_inputs()
    wanda = PRUNE_METHODS.get("wanda")()
    scores = wanda.importance("l", layer, _calibration({"l": stats}), PruneParams())
    expected = layer.weight.detach().double().abs() * X.norm(dim=0).unsqueeze(0)
    torch.testing.assert_close(scores, expected)
    wanda.prune_layer("l", layer, 0.5, _calibration({"l": stats}), PruneParams())
    assert ((layer.weight == 0).sum(dim=1) == 16).all()


def test_sparsegpt_reconstructs_the_layer_output_better_than_masks_alone():
    results = {}
    for name in ("magnitude", "wanda", "sparsegpt"):
        layer, X, stats = _layer_and_inputs()
        original = layer.weight.detach().clone()
        impl = PRUNE_METHODS.get(name)()
        params = SparseGptParams() if name == "sparsegpt" else PruneParams()
        report = impl.prune_layer("l", layer, 0.5, _calibration({"l": stats}), params)
        assert report.sparsity == pytest.approx(0.5, abs=0.01)
        results[name] = _output_error(original, layer.weight.detach(), X)
        if name == "sparsegpt":
            assert report.error == pytest.approx(results[name], rel=1e-6)  # its own error report is the real one
    assert results["sparsegpt"] < results["wanda"] < results["magnitude"]


def test_sparsegpt_two_four_keeps_two_of_every_four_and_still_reconstructs():
    layer, X, stats = _layer_and_inputs(seed=3)
    original = layer.weight.detach().clone()
    params = SparseGptParams(pattern="2:4", block_size=16)
    PRUNE_METHODS.get("sparsegpt")().prune_layer("l", layer, 0.5, _calibration({"l": stats}), params)
    groups = (layer.weight != 0).reshape(24, 8, 4)
    assert (groups.sum(dim=2) == 2).all()
    masked = original * (layer.weight != 0)  # the same mask without the OBS update
    assert _output_error(original, layer.weight.detach(), X) < _output_error(original, masked, X)


def test_collected_statistics_equal_the_inputs_each_layer_saw(minilm):
    layers = prunable_layers(minilm)
    assert all(".attention." in n or "intermediate" in n or n.endswith("output.dense") for n in layers)
    assert not any("pooler" in n for n in layers)
    name = "encoder.layer.2.intermediate.dense"
    seen = []
    handle = layers[name].register_forward_hook(lambda m, a, o: seen.append(a[0].detach()))
    texts = ["a short text", "another, somewhat longer text about something else entirely"]
    try:
        stats = collect_inputs(minilm, {name: layers[name]}, texts, gram=True)
    finally:
        handle.remove()
    enc = [minilm.tokenizer(t)["input_ids"] for t in texts]
    rows = torch.cat([x.reshape(-1, x.shape[-1]) for x in seen])
    lengths = sorted(len(e) for e in enc)  # batches are sorted by length; padding rows are excluded
    assert stats[name].tokens == sum(lengths)
    width = max(lengths)
    keep = torch.cat([torch.arange(width) < n for n in lengths])
    X = rows[keep].double()
    torch.testing.assert_close(stats[name].sq_sum, X.pow(2).sum(0))
    torch.testing.assert_close(stats[name].gram, X.T @ X)


def test_dpruner_scores_are_the_papers_domain_taylor_term_plus_the_general_obs_error(minilm):
    """D = mean over batches of |g W + (g W)^2 / 2| with g each batch's real loss gradient (checked against
    autograd on the same batch), E = W^2 / U_jj^2 from the general texts' inputs, score = D/mean D + lambda E/mean E."""
    task = small_task("sst2", n_train=16, n_test=8)
    scorer = make_scorer(minilm)
    layers = prunable_layers(minilm)
    name = "encoder.layer.0.attention.self.query"
    one = {name: layers[name]}
    texts = ["general text one", "and general text two, a little longer than the first"]
    general = collect_inputs(minilm, one, texts, gram=True)
    calibration = Calibration(general=general, domain=None, scorer=scorer, domain_task=task)
    W = layers[name].weight.detach().double()
    grads = [g[name] for g in batch_gradients(scorer, task, one, 16, 0, 8)]
    assert len(grads) == 2 and not layers[name].weight.requires_grad  # restored
    # the first batch's gradient is the real gradient of the scorer's loss on those examples
    examples = task.sample("train", 16, seed=0)
    encoded, labels = scorer.encode(task, examples), scorer.encode_labels(task)
    first = next(iter(batch_order(encoded.lengths(), 8, shuffle=False)))
    weight = layers[name].weight
    weight.requires_grad_(True)
    try:
        with eval_mode(minilm.model) as model:
            (reference,) = torch.autograd.grad(scorer.loss(model, make_batch(encoded, first), labels), weight)
    finally:
        weight.requires_grad_(False)
    torch.testing.assert_close(grads[0], reference.double())
    D = sum((g * W + 0.5 * (g * W).pow(2)).abs() for g in grads) / 2
    H = general[name].gram / general[name].tokens
    H = H + torch.eye(H.shape[0], dtype=H.dtype) * 0.01 * torch.diag(H).mean()
    U = torch.linalg.cholesky(torch.linalg.inv(H), upper=True)
    E = W.pow(2) / torch.diag(U).pow(2)
    for lam in (0.0, 3.0):
        impl = PRUNE_METHODS.get("dpruner")()
        params = DPrunerParams(general_weight=lam, gradient_examples=16, batch_size=8)
        impl.prepare(one, calibration, params)
        scores = impl.importance(name, layers[name], calibration, params)
        torch.testing.assert_close(scores, D / D.mean() + lam * E / E.mean())
    assert impl.domain_examples(params) == 16


def test_dpruner_general_weight_trades_domain_for_general_reconstruction(minilm):
    """The general term does its job: with a large lambda the pruned layer reproduces its output on the general
    inputs better than with lambda = 0 (domain score only), and the mask follows the general error's ordering."""
    task = small_task("sst2", n_train=16, n_test=8)
    scorer = make_scorer(minilm)
    name = "encoder.layer.1.output.dense"
    layer = prunable_layers(minilm)[name]
    seen: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda m, a, o: seen.append(a[0].detach().reshape(-1, a[0].shape[-1])))
    texts = ["The river rises in the mountains and flows east to the sea.", "She wrote three novels and a play."]
    try:
        general = collect_inputs(minilm, {name: layer}, texts, gram=True)
    finally:
        handle.remove()
    X = torch.cat(seen).double()
    calibration = Calibration(general=general, domain=None, scorer=scorer, domain_task=task)
    original = layer.weight.detach().clone()
    errors = {}
    for lam in (0.0, 100.0):
        impl = PRUNE_METHODS.get("dpruner")()
        params = DPrunerParams(general_weight=lam, gradient_examples=16, sparsity=0.5)
        impl.prepare({name: layer}, calibration, params)
        try:
            report = impl.prune_layer(name, layer, 0.5, calibration, params)
            assert report.sparsity == pytest.approx(0.5, abs=0.01)
            errors[lam] = _output_error(original, layer.weight.detach(), X)
        finally:
            with torch.no_grad():
                layer.weight.copy_(original)
    assert errors[100.0] < errors[0.0]


LM_TEXTS = ["the market rose on monday as investors cheered the report", "a short one", "the film is a delight"]


def test_text_gradients_are_the_token_mean_next_token_loss_whatever_the_padding(tiny_llama):
    """A plain-text domain's gradient: right-padded batches give the gradient of the mean NLL over the batch's
    predicted tokens, the same as summing each text's NLL alone (no padding) and dividing by their count."""
    from adaptforge.prune.calibration import text_gradients

    layers = prunable_layers(tiny_llama)
    name = "model.layers.1.mlp.down_proj"
    one = {name: layers[name]}
    (batched,) = [g[name] for g in text_gradients(tiny_llama, one, LM_TEXTS, max_length=64, batch_size=3)]
    assert not layers[name].weight.requires_grad  # restored
    weight = layers[name].weight
    weight.requires_grad_(True)
    try:
        total, count = 0.0, 0
        with eval_mode(tiny_llama.model) as model:
            for text in LM_TEXTS:
                ids = torch.tensor([tiny_llama.tokenizer(text)["input_ids"]])
                total = total + model(input_ids=ids, labels=ids).loss * (ids.shape[1] - 1)
                count += ids.shape[1] - 1
            (reference,) = torch.autograd.grad(total / count, weight)
    finally:
        weight.requires_grad_(False)
    torch.testing.assert_close(batched, reference.double(), rtol=1e-4, atol=1e-7)


def test_dpruner_lomo_variant_takes_clipped_sgd_steps_on_the_scored_layers(tiny_llama):
    """train_lr > 0: after each batch the scored layers move by -lr * clip * g (g at the weights before the step);
    train_lr = 0 (the default) leaves every weight as it was."""
    import copy

    from adaptforge.backbone import Backbone
    from adaptforge.prune.calibration import text_gradients

    work = Backbone("t", "t", "causal", copy.deepcopy(tiny_llama.model), tiny_llama.tokenizer, "fp")
    layers = prunable_layers(work)
    before = {n: layer.weight.detach().clone() for n, layer in layers.items()}
    (g,) = list(text_gradients(work, layers, LM_TEXTS, max_length=64, batch_size=3))
    calibration = Calibration(
        general=None, domain=None, scorer=make_scorer(work), domain_task=None, domain_texts=tuple(LM_TEXTS)
    )
    PRUNE_METHODS.get("dpruner")().prepare(layers, calibration, DPrunerParams(gradient_examples=3, max_length=64))
    assert all(torch.equal(layer.weight, before[n]) for n, layer in layers.items())
    params = DPrunerParams(gradient_examples=3, max_length=64, train_lr=0.5, clip_grad_norm=0.01)
    PRUNE_METHODS.get("dpruner")().prepare(layers, calibration, params)
    norm = float(torch.sqrt(sum(v.pow(2).sum() for v in g.values())))
    assert norm > 0.01  # the clip is active
    for n, layer in layers.items():
        expected = before[n].double() - 0.5 * (0.01 / (norm + 1e-6)) * g[n]
        torch.testing.assert_close(layer.weight.detach().double(), expected, rtol=1e-5, atol=1e-7)
