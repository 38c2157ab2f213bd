"""Merge methods against PEFT's ``add_weighted_adapter``, and the contract every registered method keeps.

Parity: a tiny random BERT gets three PEFT LoRA adapters (ranks 4, 8, 4; one with rsLoRA, all with
non-trivial alpha; ``lora_B`` randomized), which are saved and read back with
:func:`adaptforge.adapters.read_adapter`. PEFT merges them with each combination type and the dense
delta of the new adapter (``get_delta_weight``) is compared per module with ours.
"""

from __future__ import annotations

import itertools
import logging
import math

import pytest
import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import LoraLayer
from transformers import BertConfig, BertModel

from adaptforge.adapters import read_adapter, write_adapter
from adaptforge.core import LoraDelta, LoraModule
from adaptforge.merge import MERGE_METHODS, merge

# All targets have min(out, in) = 32, so svd_rank=32 is a full-rank (exact) re-factoring everywhere.
# Sorted module names follow the model's module order here, so seeded random drops are drawn in the
# same order as PEFT draws them (see test_dare_masks_match_peft_given_the_same_random_stream).
TARGETS = ["query", "value", "intermediate.dense"]
FULL = 32
PREFIX = "base_model.model."
_names = (f"merged{i}" for i in itertools.count())


@pytest.fixture(scope="module")
def peft_setup(tmp_path_factory):
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=32,
    )
    model = get_peft_model(BertModel(config), LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS), "t1")
    model.add_adapter("t2", LoraConfig(r=8, lora_alpha=16, use_rslora=True, target_modules=TARGETS))
    model.add_adapter("t3", LoraConfig(r=4, lora_alpha=2, target_modules=TARGETS))
    for module in model.modules():
        if isinstance(module, LoraLayer):
            for name in module.lora_B:
                torch.nn.init.normal_(module.lora_B[name].weight, std=0.2)
    folder = tmp_path_factory.mktemp("peft")
    model.save_pretrained(folder, selected_adapters=["t1", "t2", "t3"])
    ours = {name: read_adapter(folder / name)[0] for name in ("t1", "t2", "t3")}
    return model, ours


def peft_merge(model, adapters: list[str], weights: list[float], combination_type: str, **kwargs) -> dict:
    """PEFT's merged dense deltas per module (our module names); the merged adapter is deleted again."""
    name = next(_names)
    model.add_weighted_adapter(adapters, weights, name, combination_type=combination_type, **kwargs)
    out = {
        n.removeprefix(PREFIX): m.get_delta_weight(name).detach().clone()
        for n, m in model.named_modules()
        if isinstance(m, LoraLayer) and name in m.lora_A
    }
    model.delete_adapter(name)
    return out


def rel_errors(ours: LoraDelta, theirs: dict[str, torch.Tensor]) -> dict[str, float]:
    assert sorted(theirs) == ours.targets
    return {n: ((ours.dense(n) - t).norm() / t.norm()).item() for n, t in theirs.items()}


def assert_parity(ours: LoraDelta, theirs: dict[str, torch.Tensor], tol: float = 1e-5) -> None:
    errors = rel_errors(ours, theirs)
    logging.getLogger(__name__).info("max relative error vs PEFT: %.2e", max(errors.values()))
    assert max(errors.values()) <= tol, errors


def test_peft_adapters_read_back_exactly(peft_setup):
    model, ours = peft_setup
    layers = {n.removeprefix(PREFIX): m for n, m in model.named_modules() if isinstance(m, LoraLayer)}
    assert ours["t2"].ranks == dict.fromkeys(layers, 8)
    for name, layer in layers.items():
        for adapter in ("t1", "t2", "t3"):
            torch.testing.assert_close(ours[adapter].dense(name), layer.get_delta_weight(adapter))
    assert ours["t2"][next(iter(layers))].scale == pytest.approx(16 / math.sqrt(8))


# (our method, our params, PEFT combination type, PEFT kwargs, adapters); weights are shared per case.
CASES = [
    ("task_arithmetic", {}, "cat", {}, ["t1", "t2", "t3"]),
    ("task_arithmetic", {"rank": 16}, "svd", {"svd_rank": 16}, ["t1", "t2", "t3"]),  # 16 = sum of ranks: exact
    ("linear_factors", {}, "linear", {}, ["t1", "t3"]),  # PEFT needs equal ranks here
    ("ties", {"density": 0.4, "rank": FULL}, "ties_svd", {"density": 0.4, "svd_rank": FULL}, ["t1", "t2", "t3"]),
    (
        "ties",
        {"density": 0.3, "majority_sign": "count", "rank": FULL},
        "ties_svd",
        {"density": 0.3, "majority_sign_method": "frequency", "svd_rank": FULL},
        ["t1", "t2", "t3"],
    ),
    (
        "magnitude_prune",
        {"density": 0.5, "rank": FULL},
        "magnitude_prune_svd",
        {"density": 0.5, "svd_rank": FULL},
        ["t1", "t2", "t3"],
    ),
    ("ties_factors", {"density": 0.5}, "ties", {"density": 0.5}, ["t1", "t3"]),
    (
        "ties_factors",
        {"density": 0.3, "majority_sign": "count"},
        "ties",
        {"density": 0.3, "majority_sign_method": "frequency"},
        ["t1", "t3"],
    ),
    ("magnitude_prune_factors", {"density": 0.6}, "magnitude_prune", {"density": 0.6}, ["t1", "t3"]),
]


@pytest.mark.parametrize(
    ("method", "params", "ctype", "kwargs", "adapters"), CASES, ids=[f"{c[0]}~{c[2]}" for c in CASES]
)
def test_deterministic_methods_match_peft(peft_setup, method, params, ctype, kwargs, adapters):
    model, ours = peft_setup
    weights = [0.7, -0.4, 1.3][: len(adapters)]
    result = merge(method, [ours[a] for a in adapters], {"weights": weights, **params})
    assert_parity(result.delta, peft_merge(model, adapters, weights, ctype, **kwargs))


def test_truncated_svd_matches_peft_and_reports_its_error(peft_setup):
    """Below full rank both truncate the same matrix; the SVD is unique up to the singular gap."""
    model, ours = peft_setup
    weights, adapters = [0.7, -0.4, 1.3], ["t1", "t2", "t3"]
    deltas = [ours[a] for a in adapters]
    for method, params, ctype, kwargs in [
        ("task_arithmetic", {}, "svd", {}),  # PEFT's default: the largest input rank (8)
        ("ties", {"density": 0.4}, "ties_svd", {"density": 0.4}),
    ]:
        result = merge(method, deltas, {"weights": weights, "rank": 8, **params})
        assert_parity(result.delta, peft_merge(model, adapters, weights, ctype, **kwargs), tol=1e-4)
        full = merge(method, deltas, {"weights": weights, "rank": FULL, **params}).delta
        for name, err in result.reconstruction_error.items():
            exact = full.dense(name).double()
            assert err == pytest.approx(((result.delta.dense(name) - exact).norm() / exact.norm()).item(), rel=1e-3)
            assert 0 < err < 1


class _RoutedBernoulli:
    """Stands in for ``torch.bernoulli`` and draws from a generator seeded as our DARE methods seed theirs."""

    def __init__(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)
        self.original = torch.bernoulli

    def __call__(self, input, *args, **kwargs):  # noqa: A002 - torch's argument name
        return self.original(input, generator=self.generator)


@pytest.mark.parametrize(
    ("method", "ctype", "adapters", "extra"),
    [
        ("dare_linear", "dare_linear_svd", ["t1", "t2", "t3"], {"svd_rank": FULL}),
        ("dare_ties", "dare_ties_svd", ["t1", "t2", "t3"], {"svd_rank": FULL}),
        ("dare_linear_factors", "dare_linear", ["t1", "t3"], {}),
        ("dare_ties_factors", "dare_ties", ["t1", "t3"], {}),
    ],
)
def test_dare_masks_match_peft_given_the_same_random_stream(peft_setup, monkeypatch, method, ctype, adapters, extra):
    """PEFT's DARE draws its masks with ``torch.bernoulli`` from torch's *global* RNG, and
    ``add_weighted_adapter`` first initializes the new adapter's ``lora_A`` (kaiming uniform) from that
    same RNG, so ``torch.manual_seed(seed)`` before the call cannot reproduce our seeded masks (the
    stream is already advanced by an amount that depends on the model). Routing PEFT's Bernoulli draws
    through a ``torch.Generator`` seeded like ours makes both consume one stream in the same order
    (module by module, adapter by adapter; in factor space all A's then all B's), and the results then
    agree to float precision. The statistical properties are checked in the next test."""
    model, ours = peft_setup
    weights = [0.7, -0.4, 1.3][: len(adapters)]
    params = {"weights": weights, "density": 0.4, "seed": 11} | ({"rank": FULL} if "svd_rank" in extra else {})
    result = merge(method, [ours[a] for a in adapters], params)
    with monkeypatch.context() as patch:
        patch.setattr(torch, "bernoulli", _RoutedBernoulli(11))
        theirs = peft_merge(model, adapters, weights, ctype, density=0.4, **extra)
    assert_parity(result.delta, theirs)
    other = merge(method, [ours[a] for a in adapters], {**params, "seed": 12})
    assert max(rel_errors(other.delta, theirs).values()) > 1e-2  # the seed matters


def test_dare_keeps_the_density_and_is_unbiased(peft_setup):
    _, ours = peft_setup
    name = ours["t1"].targets[0]
    adapter, exact = LoraDelta({name: ours["t1"][name]}), ours["t1"].dense(name)
    one = merge("dare_linear", [adapter], {"density": 0.4, "rank": FULL, "seed": 0}).delta.dense(name)
    kept = one.abs() > 1e-4 * exact.abs().max()
    assert kept.float().mean().item() == pytest.approx(0.4, abs=0.05)
    torch.testing.assert_close(one[kept], exact[kept] / 0.4, rtol=1e-3, atol=1e-5)
    mean = torch.stack(
        [
            merge("dare_linear", [adapter], {"density": 0.4, "rank": FULL, "seed": s}).delta.dense(name)
            for s in range(300)
        ]
    ).mean(0)
    assert ((mean - exact).norm() / exact.norm()).item() < 0.1  # E[drop(x) / p] = x; sd ~ sqrt(1.5 / 300)


def test_merges_with_an_rslora_adapter_first_are_order_independent_and_match_peft(peft_setup):
    """Our merge does not depend on the order of its inputs, whatever their scaling scheme.

    PEFT 0.21 copies the first adapter's config into the merged one with ``r = lora_alpha = new_rank``,
    so an rsLoRA adapter first gives the merged delta a scale of ``sqrt(new_rank)`` instead of 1; PEFT 0.22
    keeps the scale at 1. The comparison divides PEFT's delta by the scale PEFT itself reports, so it holds on
    every supported version, and the scale must be one of those two values."""
    model, ours = peft_setup
    weights = [1.0, 0.5]
    ta = merge("task_arithmetic", [ours["t2"], ours["t1"]], {"weights": weights}).delta
    swapped = merge("task_arithmetic", [ours["t1"], ours["t2"]], {"weights": weights[::-1]}).delta
    for name in ta.targets:
        torch.testing.assert_close(ta.dense(name), swapped.dense(name), rtol=1e-6, atol=1e-7)
    model.add_weighted_adapter(["t2", "t1"], weights, "rslora_first", combination_type="cat")
    layers = {n.removeprefix(PREFIX): m for n, m in model.named_modules() if isinstance(m, LoraLayer)}
    theirs = {n: m.get_delta_weight("rslora_first").detach().clone() for n, m in layers.items()}
    scaling = next(iter(layers.values())).scaling["rslora_first"]
    model.delete_adapter("rslora_first")
    new_rank = ours["t2"].ranks[ta.targets[0]] + ours["t1"].ranks[ta.targets[0]]
    assert scaling in (pytest.approx(1.0), pytest.approx(math.sqrt(new_rank)))
    assert_parity(LoraDelta({n: LoraModule(m.A * scaling, m.B, m.scale) for n, m in ta.modules.items()}), theirs)


# ------------------------------------------------------------------ contract over every registered method


def _random_deltas() -> list[LoraDelta]:
    g = torch.Generator().manual_seed(5)
    shapes = {"layer.0.q": (12, 10), "layer.0.v": (6, 10), "layer.1.q": (12, 10)}
    return [
        LoraDelta(
            {
                n: LoraModule(torch.randn(r, i, generator=g), torch.randn(o, r, generator=g), s)
                for n, (o, i) in shapes.items()
            }
        )
        for r, s in ((2, 2.0), (4, 0.5), (3, 1.0 / math.sqrt(3)))
    ]


def _identity_params(method: str, weight: float) -> dict:
    """Params under which one adapter is its own merge: nothing trimmed or dropped, one vote suffices."""
    fields = MERGE_METHODS.get(method).params_type.__dataclass_fields__
    return (
        {"weights": [weight]}
        | ({"density": 1.0} if "density" in fields else {})
        | ({"min_agree": 1} if "min_agree" in fields else {})
        | ({"t": 1.0} if "t" in fields else {})  # SLERP's fine-tuned end
    )


def _base_for(method: str, delta: LoraDelta) -> dict[str, torch.Tensor] | None:
    """Random base weights for the methods that read them (SLERP), else None."""
    if not MERGE_METHODS.get(method).needs_base:
        return None
    g = torch.Generator().manual_seed(11)
    return {n: torch.randn(delta[n].shape, generator=g) for n in delta}


@pytest.mark.parametrize("method", [n for n in MERGE_METHODS.names() if not MERGE_METHODS.get(n).needs_data])
def test_contract(method, tmp_path):
    deltas = _random_deltas()
    cls = MERGE_METHODS.get(method)
    assert cls.name == method and cls.reference_url.startswith("https://arxiv.org/abs/") and not cls.needs_data
    base = _base_for(method, deltas[0])
    result = merge(method, deltas, base=base)
    again = merge(method, deltas, base=base)
    assert result.delta.targets == deltas[0].targets
    for name in deltas[0]:
        module = result.delta[name]
        assert module.shape == deltas[0][name].shape
        assert torch.isfinite(module.A).all() and torch.isfinite(module.B).all()
        assert torch.equal(module.A, again.delta[name].A) and torch.equal(module.B, again.delta[name].B)
    assert all(0.0 <= e <= 1.0 for e in result.reconstruction_error.values())

    single = deltas[1]
    for weight in (1.0, -1.0):
        out = merge(method, [single], _identity_params(method, weight), base=base)
        for name in single:
            torch.testing.assert_close(out.delta.dense(name), weight * single.dense(name), rtol=1e-5, atol=1e-5)

    write_adapter(result.delta, tmp_path, base_model="tiny")
    back, _ = read_adapter(tmp_path)
    assert back.targets == result.delta.targets
    for name in back:
        torch.testing.assert_close(back.dense(name), result.delta.dense(name), rtol=1e-6, atol=1e-6)
