"""Metrics and evaluation: accuracy, macro-F1, tail metrics, results from logits, and scoring on the real MiniLM."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import MINILM_ATTENTION, random_delta, small_task

from adaptforge.core import AdaptforgeError
from adaptforge.evaluate import (
    EvalResult,
    accuracy,
    check_request,
    cvar,
    evaluate,
    logits_of,
    macro_f1,
    predict_logits,
    result_from_logits,
    subset_of,
    worst,
)
from adaptforge.scorers import make_scorer
from adaptforge.tasks import Example, Task


def confusion_f1(pred: Sequence[int], gold: Sequence[int], n_labels: int) -> float:
    """Macro-F1 from a confusion matrix (rows gold, columns predicted) over labels seen in gold or predictions."""
    cm = np.zeros((n_labels, n_labels))
    np.add.at(cm, (np.asarray(gold), np.asarray(pred)), 1)
    scores = []
    for c in range(n_labels):
        support, predicted = cm[c, :].sum(), cm[:, c].sum()
        if support == 0 and predicted == 0:
            continue
        precision = cm[c, c] / predicted if predicted else 0.0
        recall = cm[c, c] / support if support else 0.0
        scores.append(0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall))
    return sum(scores) / len(scores)


def handmade_task(splits: Sequence[str] = ("train", "test")) -> Task:
    examples = tuple(Example(f"text {i}", label) for i, label in enumerate(["neg", "neu", "pos", "pos", "neg", "neu"]))
    return Task("handmade", "Classify the tone.", ("neg", "neu", "pos"), {s: examples for s in splits})


# --------------------------------------------------------------------------------------------- metrics


def test_accuracy_is_the_fraction_of_matches() -> None:
    assert accuracy([0, 1, 2, 2], [0, 1, 1, 2]) == 0.75
    assert accuracy([1, 1], [0, 0]) == 0.0
    assert math.isnan(accuracy([], []))


def test_macro_f1_matches_a_confusion_matrix_computation() -> None:
    """Label 1 occurs in gold but is never predicted, 3 is predicted but absent from gold, 4 occurs nowhere."""
    gold = [0, 0, 0, 1, 1, 2, 2, 2, 2]
    pred = [0, 0, 3, 0, 0, 2, 2, 3, 2]
    expected = confusion_f1(pred, gold, 5)
    assert macro_f1(pred, gold, 5) == pytest.approx(expected, abs=1e-12)
    # label 4 is left out of the mean (declaring it changes nothing), labels 1 and 3 count with F1 = 0
    assert macro_f1(pred, gold, 5) == macro_f1(pred, gold, 4)
    # by hand: F1(0) = 2*2 / (2*2 + 2 + 1) = 4/7, F1(2) = 2*3 / (2*3 + 0 + 1) = 6/7, F1(1) = F1(3) = 0
    assert expected == pytest.approx((4 / 7 + 6 / 7 + 0 + 0) / 4)


def test_macro_f1_on_random_labels_matches_the_confusion_matrix() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        gold = rng.integers(0, 6, size=40).tolist()
        pred = rng.integers(0, 6, size=40).tolist()
        assert macro_f1(pred, gold, 7) == pytest.approx(confusion_f1(pred, gold, 7), abs=1e-12)


def test_macro_f1_of_perfect_predictions_is_one_and_of_nothing_is_nan() -> None:
    assert macro_f1([2, 0, 1], [2, 0, 1], 4) == 1.0
    assert math.isnan(macro_f1([], [], 3))


def test_worst_is_the_minimum() -> None:
    assert worst([0.7, 0.2, 0.9]) == 0.2
    assert math.isnan(worst([]))


def test_cvar_is_the_mean_of_the_worst_fraction() -> None:
    values = [0.9, 0.1, 0.5, 0.3, 0.8, 0.2, 0.7, 0.4, 0.6, 1.0]
    assert cvar(values, 0.2) == pytest.approx((0.1 + 0.2) / 2)
    assert cvar(values) == pytest.approx((0.1 + 0.2) / 2)
    assert cvar(values, 0.25) == pytest.approx((0.1 + 0.2 + 0.3) / 3)  # 2.5 values round up to 3
    assert cvar(values, 1.0) == pytest.approx(sum(values) / 10)


def test_cvar_of_a_fraction_below_one_value_is_the_worst_value() -> None:
    values = [0.9, 0.4, 0.6]
    assert cvar(values, 0.1) == 0.4
    assert cvar(values, 0.0) == 0.4


def test_cvar_of_nothing_is_nan() -> None:
    assert math.isnan(cvar([]))
    assert math.isnan(cvar([], 0.5))


# ------------------------------------------------------------------------------------------- EvalResult


def test_eval_result_metric_values_and_json() -> None:
    result = EvalResult(task="t", adapter="a", split="test", accuracy=0.5, macro_f1=0.4, n=10, loss=0.7)
    assert result.metric_values() == {"accuracy": 0.5, "macro_f1": 0.4, "loss": 0.7}
    data = result.to_json()
    assert data == {
        "task": "t",
        "adapter": "a",
        "split": "test",
        "accuracy": 0.5,
        "macro_f1": 0.4,
        "n": 10,
        "loss": 0.7,
        "subset": "all",
    }
    assert EvalResult(**json.loads(json.dumps(data))) == result


def test_subset_names_the_examples_a_limit_takes() -> None:
    task = handmade_task()
    size = len(task.split("test"))
    assert subset_of(task, "test", None) == "all" and subset_of(task, "test", size) == "all"
    assert subset_of(task, "test", size - 1) == f"sample:{size - 1}:seed0"
    assert subset_of(task, "test", 2, seed=3) == "sample:2:seed3"


def test_result_from_logits_on_hand_made_logits() -> None:
    task = handmade_task()
    logits = torch.tensor(
        [[2.0, 0.1, -1.0], [0.2, 0.1, 0.9], [-0.5, 0.3, 1.5], [0.0, 2.0, 0.1], [1.0, 1.2, -0.3], [0.3, 0.8, 0.2]]
    )
    gold = torch.tensor(task.label_ids("test"))
    result = result_from_logits(task, "test", "my-adapter", logits, gold)
    pred = logits.argmax(-1).tolist()
    assert pred == [0, 2, 2, 1, 1, 1]
    assert (result.task, result.adapter, result.split, result.n) == ("handmade", "my-adapter", "test", 6)
    assert result.accuracy == pytest.approx(sum(p == g for p, g in zip(pred, gold.tolist(), strict=True)) / 6)
    assert result.macro_f1 == pytest.approx(confusion_f1(pred, gold.tolist(), 3))
    assert result.loss == pytest.approx(float(F.cross_entropy(logits, gold)), rel=1e-6)


def test_result_from_no_logits_is_nan() -> None:
    result = result_from_logits(handmade_task(), "test", None, torch.empty(0, 3), torch.empty(0, dtype=torch.long))
    assert result.n == 0
    assert math.isnan(result.accuracy) and math.isnan(result.macro_f1) and math.isnan(result.loss)


# ---------------------------------------------------------------------------------------- check_request


def test_check_request_accepts_a_present_split_and_a_positive_limit() -> None:
    check_request([handmade_task()], "test", None)
    check_request([handmade_task()], "test", 1)


def test_check_request_names_the_task_and_the_missing_split() -> None:
    full = handmade_task(("train", "dev", "test"))
    partial = handmade_task(("train", "test"))
    with pytest.raises(AdaptforgeError) as err:
        check_request([full, partial], "dev", None)
    message = str(err.value)
    assert "task 'handmade' has no split 'dev'" in message and "it has: train, test" in message


@pytest.mark.parametrize("limit", [0, -2, True, 2.5, "5"])
def test_check_request_refuses_a_limit_that_is_not_a_positive_int(limit: object) -> None:
    with pytest.raises(AdaptforgeError, match="--limit must be a positive number"):
        check_request([handmade_task()], "test", limit)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------ on the real MiniLM


@pytest.fixture(scope="module")
def tiny_sst2() -> Task:
    return small_task("sst2", n_train=8, n_test=12)


@pytest.fixture
def scorer(minilm):
    """The encoder scorer; the shared model is put back in eval mode whatever a test did to it."""
    yield make_scorer(minilm)
    minilm.model.eval()


def test_predict_logits_returns_the_split_in_order_with_gold_from_labels(scorer, tiny_sst2: Task) -> None:
    logits, gold = predict_logits(scorer, tiny_sst2, "test", batch_size=5)
    examples = tiny_sst2.split("test")
    assert logits.shape == (len(examples), len(tiny_sst2.labels))
    assert gold.dtype == torch.long and gold.tolist() == tiny_sst2.label_ids("test")
    # batches are sorted by length, yet row i is example i: compare with each example scored alone
    alone = torch.cat([logits_of(scorer, tiny_sst2, [ex]) for ex in examples])
    torch.testing.assert_close(logits, alone, rtol=1e-4, atol=1e-3)
    assert len({tuple(row.tolist()) for row in logits}) == len(examples)


def test_predict_logits_with_limit_scores_the_seeded_stratified_sample(scorer, tiny_sst2: Task) -> None:
    full, _ = predict_logits(scorer, tiny_sst2, "test")
    logits, gold = predict_logits(scorer, tiny_sst2, "test", limit=6)
    sample = tiny_sst2.sample("test", 6, seed=0)
    assert len(sample) == 6 and set(e.label for e in sample) == set(tiny_sst2.labels)
    assert gold.tolist() == [tiny_sst2.labels.index(e.label) for e in sample]
    positions = [tiny_sst2.split("test").index(e) for e in sample]
    torch.testing.assert_close(logits, full[positions], rtol=1e-4, atol=1e-3)


def test_predict_logits_reports_every_batch(scorer, tiny_sst2: Task) -> None:
    sizes: list[int] = []
    predict_logits(scorer, tiny_sst2, "test", batch_size=5, on_batch=sizes.append)
    assert sizes and sum(sizes) == len(tiny_sst2.split("test")) and max(sizes) <= 5


def test_scoring_runs_in_eval_mode_and_restores_the_training_flag(scorer, minilm, tiny_sst2: Task) -> None:
    """With the model in training mode (dropout on), two scorings still agree exactly, and it stays in training."""
    minilm.model.train()
    first, _ = predict_logits(scorer, tiny_sst2, "test")
    assert minilm.model.training
    second, _ = predict_logits(scorer, tiny_sst2, "test")
    assert minilm.model.training
    torch.testing.assert_close(first, second, rtol=0, atol=0)


def test_the_training_flag_is_restored_when_the_scorer_raises(scorer, minilm, tiny_sst2: Task) -> None:
    """An example whose label the task does not have cannot be encoded: the error leaves the mode as it was."""
    minilm.model.train()
    with pytest.raises((KeyError, AdaptforgeError)):
        logits_of(scorer, tiny_sst2, [Example("a fine film", "not-a-label")])
    assert minilm.model.training
    minilm.model.eval()
    with pytest.raises((KeyError, AdaptforgeError)):
        logits_of(scorer, tiny_sst2, [Example("a fine film", "not-a-label")])
    assert not minilm.model.training


def weights_of(model: torch.nn.Module) -> Iterator[torch.Tensor]:
    return (p.detach().clone() for p in model.parameters())


def test_evaluate_without_delta_is_zero_shot(scorer, minilm, tiny_sst2: Task) -> None:
    logits, gold = predict_logits(scorer, tiny_sst2, "test", model=minilm.model)
    zero_shot = result_from_logits(tiny_sst2, "test", None, logits, gold)
    result = evaluate(scorer, tiny_sst2, "test", delta=None)
    assert result == zero_shot
    assert result.n == len(tiny_sst2.split("test")) and result.adapter is None and result.task == "sst2"


def test_evaluate_with_a_delta_scores_the_changed_model_and_restores_the_weights(
    scorer, minilm, tiny_sst2: Task
) -> None:
    before = list(weights_of(minilm.model))
    zero_shot = evaluate(scorer, tiny_sst2, "test", limit=8)
    adapted = evaluate(
        scorer, tiny_sst2, "test", delta=random_delta(MINILM_ATTENTION, rank=8, std=0.1), adapter="random", limit=8
    )
    assert adapted.adapter == "random" and adapted.n == 8
    assert adapted.loss != pytest.approx(zero_shot.loss, rel=1e-4)
    for old, new in zip(before, weights_of(minilm.model), strict=True):
        assert torch.equal(old, new)
    assert evaluate(scorer, tiny_sst2, "test", limit=8) == zero_shot


def test_perplexity_is_exp_of_the_token_mean_nll_whatever_the_batching(tiny_llama):
    from adaptforge.evaluate import perplexity

    texts = ["a short one", "a much longer text with many more tokens in it than the first", "mid length text"]
    model, tok = tiny_llama.model, tiny_llama.tokenizer
    total, count = 0.0, 0
    for text in texts:  # one text alone, no padding: HF's own shifted loss is the mean NLL of its tokens
        ids = torch.tensor([tok(text)["input_ids"]])
        with torch.no_grad():
            loss = float(model(input_ids=ids, labels=ids).loss)
        total += loss * (ids.shape[1] - 1)
        count += ids.shape[1] - 1
    one = perplexity(model, tok, texts, batch_size=1)
    batched = perplexity(model, tok, texts, batch_size=3)
    assert one.tokens == batched.tokens == count and one.texts == 3
    assert one.value == pytest.approx(math.exp(total / count), rel=1e-5)
    assert batched.value == pytest.approx(one.value, rel=1e-5)  # right padding: positions as if alone
    with pytest.raises(AdaptforgeError, match="none of the 1 texts has two tokens or more"):
        perplexity(model, tok, [""])
