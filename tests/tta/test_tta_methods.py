"""Test-time methods on the real MiniLM (with a trained adapter) and the tiny random LLaMA: every method runs at
every granularity and puts the model back exactly; streams resume and reset; sessions never see labels; the
adapter a stream ends with is what it predicted with; bad params are refused naming the field."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from helpers import random_delta, small_task

from adaptforge.core import AdaptforgeError, LoraDelta
from adaptforge.scorers import make_scorer
from adaptforge.tta import TTA_METHODS, GradientParams, Stream, TtaSetup, encode_inputs, run_tta
from adaptforge.tta.base import AnchorGuard, CollapseWatch
from adaptforge.tta.tunable import norm_parameters

METHODS = TTA_METHODS.names()
# the smallest settings that still exercise each method's whole path (filters open, a vote, a neighbour, ...)
QUICK: dict[str, dict] = {
    "tent": {},
    "eata": {"e_margin": 1.0, "d_margin": 1.0},
    "sar": {"e_margin": 1.0},
    "pseudo": {"steps": 1, "samples": 2, "agreement": 0.5},
    "input-lora": {"steps": 1, "views": 1},
    "ttt-nn": {"neighbours": 2, "pool_per_task": 6},
    "atlas-unsup": {"steps": 1, "candidates": 1},
    "em-prior": {},
}


def short_texts(name: str, n: int) -> list[str]:
    task = small_task(name, n_train=8, n_test=40)
    return sorted((e.text for e in task.split("test")), key=len)[:n]


@pytest.fixture(scope="module")
def encoder(minilm, trained_library):
    """MiniLM, sst2-a (a trained adapter), another library adapter as a candidate, and agnews as a pool."""
    lib, _ = trained_library
    adapter, _ = lib.load("sst2-a")
    other, _ = lib.load("subjectivity-a")
    task = small_task("movie_review", n_train=8, n_test=8)
    source = small_task("movie_review", 16, 8, seed=1)  # em-prior's source prior needs movie_review's labels
    pool = [small_task("sst2", 16, 8)]
    setup = TtaSetup(make_scorer(minilm), task, adapter, [("subjectivity-a", other)], pool, source=source)
    return setup, short_texts("movie_review", 6)


@pytest.fixture(scope="module")
def llama(tiny_llama):
    names = {
        f"model.layers.{i}.self_attn.{m}": shape
        for i in range(2)
        for m, shape in (("q_proj", (64, 64)), ("v_proj", (32, 64)))
    }
    adapter = random_delta(names, rank=2, scale=1.0, std=0.1)
    other = random_delta(names, rank=2, scale=1.0, std=0.1, seed=1)
    task = small_task("sst2", n_train=8, n_test=8)
    setup = TtaSetup(
        make_scorer(tiny_llama), task, adapter, [("other", other)], [small_task("agnews", 8, 4)], source=task
    )
    return setup, short_texts("sst2", 4)


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def plain(setup: TtaSetup, texts: list[str]) -> torch.Tensor:
    scorer = setup.scorer
    with torch.no_grad(), scorer.backbone.applied(setup.adapter) as model:
        inputs = encode_inputs(scorer, setup.task, texts)
        return scorer.logits(model, inputs.batch(), scorer.label_context(model, scorer.encode_labels(setup.task)))


def check_run(setup: TtaSetup, texts: list[str], name: str, granularity: str, **extra) -> torch.Tensor:
    model = setup.scorer.backbone.model
    before = weights(model)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    method = TTA_METHODS.get(name)()
    if not issubclass(method.params_type, GradientParams):  # em-prior: no lr to set
        extra.pop("lr", None)
    run = run_tta(method, setup, texts, {**QUICK[name], **extra}, granularity=granularity, batch_size=2)
    assert run.logits.shape == (len(texts), len(setup.task.labels))
    assert torch.isfinite(run.logits).all()
    assert run.units == (len(texts) if granularity == "input" else (len(texts) + 1) // 2)
    after = weights(model)
    assert all(torch.equal(before[k], after[k]) for k in before), f"{name} left the base model changed"
    assert flags == {n: p.requires_grad for n, p in model.named_parameters()}
    assert all(p.grad is None for p in model.parameters()), f"{name} left gradients on the base model"
    assert not model.training
    return run.logits


@pytest.mark.parametrize("name", METHODS)
def test_every_method_adapts_on_the_encoder_and_restores_the_model(encoder, name):
    setup, texts = encoder
    granularity = TTA_METHODS.get(name).default_granularity
    logits = check_run(setup, texts, name, granularity, lr=0.05)
    assert not torch.allclose(logits, plain(setup, texts), atol=1e-4), f"{name} changed no prediction score"


@pytest.mark.parametrize("name", METHODS)
def test_every_method_adapts_on_tiny_llama(llama, name):
    setup, texts = llama
    logits = check_run(setup, texts, name, "batch", lr=0.05)
    assert not torch.allclose(logits, plain(setup, texts), atol=1e-5)


@pytest.mark.parametrize(("name", "params"), [("input-lora", {"objective": "lm"}), ("ttt-nn", {"objective": "lm"})])
def test_language_model_objectives_on_tiny_llama(llama, name, params):
    setup, texts = llama
    check_run(setup, texts, name, "input", **params)


def test_sessions_see_no_labels(encoder):
    setup, texts = encoder
    assert setup.task.splits == {} and setup.task.labels == ("negative", "positive")
    assert all(set(t.splits) == {"train"} for t in setup.pool)
    assert setup.source is not None and set(setup.source.splits) == {"train"}
    inputs = encode_inputs(setup.scorer, setup.task, texts)
    assert set(inputs.encoded.targets) == {-1}  # a loss that read them would fail
    with pytest.raises(IndexError):
        torch.nn.functional.cross_entropy(plain(setup, texts), inputs.batch().targets)


def test_a_stream_fed_in_pieces_resumes_where_it_stopped(encoder):
    setup, texts = encoder
    method = TTA_METHODS.get("tent")()
    params = method.parse_params({"update": "lora", "lr": 0.05})
    whole = run_tta(method, setup, texts, params, granularity="stream", batch_size=2)
    inputs = encode_inputs(setup.scorer, setup.task, texts)
    with method.open(setup, params) as session:
        stream = Stream(session, batch_size=2)
        first = stream.feed(inputs.subset(range(4)))
        second = stream.feed(inputs.subset(range(4, 6)))
        end = session.delta()
    assert torch.allclose(torch.cat([first.logits, second.logits]), whole.logits, atol=1e-5)
    assert end is not None and whole.delta is not None
    for name in end:
        assert torch.allclose(end[name].A, whole.delta[name].A, atol=1e-6)


@pytest.mark.parametrize("name", ["tent", "eata"])
def test_a_stream_that_resets_after_every_batch_is_batch_mode(encoder, name):
    """With a collapse detected after every batch (window = batch, any majority), each batch starts from the
    task adapter again, with a fresh optimizer and method state: exactly what batch granularity does."""
    setup, texts = encoder
    method = TTA_METHODS.get(name)()
    params = {**QUICK[name], "lr": 0.05, "reset_window": 2, "collapse_fraction": 0.01, "anchor_agreement": 0.0}
    stream = run_tta(method, setup, texts, params, granularity="stream", batch_size=2)
    batch = run_tta(method, setup, texts, params, granularity="batch", batch_size=2)
    assert stream.resets == 3
    assert torch.allclose(stream.logits, batch.logits, atol=1e-5)
    never = run_tta(method, setup, texts, {**params, "reset_window": 0}, granularity="stream", batch_size=2)
    assert never.resets == 0
    assert not torch.allclose(never.logits, batch.logits, atol=1e-5)


def test_collapse_watch_fires_on_a_full_window_dominated_by_one_class():
    watch = CollapseWatch(window=4, fraction=0.9)
    assert not watch.collapsed([1, 1, 1])  # window not full yet
    assert watch.collapsed([1])  # 4 of 4
    assert not watch.collapsed([1, 1, 1])  # starts over after a reset
    assert not watch.collapsed([0])  # 3 of 4 = 0.75
    assert not CollapseWatch(window=0, fraction=0.5).collapsed([1] * 100)


def test_anchor_guard_measures_agreement_since_the_last_reset_over_its_window():
    guard = AnchorGuard(agreement=0.75, window=4)
    assert not guard.drifted([0, 1], [0, 1])  # 2 of 2
    assert not guard.drifted([0, 1], [0, 0])  # 3 of 4
    assert guard.drifted([1], [0])  # the last 4: 2 of 4 agree
    assert not guard.drifted([0], [0])  # starts over after a reset: 1 of 1
    assert guard.drifted([0], [1])  # 1 of 2


def test_the_anchor_guard_resets_a_drifting_stream_to_the_source_state_exactly(encoder):
    """A stream made to drift (tent on the adapter's factors at a large learning rate), with a guard that fires on
    any disagreement with the unadapted model: when it fires, the factors are the adapter's again bit for bit, the
    optimizer is fresh, and the batch that drifted is predicted by the unadapted model."""
    setup, texts = encoder
    method = TTA_METHODS.get("tent")()
    params = method.parse_params({"update": "lora", "last_blocks": 0, "lr": 0.5, "anchor_agreement": 1.0})
    inputs = encode_inputs(setup.scorer, setup.task, texts)
    source = plain(setup, texts)
    fired = []
    with method.open(setup, params) as session:
        start = [torch.cat([setup.adapter[n].A.flatten(), setup.adapter[n].B.flatten()]) for n in setup.adapter]
        stream = Stream(session, batch_size=2)
        for i in range(0, len(texts), 2):
            chunk = stream.feed(inputs.subset(range(i, i + 2)))
            if chunk.drifts:
                fired.append(i)
                assert chunk.resets == 1 and session.at_start()
                delta = session.delta()
                assert delta is not None
                now = [torch.cat([delta[n].A.flatten(), delta[n].B.flatten()]) for n in setup.adapter]
                assert all(torch.equal(a, b.float()) for a, b in zip(now, start, strict=True))
                assert session.optimizer is not None and not session.optimizer.state
                assert torch.allclose(chunk.logits, source[i : i + 2].float(), atol=1e-4)
    assert fired, "the stream never drifted: raise the learning rate"
    assert stream.drifts == len(fired)
    off = run_tta(
        method, setup, texts, {"update": "lora", "last_blocks": 0, "lr": 0.5}, granularity="stream", batch_size=2
    )
    assert off.drifts == 0 and off.resets == 0


def test_sar_recovery_resets_and_is_counted(encoder):
    setup, texts = encoder
    run = run_tta(
        TTA_METHODS.get("sar")(), setup, texts, {"e_margin": 1.0, "recover": 1.0}, granularity="batch", batch_size=2
    )
    assert run.resets == 3


def test_input_granularity_discards_each_adaptation(encoder):
    """An input's adapted prediction does not depend on the inputs before it: the delta is reset and the random
    stream re-seeded after each one."""
    setup, texts = encoder
    method = TTA_METHODS.get("input-lora")()
    params = {**QUICK["input-lora"], "lr": 0.05}
    together = run_tta(method, setup, texts[:3], params, granularity="input")
    alone = run_tta(method, setup, texts[2:3], params, granularity="input")
    assert torch.allclose(together.logits[2], alone.logits[0], atol=1e-5)


@pytest.mark.parametrize(("name", "params"), [("tent", {"update": "lora"}), ("input-lora", {}), ("atlas-unsup", {})])
def test_the_stream_adapter_is_what_the_stream_predicted_with(encoder, name, params):
    """The adapter a stream ends with, added to the base weights, gives the last batch's predictions: the hooks,
    the factor concatenation (input-lora) and the coefficient fold (atlas-unsup) agree."""
    setup, texts = encoder
    run = run_tta(
        TTA_METHODS.get(name)(), setup, texts, {**QUICK[name], **params, "lr": 0.05}, granularity="stream", batch_size=2
    )
    assert isinstance(run.delta, LoraDelta)
    stored = TtaSetup(setup.scorer, setup.task, run.delta)
    assert torch.allclose(plain(stored, texts[-2:]), run.logits[-2:], atol=1e-3)


def test_norm_updates_cannot_be_saved_and_lora_updates_can(encoder):
    tent = TTA_METHODS.get("tent")()
    assert "update=lora" in tent.unsaved_reason(tent.parse_params({"update": "norm"}))
    assert tent.unsaved_reason(tent.parse_params({"update": "lora"})) is None
    assert len(norm_parameters(encoder[0].scorer.backbone.model)) == 2 * 13  # 13 LayerNorms, weight and bias


def test_bad_params_and_setups_are_refused(encoder, llama):
    setup, texts = encoder
    tent = TTA_METHODS.get("tent")()
    with pytest.raises(AdaptforgeError, match=r"tta method 'tent': 'steps' must be >= 1, got 0"):
        tent.parse_params({"steps": 0})
    for lr in (0, -1e-3):
        with pytest.raises(AdaptforgeError, match=r"'lr' must be (a finite number )?> 0"):
            tent.parse_params({"lr": lr})
    with pytest.raises(AdaptforgeError, match=r"'update' must be one of 'norm', 'lora'"):
        tent.parse_params({"update": "all"})
    with pytest.raises(AdaptforgeError, match=r"unknown tta method 'tnet'.*Did you mean 'tent'"):
        TTA_METHODS.get("tnet")
    with pytest.raises(AdaptforgeError, match="--granularity must be one of input, batch, stream"):
        run_tta(tent, setup, texts, granularity="epoch")
    with pytest.raises(AdaptforgeError, match="--batch-size must be a positive integer"):
        run_tta(tent, setup, texts, granularity="batch", batch_size=0)
    no_pool = TtaSetup(setup.scorer, setup.task, setup.adapter)
    with pytest.raises(AdaptforgeError, match="ttt-nn' retrieves neighbours.*--pool"):
        run_tta(TTA_METHODS.get("ttt-nn")(), no_pool, texts)
    with pytest.raises(AdaptforgeError, match="objective 'lm' needs a causal LM"):
        run_tta(TTA_METHODS.get("input-lora")(), setup, texts, {"objective": "lm"})
    odd = TtaSetup(
        setup.scorer, setup.task, setup.adapter, [("odd", random_delta(["encoder.layer.0.attention.self.query"]))]
    )
    with pytest.raises(AdaptforgeError, match="candidate 'odd' targets other modules"):
        run_tta(TTA_METHODS.get("atlas-unsup")(), odd, texts)
    llama_setup, _ = llama
    with pytest.raises(AdaptforgeError, match="target module .* does not exist"):
        run_tta(tent, TtaSetup(setup.scorer, setup.task, llama_setup.adapter), texts, {"update": "lora"})


def adapted_once(setup: TtaSetup, texts: list[str], params: dict) -> tuple[dict[str, bool], dict[str, bool]]:
    """One tent batch inside a session: which of the model's parameters (by path) took a gradient, and which
    changed; and the LoRA factors' change per module when ``update=lora`` (from the session's delta)."""
    tent = TTA_METHODS.get("tent")()
    model = setup.scorer.backbone.model
    with tent.open(setup, tent.parse_params({"lr": 0.05, **params})) as session:
        before = weights(model)
        session.adapt(encode_inputs(setup.scorer, setup.task, texts))
        graded = {n: p.grad is not None for n, p in model.named_parameters()}
        changed = {n: not torch.equal(before[n], p) for n, p in model.named_parameters()}
        delta = session.delta()
    if delta is not None:
        changed = {n: not torch.equal(delta[n].B, setup.adapter[n].B) for n in delta}
    return graded, changed


def test_last_blocks_updates_only_the_top_blocks_and_the_final_norm(encoder, llama):
    """The backward pass stops at the first updated block: norms below it get no gradient and stay put."""
    setup, texts = encoder
    graded, changed = adapted_once(setup, texts, {"last_blocks": 1})
    top = {n for n in graded if n.startswith("encoder.layer.5.") and "LayerNorm" in n}
    assert len(top) == 4 and {n for n, g in graded.items() if g} == top
    assert {n for n, c in changed.items() if c} == top
    graded, _ = adapted_once(setup, texts, {"last_blocks": 0})
    assert sum(graded.values()) == 26  # every norm, the embedding LayerNorm included
    # tiny LLaMA: the last block's two RMSNorms and the final norm after the blocks
    setup, texts = llama
    graded, _ = adapted_once(setup, texts, {"last_blocks": 1})
    assert {n for n, g in graded.items() if g} == {
        "model.layers.1.input_layernorm.weight", "model.layers.1.post_attention_layernorm.weight", "model.norm.weight"
    }  # fmt: skip
    _, changed = adapted_once(setup, texts, {"last_blocks": 1, "update": "lora"})
    assert {n for n, c in changed.items() if c} == {n for n in setup.adapter if n.startswith("model.layers.1.")}
    with pytest.raises(AdaptforgeError, match=r"last_blocks=3: .* has 2 transformer blocks \('model.layers'\); use 0"):
        adapted_once(setup, texts, {"last_blocks": 3})


@contextmanager
def input_batch_sizes(setup: TtaSetup) -> Iterator[list[int]]:
    """The row count of every forward pass of the model while inside (the encoder's label passes have 2 rows)."""
    sizes: list[int] = []
    handle = setup.scorer.backbone.model.register_forward_hook(
        lambda module, args, kwargs, out: sizes.append(len(kwargs["input_ids"])), with_kwargs=True
    )
    try:
        yield sizes
    finally:
        handle.remove()


@pytest.mark.parametrize(
    ("name", "params", "passes"),
    [
        ("tent", {}, 2),  # one forward pass with gradients, one to predict after the update
        ("tent", {"online": True}, 1),  # TENT's protocol: the update's own forward pass predicts
        ("eata", {"e_margin": 1e-6}, 1),  # no input is reliable: no update, the first pass is the prediction
    ],
)
def test_no_forward_pass_is_repeated_at_unchanged_parameters(encoder, name, params, passes):
    """Forward passes over the inputs per batch (the encoder's label passes are separate, 2-row calls)."""
    setup, texts = encoder
    with input_batch_sizes(setup) as sizes:
        run_tta(TTA_METHODS.get(name)(), setup, texts, params, granularity="batch", batch_size=3)
    assert sizes.count(3) == passes * 2  # two batches of 3 inputs


@pytest.mark.parametrize(("params", "passes"), [({"e_margin": 1e-6}, 1), ({"e_margin": 1.0, "d_margin": 1.0}, 3)])
def test_the_anchor_guard_adds_a_forward_pass_only_once_the_state_has_moved(encoder, params, passes):
    """eata in a stream with its guard on: with no reliable input nothing updates and the one forward pass is both
    the prediction and the source's; once updates happen, each batch also pays the guard's pass at the starting
    state (forward with gradients, prediction after the update, source)."""
    setup, texts = encoder
    with input_batch_sizes(setup) as sizes:
        run = run_tta(
            TTA_METHODS.get("eata")(), setup, texts, {**params, "anchor_agreement": 0.01, "lr": 1e-4},
            granularity="stream", batch_size=3,
        )  # fmt: skip
    assert run.drifts == 0
    assert sizes.count(3) == passes * 2  # two batches of 3 inputs
