"""Composing an adapter for a new task from k shots: shots, retrieval, LoraHub, few-shot aTLAS, Arrow, baselines.

Two small adapters (sst2, trec_question_type) are trained for real on the embedded MiniLM into a library shared by the
module, next to a random "distractor" of the same shape filed under subjectivity's description. The new
task is sst2 itself, so its own adapter is the one LoraHub and retrieval should find. Math checks use
deterministic synthetic deltas; the causal-LM path runs on the tiny random LLaMA.
"""

from __future__ import annotations

import math

import pytest
import torch
from helpers import small_task

from adaptforge.adapters import read_adapter, write_adapter
from adaptforge.compose import (
    COMPOSERS,
    ArrowRouter,
    Candidate,
    LoraHubObjective,
    LoraHubParams,
    arrow_prototype,
    compose,
    draw_shots,
    evaluate_composed,
    prototype_eval,
    rank_candidates,
    shot_losses,
    train_on_shots,
)
from adaptforge.compose.base import ComposeResult, encode_examples, mean_loss
from adaptforge.core import AdaptforgeError, LoraDelta, LoraModule
from adaptforge.evaluate import evaluate, predict_logits
from adaptforge.library import Library, TaskEntry
from adaptforge.lora.factors import fold
from adaptforge.pipelines.train import train_into_library
from adaptforge.provenance import read as made_by
from adaptforge.scorers import describe, make_scorer
from adaptforge.train.config import TrainConfig

CHEAP = {"lorahub": {"budget": 4}, "atlas": {"steps": 2}, "arrow": {}, "retrieval": {}, "tuned": {"epochs": 1}}


@pytest.fixture(scope="module")
def sst2():
    return small_task("sst2", n_train=64, n_test=48)


def random_like(delta: LoraDelta, seed: int) -> LoraDelta:
    """Random factors of ``delta``'s shapes, rescaled so every module's dW has the same norm as ``delta``'s."""
    g = torch.Generator().manual_seed(seed)
    modules = {}
    for name in delta:
        m = delta[name]
        A, B = torch.randn(m.A.shape, generator=g), torch.randn(m.B.shape, generator=g)
        ratio = float(m.dense().norm() / (B @ A).norm())
        modules[name] = LoraModule(A, B * ratio, 1.0)
    return LoraDelta(modules)


def synthetic(model: torch.nn.Module, suffixes: tuple[str, ...], n: int, rank: int = 2, std: float = 0.05):
    """``n`` deterministic random deltas on every linear module of ``model`` whose name ends with a suffix."""
    g = torch.Generator().manual_seed(1)
    names = [k for k, m in model.named_modules() if isinstance(m, torch.nn.Linear) and k.endswith(suffixes)]
    out = []
    for _ in range(n):
        modules = {}
        for name in names:
            w = dict(model.named_modules())[name].weight
            A = std * torch.randn(rank, w.shape[1], generator=g)
            modules[name] = LoraModule(A, std * torch.randn(w.shape[0], rank, generator=g), 2.0)
        out.append(LoraDelta(modules))
    return out


@pytest.fixture(scope="module")
def composer_lib(tmp_path_factory, minilm, minilm_scorer) -> Library:
    library = Library(tmp_path_factory.mktemp("compose") / "lib")
    cfg = TrainConfig(max_train=48, epochs=3, batch_size=16, rank=4, lr=1e-2, targets=("value",))
    for name in ("sst2", "trec_question_type"):
        short = name.split("_")[0]
        train_into_library(small_task(name, n_train=48, n_test=8), minilm, library, f"{short}-a", cfg, eval_splits=())
    distractor = random_like(library.load("sst2-a")[0], seed=0)
    subj = small_task("subjectivity", 8, 8)
    for name, method in (("subjectivity-x", "train"), ("merged-x", "ties")):
        library.add(
            distractor,
            name=name,
            base=minilm,
            task=TaskEntry(subj.name, description=subj.description, embedding=describe(minilm_scorer, subj)),
            provenance=None if method == "train" else made_by("merge", {"method": method}, {}),
        )
    return library


@pytest.fixture(scope="module")
def candidates(composer_lib) -> list[Candidate]:
    """trec, the distractor and sst2, in an order that does not favour sst2."""
    return [
        Candidate(n, composer_lib.load(n)[0], task=composer_lib.get(n).task)
        for n in ("trec-a", "subjectivity-x", "sst2-a")
    ]


# ----------------------------------------------------------------------------------------------- shots


def test_draw_shots_is_stratified_deterministic_and_explains_bad_requests():
    task = small_task("agnews", n_train=64, n_test=8)
    shots = draw_shots(task, 16, seed=3)
    assert shots.k == 16 and len(shots.holdout) == 4 and len(shots.fit) == 12
    assert shots == draw_shots(task, 16, seed=3) and shots != draw_shots(task, 16, seed=4)
    assert set(shots.examples) <= set(task.split("train")) and len(set(shots.examples)) == 16
    assert {e.label for e in shots.fit} == set(task.labels)  # every label keeps fit examples
    assert {e.label for e in shots.holdout} == set(task.labels)  # 4 held out of 4 labels x 4: one each
    assert len(draw_shots(task, 4, seed=0).holdout) == 0  # 4 labels x 1: never a label's last example
    assert draw_shots(task, 3).holdout == () and draw_shots(task, 3).k == 3
    empty = draw_shots(task.with_splits(train=None), 0)
    assert empty.k == 0 and empty.examples == () and empty.task is not None
    with pytest.raises(AdaptforgeError, match="task 'agnews' has only 64 examples in its 'train' split; cannot"):
        draw_shots(task, 65)
    with pytest.raises(AdaptforgeError, match="non-negative integer"):
        draw_shots(task, -1)
    with pytest.raises(AdaptforgeError, match="non-negative integer"):
        draw_shots(task, 2.0)  # type: ignore[arg-type]
    with pytest.raises(AdaptforgeError, match="task 'agnews' has no 'train' split to draw k=4"):
        draw_shots(task.with_splits(train=None), 4)
    one_label = task.with_splits(train=[e for e in task.split("train") if e.label == "Sports"])
    with pytest.raises(AdaptforgeError, match="at least 2 labels"):
        draw_shots(one_label, 4)


# ------------------------------------------------------------------------------------ contract, errors


def test_contract_errors(minilm_scorer, candidates, sst2):
    no_shots = draw_shots(sst2, 0)
    for method in ("lorahub", "atlas"):
        with pytest.raises(AdaptforgeError, match="needs k > 0 labelled examples.*use retrieval, arrow or generate"):
            compose(method, candidates, minilm_scorer, no_shots)
    with pytest.raises(AdaptforgeError, match="no candidate adapters to compose task 'sst2'.*compatible with base"):
        compose("arrow", [], minilm_scorer, no_shots)
    half = LoraDelta(dict(list(candidates[0].delta.modules.items())[:2]))
    with pytest.raises(AdaptforgeError, match="target different modules"):
        compose("arrow", [candidates[0], Candidate("half", half)], minilm_scorer, no_shots)
    with pytest.raises(AdaptforgeError, match="unknown parameter 'budgett'.*Did you mean 'budget'"):
        compose("lorahub", candidates, minilm_scorer, draw_shots(sst2, 4), {"budgett": 3})
    with pytest.raises(AdaptforgeError, match="lower < upper"):
        LoraHubParams(bounds=(1.0, -1.0))
    with pytest.raises(AdaptforgeError, match="unknown composer 'lorahb'.*Did you mean 'lorahub'"):
        compose("lorahb", candidates, minilm_scorer, no_shots)
    assert set(COMPOSERS.names()) >= {"retrieval", "lorahub", "atlas", "arrow"}


def test_every_composer_gives_an_adapter_that_stores_and_scores(tmp_path, minilm_scorer, candidates, sst2):
    shots = draw_shots(sst2, 4, seed=0)
    targets = candidates[0].delta.targets
    for method in COMPOSERS.names():
        result = compose(method, candidates, minilm_scorer, shots, {"seed": 1, **CHEAP.get(method, {})})
        assert result.info["method"] == method and result.info["seconds"] >= 0 and result.info["k"] == 4
        assert len(result.weights) == len(candidates) and all(math.isfinite(w) for w in result.weights)
        assert result.delta.targets == targets
        loaded, _ = read_adapter(write_adapter(result.delta, tmp_path / method, "minilm"))
        for name in targets:
            assert torch.isfinite(result.delta.dense(name)).all()
            torch.testing.assert_close(loaded.dense(name), result.delta.dense(name))
        ev = evaluate_composed(minilm_scorer, sst2, result, "test", limit=8, adapter=method)
        assert ev.n == 8 and 0.0 <= ev.accuracy <= 1.0 and math.isfinite(ev.loss)


# ----------------------------------------------------------------------------------------- retrieval


def test_retrieval_ranks_the_same_task_first(minilm_scorer, composer_lib, sst2):
    ranked = rank_candidates(composer_lib, minilm_scorer, sst2, n=5)
    assert [c.name for c in ranked][0] == "sst2-a" and ranked[0].similarity == pytest.approx(1.0, abs=1e-5)
    assert "merged-x" not in [c.name for c in ranked]  # only single-task trained adapters by default
    assert [c.name for c in rank_candidates(composer_lib, minilm_scorer, sst2, n=1)] == ["sst2-a"]
    others = rank_candidates(composer_lib, minilm_scorer, sst2, exclude_tasks={"sst2"})
    assert {c.name for c in others} == {"trec-a", "subjectivity-x"}
    shots = draw_shots(sst2, 8, seed=0)
    by_loss = rank_candidates(composer_lib, minilm_scorer, sst2, shots=shots)
    losses = [c.shot_loss for c in by_loss]
    assert by_loss[0].name == "sst2-a" and losses == sorted(losses)
    assert losses == pytest.approx(shot_losses(minilm_scorer, shots, [c.delta for c in by_loss]))
    chosen = compose("retrieval", list(reversed(by_loss)), minilm_scorer, shots)
    assert chosen.info["chosen"] == "sst2-a" and chosen.weights == [0.0, 0.0, 1.0]
    assert chosen.delta is by_loss[0].delta  # unchanged
    assert compose("retrieval", others, minilm_scorer, draw_shots(sst2, 0)).info["chosen"] == others[0].name
    with pytest.raises(AdaptforgeError, match="no candidate adapters for task 'sst2'"):
        rank_candidates(composer_lib, minilm_scorer, sst2, exclude_tasks={"sst2", "trec_question_type", "subjectivity"})


# ------------------------------------------------------------------------------------------- LoraHub


def test_lorahub_finds_the_tasks_own_adapter_and_its_objective_is_the_folded_model(
    minilm, minilm_scorer, candidates, sst2
):
    shots = draw_shots(sst2, 8, seed=0)
    deltas = [c.delta for c in candidates]
    result = compose("lorahub", candidates, minilm_scorer, shots, {"budget": 16, "seed": 0})
    w = result.weights
    assert max(range(3), key=lambda i: abs(w[i])) == 2, w  # sst2-a
    info = result.info
    assert info["evaluations"] == 17 and info["loss_curve"] == sorted(info["loss_curve"], reverse=True)
    assert info["shot_loss"] < info["initial_objective"]  # init 0 is the base model: no penalty
    # delta-space parity: the hooked objective is the loss of the folded adapter added to the weights
    encoded, labels = encode_examples(minilm_scorer, sst2, shots.examples)
    with minilm.applied(result.delta) as model, torch.no_grad():
        direct = float(mean_loss(minilm_scorer, model, encoded, labels))
    assert direct == pytest.approx(info["shot_loss"], rel=1e-4, abs=1e-5)
    with LoraHubObjective(minilm_scorer, shots, deltas, alpha=0.05) as objective:
        probe = [0.3, -0.7, 1.1]
        hooked = objective.shot_loss(probe)
        assert objective(probe) == pytest.approx(hooked + 0.05 * 2.1)
    with minilm.applied(fold(deltas, torch.tensor([probe]).expand(len(deltas[0]), -1))) as model, torch.no_grad():
        assert float(mean_loss(minilm_scorer, model, encoded, labels)) == pytest.approx(hooked, rel=1e-4, abs=1e-5)
    # seeded: the same weights again; another seed searches elsewhere
    small = {"budget": 9, "seed": 5}  # past the first CMA generation (7 for 3 weights)
    first = compose("lorahub", candidates, minilm_scorer, shots, small)
    assert compose("lorahub", candidates, minilm_scorer, shots, small).weights == first.weights
    assert compose("lorahub", candidates, minilm_scorer, shots, {**small, "seed": 6}).weights != first.weights


# --------------------------------------------------------------------------------------------- aTLAS


def test_atlas_few_shot_lowers_the_loss_and_keeps_the_best_holdout_coefficients(
    minilm, minilm_scorer, candidates, sst2
):
    shots = draw_shots(sst2, 16, seed=1)
    steady = compose("atlas", candidates, minilm_scorer, shots, {"steps": 4, "lr": 0.05})
    curve = steady.info["loss_curve"]
    assert len(curve) == 4 and curve[-1] < curve[0]  # full-batch Adam on 12 fit shots
    assert steady.info["holdout_curve"][steady.info["best_step"]] == min(steady.info["holdout_curve"])
    # a large step overshoots: training stops after `patience` steps without a better held-out loss,
    # and the result is the best coefficients seen, not the last
    wild = compose("atlas", candidates, minilm_scorer, shots, {"steps": 20, "lr": 3.0, "patience": 2})
    info = wild.info
    held = info["holdout_curve"]
    assert info["stopped_early"] and info["steps_run"] < 20 and held[info["best_step"]] == min(held)
    assert info["best_step"] == info["steps_run"] - 2
    coef = torch.tensor([info["coefficients"][name] for name in candidates[0].delta])
    assert torch.allclose(coef.mean(dim=0), torch.tensor(wild.weights), atol=1e-4)
    encoded, labels = encode_examples(minilm_scorer, sst2, shots.holdout)
    with minilm.applied(wild.delta) as model, torch.no_grad():
        assert float(mean_loss(minilm_scorer, model, encoded, labels)) == pytest.approx(min(held), rel=1e-3, abs=1e-4)


def test_tuned_is_the_inner_adapter_plus_a_lora_that_lowers_the_shot_loss(minilm, minilm_scorer, candidates, sst2):
    shots = draw_shots(sst2, 16, seed=2)
    inner = compose("retrieval", candidates, minilm_scorer, shots, {"seed": 0})
    tuned = compose("tuned", candidates, minilm_scorer, shots, {"seed": 0, "epochs": 3, "lr": 5e-3})
    assert tuned.info["inner"]["chosen"] == inner.info["chosen"] and tuned.weights == inner.weights
    assert tuned.info["tune"]["steps"] == 6 and tuned.info["tune"]["config"]["targets"] == inner.delta.targets
    encoded, labels = encode_examples(minilm_scorer, sst2, shots.examples)
    losses = []
    for delta in (inner.delta, tuned.delta):
        with minilm.applied(delta) as model, torch.no_grad():
            losses.append(float(mean_loss(minilm_scorer, model, encoded, labels)))
    assert losses[1] < losses[0]
    # the stored adapter is the inner one exactly plus the trained one: rank r_inner + r_tuned per module
    for name in inner.delta:
        assert tuned.delta[name].rank == inner.delta[name].rank + 8
    with pytest.raises(AdaptforgeError, match="'inner' must be one of"):
        compose("tuned", candidates, minilm_scorer, shots, {"inner": "arrow"})


# --------------------------------------------------------------------------------------------- Arrow


def test_arrow_prototypes_and_gates_by_hand():
    g = torch.Generator().manual_seed(0)
    module = LoraModule(torch.randn(3, 12, generator=g), torch.randn(9, 3, generator=g), 0.5)
    _, _, vh = torch.linalg.svd(module.dense().double())
    v = arrow_prototype(module)
    assert abs(float(v.double() @ vh[0])) == pytest.approx(1.0, abs=1e-5)  # top right singular vector, any sign
    deltas = [LoraDelta({"m": LoraModule(torch.randn(2, 12, generator=g), torch.randn(9, 2, generator=g), 1.0)})]
    deltas += [LoraDelta({"m": LoraModule(torch.randn(2, 12, generator=g), torch.randn(9, 2, generator=g), 1.0)})]
    deltas += [LoraDelta({"m": module})]
    routing = ArrowRouter(deltas, top_k=2, temperature=0.5)
    x = torch.randn(4, 7, 12, generator=g)
    gates = routing.gates("m", x)
    assert gates.shape == (4, 7, 3)
    torch.testing.assert_close(gates.sum(-1), torch.ones(4, 7))
    assert ((gates > 0).sum(-1) == 2).all()
    protos = routing.prototypes["m"]
    for j in range(3):
        aligned = -5.0 * protos[j]  # sign-invariant
        assert int(routing.gates("m", aligned).argmax()) == j
        assert int(ArrowRouter(deltas, top_k=1).gates("m", aligned).argmax()) == j
    assert routing.describe() == {"router": "arrow", "top_k": 2, "temperature": 0.5, "adapters": 3}


def test_arrow_single_adapter_and_flat_routing_match_static_deltas(minilm, minilm_scorer, candidates, sst2):
    one = ArrowRouter([candidates[2].delta], top_k=1)
    with one.applied(minilm.model) as model:
        routed, _ = predict_logits(minilm_scorer, sst2, "test", model, limit=16)
    with minilm.applied(candidates[2].delta) as model:
        expected, _ = predict_logits(minilm_scorer, sst2, "test", model, limit=16)
    torch.testing.assert_close(routed, expected, rtol=1e-4, atol=1e-4)
    # every adapter kept with a flat softmax: the per-token mixture is the uniform mean, i.e. the fallback
    flat = compose("arrow", candidates, minilm_scorer, draw_shots(sst2, 0), {"top_k": 3, "temperature": 1e9})
    assert flat.router is not None and flat.weights == pytest.approx([1 / 3] * 3)
    routed_eval = evaluate_composed(minilm_scorer, sst2, flat, "test", limit=16)
    static = evaluate_composed(minilm_scorer, sst2, ComposeResult(flat.delta, flat.weights), "test", limit=16)
    assert routed_eval.loss == pytest.approx(static.loss, rel=1e-4, abs=1e-5)
    assert evaluate(minilm_scorer, sst2, "test", None, limit=4).n == 4  # hooks removed


# ------------------------------------------------------------------------------------------ baselines


def test_prototype_baseline_beats_chance(minilm_scorer):
    task = small_task("agnews", n_train=64, n_test=32)
    few = prototype_eval(minilm_scorer, task, draw_shots(task, 16, seed=0), "test")
    assert few.n == 32 and few.accuracy > 0.5  # chance is 0.25
    zero = prototype_eval(minilm_scorer, task, draw_shots(task, 0), "test", limit=16)  # label-name embeddings
    assert zero.accuracy > 0.25
    with pytest.raises(AdaptforgeError, match="draw the shots from the task being evaluated"):
        prototype_eval(minilm_scorer, small_task("sst2", 8, 8), draw_shots(task, 4), "test")


# ------------------------------------------------------------------------------------------ causal LM


def test_every_method_runs_on_a_causal_lm(tiny_llama):
    causal = make_scorer(tiny_llama)
    task = small_task("sst2", n_train=32, n_test=8)
    shots = draw_shots(task, 8, seed=0)
    deltas = synthetic(tiny_llama.model, ("q_proj", "v_proj"), 3)
    cands = [Candidate(f"c{i}", d) for i, d in enumerate(deltas)]
    for method in COMPOSERS.names():
        result = compose(method, cands, causal, shots, CHEAP.get(method, {}))
        ev = evaluate_composed(causal, task, result, "test", limit=8)
        assert ev.n == 8 and math.isfinite(ev.loss) and len(result.weights) == 3
    arrow = ArrowRouter(deltas[:1], top_k=1)
    with arrow.applied(tiny_llama.model) as model:
        routed, _ = predict_logits(causal, task, "test", model, limit=4)
    with tiny_llama.applied(deltas[0]) as model:
        expected, _ = predict_logits(causal, task, "test", model, limit=4)
    torch.testing.assert_close(routed, expected, rtol=1e-4, atol=1e-4)
    assert prototype_eval(causal, task, shots, "test", limit=8).n == 8
    delta = train_on_shots(tiny_llama, shots, TrainConfig(epochs=1, batch_size=8, checkpoint_every=0)).delta
    suffixes = tiny_llama.default_targets()
    assert set(delta.targets) == {n for n, _ in tiny_llama.model.named_modules() if n.endswith(suffixes)}
    with pytest.raises(AdaptforgeError, match="no shots"):
        train_on_shots(tiny_llama, draw_shots(task, 0))
