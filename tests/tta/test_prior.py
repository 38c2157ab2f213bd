"""em-prior (Saerens et al. 2002): EM recovers a shifted class prior from calibrated posteriors; the stream
estimates it over every input since the last reset and a batch over itself; a runaway estimate is refused and
counted as a reset; the source prior comes from the adapter task's train split or is uniform."""

from __future__ import annotations

import pytest
import torch
from helpers import small_task

from adaptforge.core import AdaptforgeError
from adaptforge.scorers import make_scorer
from adaptforge.tasks import Example
from adaptforge.tta import TTA_METHODS, TtaSetup, encode_inputs, run_tta
from adaptforge.tta.prior import adjust, em_prior, train_prior


def bayes_posteriors(prior_s: torch.Tensor, prior_t: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """Log-posteriors under ``prior_s`` (exact Bayes, so calibrated) of ``n`` inputs drawn with class prior
    ``prior_t`` from unit Gaussians in 2-D whose means sit on a circle of radius 1.5."""
    g = torch.Generator().manual_seed(seed)
    c = len(prior_s)
    angles = torch.arange(c) * (2 * torch.pi / c)
    means = 1.5 * torch.stack([angles.cos(), angles.sin()], dim=-1)
    y = torch.multinomial(prior_t, n, replacement=True, generator=g)
    x = means[y] + torch.randn(n, 2, generator=g)
    log_lik = -0.5 * ((x.unsqueeze(1) - means.unsqueeze(0)) ** 2).sum(-1)
    return torch.log_softmax(log_lik + prior_s.log(), dim=-1)


def test_em_recovers_a_shifted_prior_and_leaves_an_unshifted_one():
    source = torch.tensor([0.5, 0.3, 0.2])
    target = torch.tensor([0.1, 0.3, 0.6])
    prior, iterations = em_prior(bayes_posteriors(source, target, 4000), source, 1000, 1e-7)
    assert torch.allclose(prior, target, atol=0.03), prior
    assert 1 < iterations < 1000
    same, _ = em_prior(bayes_posteriors(source, source, 4000, seed=1), source, 1000, 1e-7)
    assert torch.allclose(same, source, atol=0.03), same
    # the re-weighted posteriors are the Bayes posteriors under the target prior
    log_p = bayes_posteriors(source, target, 5)
    expected = torch.log_softmax(log_p - source.log() + target.log(), dim=-1)
    assert torch.allclose(adjust(log_p, source, target), expected, atol=1e-6)


@pytest.fixture(scope="module")
def prior_encoder(minilm, trained_library):
    lib, _ = trained_library
    adapter, _ = lib.load("sst2-a")
    task = small_task("movie_review", n_train=8, n_test=16)
    texts = [e.text for e in task.split("test")][:12]
    source = small_task("movie_review", n_train=40, n_test=8, seed=1)  # a labelled train split with task's labels
    return TtaSetup(make_scorer(minilm), task, adapter, source=source), texts


def test_the_stream_estimates_over_all_inputs_seen_and_a_batch_over_itself(prior_encoder):
    setup, texts = prior_encoder
    method = TTA_METHODS.get("em-prior")()
    params = {"source_prior": "uniform", "reset_window": 0, "collapse_fraction": 1.0}  # no guard
    stream = run_tta(method, setup, texts, params, granularity="stream", batch_size=4)
    batch = run_tta(method, setup, texts, params, granularity="batch", batch_size=4)
    with torch.no_grad(), setup.scorer.backbone.applied(setup.adapter) as model:
        inputs = encode_inputs(setup.scorer, setup.task, texts)
        labels = setup.scorer.label_context(model, setup.scorer.encode_labels(setup.task))
        log_p = torch.log_softmax(setup.scorer.logits(model, inputs.batch(), labels), dim=-1)
    uniform = torch.full((2,), 0.5)
    p = method.parse_params(params)
    # the last stream batch: EM over all 12 inputs; every batch alone: EM over its 4
    whole, _ = em_prior(log_p, uniform, p.iterations, p.tolerance)
    assert torch.allclose(stream.logits[8:], adjust(log_p[8:], uniform, whole), atol=1e-4)
    first, _ = em_prior(log_p[:4], uniform, p.iterations, p.tolerance)
    assert torch.allclose(stream.logits[:4], adjust(log_p[:4], uniform, first), atol=1e-4)
    last, _ = em_prior(log_p[8:], uniform, p.iterations, p.tolerance)
    assert torch.allclose(batch.logits[8:], adjust(log_p[8:], uniform, last), atol=1e-4)
    assert stream.resets == batch.resets == 0 and stream.updated == batch.updated == 12
    assert stream.delta is None  # nothing trainable, nothing to store


def test_a_runaway_prior_is_refused_and_counted_as_a_reset(prior_encoder):
    """With the guard at 0.5 every estimate of two classes is a collapse: the source posteriors come back and each
    batch counts a reset; with the guard at 1.0 none does."""
    setup, texts = prior_encoder
    method = TTA_METHODS.get("em-prior")()
    guarded = run_tta(method, setup, texts, {"collapse_fraction": 0.5}, granularity="stream", batch_size=4)
    free = run_tta(method, setup, texts, {"collapse_fraction": 1.0, "reset_window": 0}, granularity="stream")
    assert guarded.resets == 3 and guarded.updated == 0
    assert free.resets == 0
    with torch.no_grad(), setup.scorer.backbone.applied(setup.adapter) as model:
        inputs = encode_inputs(setup.scorer, setup.task, texts)
        labels = setup.scorer.label_context(model, setup.scorer.encode_labels(setup.task))
        log_p = torch.log_softmax(setup.scorer.logits(model, inputs.batch(), labels), dim=-1)
    assert torch.allclose(guarded.logits, log_p, atol=1e-4)


def test_the_source_prior_is_the_adapter_tasks_train_frequencies(prior_encoder):
    setup, _ = prior_encoder
    skewed = setup.source.with_splits(
        train=[Example("a", "positive")] * 3 + [Example("b", "negative")], test=[Example("c", "negative")]
    )
    prior = train_prior(TtaSetup(setup.scorer, setup.task, setup.adapter, source=skewed))
    assert prior.tolist() == pytest.approx([0.25, 0.75])  # in movie_review's label order: negative, positive
    none_seen = skewed.with_splits(train=[Example("a", "positive")])
    assert train_prior(TtaSetup(setup.scorer, setup.task, setup.adapter, source=none_seen)).tolist() == [0.5, 0.5]


def test_bad_setups_are_refused_naming_what_is_missing(prior_encoder):
    setup, texts = prior_encoder
    method = TTA_METHODS.get("em-prior")()
    bare = TtaSetup(setup.scorer, setup.task, setup.adapter)
    with pytest.raises(AdaptforgeError, match=r"source_prior 'train' needs the train split .* --pool TASK_DIR"):
        run_tta(method, bare, texts)
    run_tta(method, bare, texts[:2], {"source_prior": "uniform"})  # uniform needs nothing
    agnews = TtaSetup(setup.scorer, setup.task, setup.adapter, source=small_task("agnews", 8, 4))
    with pytest.raises(AdaptforgeError, match=r"adapter's task 'agnews' has labels .* a prior needs the same label"):
        run_tta(method, agnews, texts)
    for bad, message in (({"iterations": 0}, "'iterations' must be >= 1"), ({"source_prior": "x"}, "must be one of")):
        with pytest.raises(AdaptforgeError, match=message):
            method.parse_params(bad)
    assert "changes no weights" in method.unsaved_reason(method.parse_params({}))
