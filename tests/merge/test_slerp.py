"""SLERP between base and fine-tuned weights: its endpoints, its arc against the textbook formula, the colinear
fallback, norm preservation, the checks on the base, and the verb end to end on the embedded MiniLM."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import random_delta, run_cli

from adaptforge.core import AdaptforgeError, LoraDelta, LoraModule
from adaptforge.layers import base_weights
from adaptforge.library import Library
from adaptforge.merge import MERGE_METHODS, merge, run
from adaptforge.merge.slerp import slerp_coefficients

SHAPES = {"q": (5, 7), "v": (6, 4)}


def _base(shapes=SHAPES, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(o, i, generator=g) for n, (o, i) in shapes.items()}


def _full(dw: dict[str, torch.Tensor]) -> LoraDelta:
    """An adapter whose delta is exactly ``dw`` (full-rank factors: A = dW, B = I), so no SVD truncation loses
    anything and the arc itself is what is tested."""
    return LoraDelta({n: LoraModule(d.clone(), torch.eye(d.shape[0]), 1.0) for n, d in dw.items()})


def reference(w0: torch.Tensor, w1: torch.Tensor, t: float) -> torch.Tensor:
    """Shoemake's formula with the angle from acos of the normalised dot product (float64)."""
    a, b = w0.double(), w1.double()
    theta = math.acos(float((a.flatten() @ b.flatten()) / (a.norm() * b.norm())))
    return (math.sin((1 - t) * theta) * a + math.sin(t * theta) * b) / math.sin(theta)


@pytest.mark.parametrize("weight", [1.0, -1.0, 0.5])
def test_t0_is_the_base_and_t1_the_fine_tuned_weights_exactly(weight):
    delta, base = random_delta(SHAPES, rank=2, scale=2.0, std=0.3), _base()
    start = merge("slerp", [delta], {"t": 0.0, "weights": [weight]}, base=base)
    end = merge("slerp", [delta], {"t": 1.0, "weights": [weight]}, base=base)
    for name in SHAPES:
        assert torch.count_nonzero(start.delta.dense(name)) == 0
        torch.testing.assert_close(end.delta.dense(name), weight * delta.dense(name), rtol=1e-6, atol=1e-6)
        assert end.delta[name].rank == 2  # the inner delta's own factors, no refactoring
    assert start.reconstruction_error == {} and end.reconstruction_error == {}


@pytest.mark.parametrize("t", [0.2, 0.5, 0.9])
def test_the_arc_matches_the_textbook_formula(t):
    base = _base()
    g = torch.Generator().manual_seed(3)
    dw = {n: 0.8 * torch.randn(w.shape, generator=g) for n, w in base.items()}  # tens of degrees: a real arc
    result = merge("slerp", [_full(dw)], {"t": t}, base=base)
    for name, w0 in base.items():
        expected = reference(w0, w0 + dw[name], t)
        torch.testing.assert_close((w0 + result.delta.dense(name)).double(), expected, rtol=1e-4, atol=1e-4)
        linear = w0 + t * dw[name]
        assert float((expected - linear.double()).norm()) > 1e-2  # SLERP is not the linear path here
    assert result.info["angle_degrees"]["min"] > 10 and result.info["fallback_modules"] == 0
    assert max(result.reconstruction_error.values()) < 1e-5  # full rank: the delta is held exactly


def test_colinear_weights_fall_back_to_linear_interpolation():
    base = _base()
    dw = {n: 0.5 * w for n, w in base.items()}  # W1 = 1.5 W0: no angle, SLERP undefined
    for t in (0.3, 0.7):
        result = merge("slerp", [_full(dw)], {"t": t}, base=base)
        assert result.info["fallback_modules"] == len(base)
        for name in base:
            torch.testing.assert_close(result.delta.dense(name), t * dw[name], rtol=1e-6, atol=1e-6)
    zero = {n: torch.zeros_like(w) for n, w in base.items()}
    result = merge("slerp", [random_delta(SHAPES, rank=2)], {"t": 0.4}, base=zero)  # a zero weight: no direction
    assert result.info["fallback_modules"] == len(base)
    assert slerp_coefficients(torch.ones(3), -torch.ones(3), 0.5, 1e-6)[:2] == (0.5, 0.5)  # antiparallel too


def test_equal_norms_are_kept_along_the_arc_and_the_angle_is_split_by_t():
    base = _base()
    g = torch.Generator().manual_seed(5)
    dw = {}
    for name, w0 in base.items():  # W1: W0 turned by 40 degrees in the plane of W0 and a random orthogonal direction
        u = torch.randn(w0.shape, generator=g)
        u = u - (u.flatten() @ w0.flatten()) / (w0.norm() ** 2) * w0
        u = u / u.norm() * w0.norm()
        phi = math.radians(40)
        dw[name] = math.cos(phi) * w0 + math.sin(phi) * u - w0
    for t in (0.25, 0.5, 0.75):
        result = merge("slerp", [_full(dw)], {"t": t}, base=base)
        for name, w0 in base.items():
            wt = (w0 + result.delta.dense(name)).double()
            assert float(wt.norm()) == pytest.approx(float(w0.norm()), rel=1e-5)
            angle = math.degrees(math.acos(float(wt.flatten() @ w0.double().flatten() / (wt.norm() * w0.norm()))))
            assert angle == pytest.approx(40 * t, abs=1e-2)
            linear = w0 + t * dw[name]
            assert float(linear.norm()) < float(w0.norm()) * 0.99  # the chord shrinks the norm; the arc does not


def test_small_updates_are_nearly_linear_and_the_low_rank_output_reports_its_error():
    delta, base = random_delta(SHAPES, rank=2, scale=1.0, std=0.2), _base()
    result = merge("slerp", [delta], {"t": 0.5}, base=base)
    theta = math.radians(result.info["angle_degrees"]["max"])
    assert 0 < theta < 0.3
    # the base's own coefficient c0 + c1 - 1 = t (1 - t) theta^2 / 2 + O(theta^4)
    assert result.info["base_coefficient"]["max"] == pytest.approx(0.25 * theta**2 / 2, rel=0.02)
    for name in SHAPES:
        linear = 0.5 * delta.dense(name)
        assert float((result.delta.dense(name) - linear).norm() / linear.norm()) < 0.05
        assert result.delta[name].rank == 2 and 0 < result.reconstruction_error[name] < 0.05
    wider = merge("slerp", [delta], {"t": 0.5, "rank": 5}, base=base)
    assert all(wider.reconstruction_error[n] < result.reconstruction_error[n] for n in SHAPES)


def test_the_inner_merge_gives_the_fine_tuned_endpoint():
    a, b, base = random_delta(SHAPES, rank=2, seed=1), random_delta(SHAPES, rank=3, seed=2), _base()
    ties = merge("ties", [a, b], {"density": 0.5})
    end = merge("slerp", [a, b], {"t": 1.0, "inner": "ties", "inner_params": {"density": 0.5}}, base=base)
    for name in SHAPES:
        torch.testing.assert_close(end.delta.dense(name), ties.delta.dense(name), rtol=1e-6, atol=1e-6)
    for inner in ("slerp", "base_interp", "no_such"):
        with pytest.raises(AdaptforgeError, match="'inner' must be a data-free merge method"):
            MERGE_METHODS.get("slerp").parse_params({"inner": inner})
    with pytest.raises(AdaptforgeError, match="'inner' must be a method with one static delta"):
        MERGE_METHODS.get("base_interp").parse_params({"inner": "slerp"})


def test_the_base_is_checked_before_anything_is_computed(monkeypatch):
    delta = random_delta(SHAPES, rank=2)
    with pytest.raises(AdaptforgeError, match="interpolates the base model's weights: call merge_with_base"):
        merge("slerp", [delta])
    with pytest.raises(AdaptforgeError, match="interpolates the base model's weights"):
        run("slerp", [delta])

    def boom(self):
        raise AssertionError("dense delta computed before validation finished")

    monkeypatch.setattr(LoraModule, "dense", boom)
    with pytest.raises(AdaptforgeError, match=r"module 'v': the base model has no such layer"):
        merge("slerp", [delta], base={"q": torch.zeros(5, 7)})
    with pytest.raises(AdaptforgeError, match=r"module 'q': the base weight has shape \(7, 5\) but the adapters"):
        merge("slerp", [delta], base={"q": torch.zeros(7, 5), "v": torch.zeros(6, 4)})
    with pytest.raises(AdaptforgeError, match="'t' must be .*in \\[0, 1\\]"):
        merge("slerp", [delta], {"t": 1.5}, base=_base())
    with pytest.raises(AdaptforgeError, match="does not read the base weights"):
        merge("ties", [delta], base=_base())
    with pytest.raises(AdaptforgeError, match="does not use data"):
        run("slerp", [delta], tasks=[object()], base=_base())  # type: ignore[list-item]


def test_slerp_through_the_cli_reads_the_real_base(library, minilm):
    out = json.loads(
        run_cli(
            "merge", "sst2-a", "--method", "slerp", "--param", "t=0.5", "--library", library, "--out", "s", "--json"
        ).stdout
    )
    lib = Library(library)
    merged, rec = lib.load("s")
    original, _ = lib.load("sst2-a")
    assert out["method"] == "slerp" and rec.method == "slerp" and rec.params["t"] == 0.5
    assert rec.recipe["info"]["fallback_modules"] == 0 and rec.recipe["info"]["angle_degrees"]["max"] > 0
    base = base_weights(minilm.model, original.modules)
    direct = merge("slerp", [original], {"t": 0.5}, base=base)
    for name in original:
        torch.testing.assert_close(merged.dense(name), direct.delta.dense(name), rtol=1e-5, atol=1e-6)
