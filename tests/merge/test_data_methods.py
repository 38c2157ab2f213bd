"""Data-driven merges (aTLAS, DaWin, base interpolation) on the embedded MiniLM with small random adapters.

The low-rank mixture is checked against adding the folded delta to the weights, so aTLAS's training
path and DaWin's per-input path compute exactly the model they claim to.
"""

from __future__ import annotations

import math

import pytest
import torch
from helpers import small_task

from adaptforge.core import AdaptforgeError, LoraDelta, LoraModule
from adaptforge.evaluate import evaluate, logits_of, predict_logits
from adaptforge.lora.factors import fold
from adaptforge.lora.hooks import LoraMixture
from adaptforge.merge import MERGE_METHODS, EntropyRouter, evaluate_routed, merge, run
from adaptforge.merge.dawin import entropy_weights
from adaptforge.merge.interp import expected_retention, scale_delta
from adaptforge.tasks import Example

MODULES = ["encoder.layer.0.attention.self.query", "encoder.layer.1.attention.self.value"]


@pytest.fixture(scope="module")
def deltas() -> list[LoraDelta]:
    g = torch.Generator().manual_seed(0)
    out = []
    for rank, scale in ((2, 2.0), (4, 0.5), (3, 1.0)):
        out.append(
            LoraDelta(
                {
                    n: LoraModule(
                        0.3 * torch.randn(rank, 384, generator=g), 0.3 * torch.randn(384, rank, generator=g), scale
                    )
                    for n in MODULES
                }
            )
        )
    return out


@pytest.fixture(scope="module")
def two_tasks():
    return [small_task("sst2", 16, 16), small_task("subjectivity", 16, 16)]


def test_registered_with_needs_data_and_merge_explains_fit(deltas):
    for name in ("atlas", "dawin", "base_interp"):
        assert MERGE_METHODS.get(name).needs_data
        with pytest.raises(AdaptforgeError, match="learns from data"):
            merge(name, deltas)
        with pytest.raises(AdaptforgeError, match="learns from data"):
            run(name, deltas)
    with pytest.raises(AdaptforgeError, match="does not use data"):
        run("ties", deltas, None, None, [small_task("sst2", 8, 8)])


def test_lora_mixture_equals_adding_the_folded_delta(minilm, minilm_scorer, deltas, two_tasks):
    coef = torch.tensor([[0.5, -1.0, 2.0], [1.5, 0.25, -0.5]])
    with minilm.applied(fold(deltas, coef)) as model:
        expected, _ = predict_logits(minilm_scorer, two_tasks[0], "test", model)
    with LoraMixture(minilm.model, deltas, coef):
        got, _ = predict_logits(minilm_scorer, two_tasks[0], "test", minilm.model)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    plain, _ = predict_logits(minilm_scorer, two_tasks[0], "test")  # hooks are gone after the block
    with minilm.applied(None) as model:
        torch.testing.assert_close(plain, predict_logits(minilm_scorer, two_tasks[0], "test", model)[0])
    with pytest.raises(AdaptforgeError, match="expected \\(modules, adapters\\) = \\(2, 3\\)"):
        LoraMixture(minilm.model, deltas, torch.zeros(3, 2))


def test_atlas_learns_only_the_coefficients_and_folds_them_exactly(minilm, minilm_scorer, deltas, two_tasks):
    weights_before = {n: p.detach().clone() for n, p in minilm.model.named_parameters() if "layer.0" in n}
    params = {"steps": 3, "examples_per_task": 16, "batch_size": 8, "lr": 0.1}
    result = run("atlas", deltas, params, minilm_scorer, two_tasks)
    again = run("atlas", deltas, params, minilm_scorer, two_tasks)
    info = result.info
    assert info["method"] == "atlas" and info["tasks"] == ["sst2", "subjectivity"] and len(info["loss_curve"]) == 3
    coef = torch.tensor([info["coefficients"][n] for n in MODULES])
    assert coef.shape == (2, 3) and not torch.allclose(coef, torch.full_like(coef, 0.3))  # moved from the init
    for name in MODULES:
        expected = sum(float(coef[MODULES.index(name), i]) * d.dense(name) for i, d in enumerate(deltas))
        torch.testing.assert_close(result.delta.dense(name), expected, rtol=1e-4, atol=1e-5)
        assert torch.equal(result.delta[name].A, again.delta[name].A)  # seeded: deterministic
    assert result.reconstruction_error == {} and result.delta[MODULES[0]].rank == 2 + 4 + 3
    for n, p in minilm.model.named_parameters():
        if n in weights_before:
            assert torch.equal(p, weights_before[n]) and not p.requires_grad
    low = run("atlas", deltas, {**params, "rank": 2}, minilm_scorer, two_tasks)
    assert low.delta[MODULES[0]].rank == 2 and all(0 < e < 1 for e in low.reconstruction_error.values())
    with pytest.raises(AdaptforgeError, match="'lr' must be > 0"):
        run("atlas", deltas, {"lr": 0}, minilm_scorer, two_tasks)
    with pytest.raises(AdaptforgeError, match="no split 'dev'"):
        run("atlas", deltas, params, minilm_scorer, [two_tasks[0].with_splits(dev=None)])


def test_entropy_weights_by_hand():
    confident, unsure = torch.tensor([[8.0, 0.0]]), torch.tensor([[0.0, 0.0]])
    h = [
        -sum(p * math.log(p) for p in torch.softmax(confident[0], 0).tolist()),
        math.log(2),
    ]
    w = entropy_weights([confident, unsure], temperature=0.5)
    a, b = math.exp(-h[0] / 0.5), math.exp(-h[1] / 0.5)
    torch.testing.assert_close(w, torch.tensor([[a / (a + b), b / (a + b)]]))
    w_prior = entropy_weights([confident, unsure], temperature=0.5, prior=[1.0, 3.0])
    torch.testing.assert_close(w_prior, torch.tensor([[a / (a + 3 * b), 3 * b / (a + 3 * b)]]))


def test_routed_eval_with_one_hot_rows_is_that_adapter(minilm_scorer, deltas, two_tasks):
    task = two_tasks[0]
    router = EntropyRouter(deltas, temperature=0.1)
    one_hot = torch.zeros(16, 3)
    one_hot[:, 1] = 1.0
    routed, _ = evaluate_routed(minilm_scorer, task, router, "test", coefficients=one_hot)
    direct = evaluate(minilm_scorer, task, "test", deltas[1])
    assert routed.accuracy == direct.accuracy and routed.n == direct.n == 16
    assert routed.loss == pytest.approx(direct.loss, rel=1e-4, abs=1e-5)
    res, coefs = evaluate_routed(minilm_scorer, task, router, "test")
    assert coefs.shape == (16, 3) and torch.allclose(coefs.sum(1), torch.ones(16))
    with pytest.raises(AdaptforgeError, match="expected \\(16, 3\\)"):
        evaluate_routed(minilm_scorer, task, router, "test", coefficients=torch.ones(4, 3))


def test_dawin_fit_gives_a_router_and_the_mean_weight_static_merge(minilm_scorer, deltas, two_tasks):
    result = run("dawin", deltas, {"temperature": 0.2, "examples_per_task": 8}, minilm_scorer, two_tasks)
    assert isinstance(result.router, EntropyRouter) and result.router.temperature == 0.2
    mean = torch.tensor(result.info["mean_weights"])
    assert mean.sum().item() == pytest.approx(1.0, abs=1e-4)
    for name in MODULES:
        expected = sum(float(mean[i]) * d.dense(name) for i, d in enumerate(deltas))
        torch.testing.assert_close(result.delta.dense(name), expected, rtol=1e-3, atol=1e-4)
    with pytest.raises(AdaptforgeError, match="must be positive"):
        run("dawin", deltas, {"weights": [1, -1, 1]}, minilm_scorer, two_tasks)


def test_base_interp_picks_the_best_allowed_alpha(minilm, minilm_scorer, deltas, two_tasks):
    params = {"retention": ["subjectivity"], "grid": [0.5, 1.0], "tolerance": 0.0, "examples_per_task": 16}
    result = run("base_interp", deltas, params, minilm_scorer, two_tasks)
    curve = result.info["curve"]
    assert [r["alpha"] for r in curve] == [0.0, 0.5, 1.0]
    base = evaluate(minilm_scorer, two_tasks[1], "dev", None, limit=16)
    assert curve[0]["retention_accuracy"] == pytest.approx(base.accuracy)
    allowed = [r for r in curve if r["retention_accuracy"] >= curve[0]["retention_accuracy"]]
    best = max(allowed, key=lambda r: (r["target_accuracy"], -r["alpha"]))
    assert result.info["alpha"] == best["alpha"]
    inner = merge("task_arithmetic", deltas)
    for name in MODULES:
        torch.testing.assert_close(
            result.delta.dense(name), scale_delta(inner.delta, best["alpha"]).dense(name), rtol=1e-5, atol=1e-6
        )
    strict = run(
        "base_interp", deltas, {**params, "retention_rule": "each", "tolerance": 0.05}, minilm_scorer, two_tasks
    )
    rows = strict.info["curve"]
    keeps = [r for r in rows if r["per_task"]["subjectivity"] >= rows[0]["per_task"]["subjectivity"] - 0.05 - 1e-9]
    assert strict.info["alpha"] == max(keeps, key=lambda r: (r["target_accuracy"], -r["alpha"]))["alpha"]
    for bad, message in [
        ({"retention": ["subjectivity"], "retention_rule": "all"}, "'retention_rule' must be"),
        ({}, "needs retention tasks"),
        ({"retention": ["nope"]}, "not among the data"),
        ({"retention": ["sst2", "subjectivity"]}, "give at least one target task"),
        ({"retention": ["sst2"], "inner": "dawin"}, "cannot be shrunk"),
        ({"retention": ["sst2"], "inner_params": {"scaling": 2}}, "at the top level"),
    ]:
        with pytest.raises(AdaptforgeError, match=message):
            run("base_interp", deltas, bad, minilm_scorer, two_tasks)


def test_base_interp_agreement_rule_reads_no_retention_label(minilm, minilm_scorer, deltas, two_tasks):
    """The label-free rule of pre/post-tuning merging: retention is agreement with the base's own predictions,
    so scrambling every label of the retention task changes nothing."""
    params = {"retention": ["subjectivity"], "grid": [0.25, 0.5, 1.0], "tolerance": 0.1, "examples_per_task": 16}
    params["retention_rule"] = "agreement"
    result = run("base_interp", deltas, params, minilm_scorer, two_tasks)
    curve = result.info["curve"]
    assert result.info["retention_measure"] == "agreement with the base" and curve[0]["retention_accuracy"] == 1.0
    allowed = [r for r in curve if r["retention_accuracy"] >= 0.9 - 1e-12]
    assert result.info["alpha"] == max(allowed, key=lambda r: (r["target_accuracy"], -r["alpha"]))["alpha"]
    scrambled = run(
        "base_interp", deltas, params, minilm_scorer, [two_tasks[0], with_every_label_shifted(two_tasks[1])]
    )
    assert scrambled.info["curve"] == curve and scrambled.info["alpha"] == result.info["alpha"]


def test_expected_retention_is_the_soft_label_accuracy_relative_to_the_bases():
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]], dtype=torch.float64)
    assert expected_retention(probs, [0, 0, 1]) == pytest.approx(1.0)  # the base's own predictions
    # flipping the unsure input costs 0.2 of 2.3 expected points; agreement would drop by a third
    assert expected_retention(probs, [0, 1, 1]) == pytest.approx((0.9 + 0.4 + 0.8) / (0.9 + 0.6 + 0.8))
    assert expected_retention(probs, [1, 1, 0]) == pytest.approx((0.1 + 0.4 + 0.2) / 2.3)


def test_base_interp_expected_rule_estimates_accuracy_retention_from_the_bases_probabilities(
    minilm, minilm_scorer, deltas, two_tasks
):
    """``retention_rule="expected"``: each alpha's retention is the merged model's expected accuracy under the
    base's softmax probabilities on the retention inputs (first examples, no label read), relative to the
    base's; recomputed here from the real logits, and unchanged when every retention label is scrambled."""
    params = {"retention": ["subjectivity"], "grid": [1.0], "tolerance": 0.02, "examples_per_task": 16}
    params["retention_rule"] = "expected"
    result = run("base_interp", deltas, params, minilm_scorer, two_tasks)
    curve = result.info["curve"]
    assert result.info["retention_measure"].startswith("expected accuracy") and curve[0]["retention_accuracy"] == 1.0
    retention = two_tasks[1]
    inputs = list(retention.split("dev")[:16])
    base = predict_logits_of(minilm_scorer, retention, inputs, None, 0.0).double().softmax(-1)
    inner = merge("task_arithmetic", deltas).delta
    for row in curve[1:]:
        merged = predict_logits_of(minilm_scorer, retention, inputs, inner, row["alpha"]).argmax(-1)
        expected = float(base.gather(1, merged.unsqueeze(1)).mean() / base.max(-1).values.mean())
        assert row["retention_accuracy"] == pytest.approx(expected, abs=1e-6)
    allowed = [r for r in curve if r["retention_accuracy"] >= 0.98 - 1e-12]
    assert result.info["alpha"] == max(allowed, key=lambda r: (r["target_accuracy"], -r["alpha"]))["alpha"]
    scrambled = run("base_interp", deltas, params, minilm_scorer, [two_tasks[0], with_every_label_shifted(retention)])
    assert scrambled.info["curve"] == curve and scrambled.info["alpha"] == result.info["alpha"]


def with_every_label_shifted(task):
    """The task with each example's label replaced by the next label name: every label wrong."""
    labels = list(task.labels)
    shifted = {
        split: [Example(ex.text, labels[(labels.index(ex.label) + 1) % len(labels)]) for ex in task.split(split)]
        for split in task.splits
    }
    return task.with_splits(**shifted)


def predict_logits_of(scorer, task, examples, delta, alpha: float) -> torch.Tensor:
    with scorer.backbone.applied(delta if alpha else None, weight=alpha) as model:
        return logits_of(scorer, task, examples, model)
