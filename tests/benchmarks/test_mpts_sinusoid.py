"""benchmarks/mpts_sinusoid.py's pieces: DRM trains its worst candidates, MPTS evaluates only the B it trains."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from adaptforge.train.samplers import make_sampler

PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "mpts_sinusoid.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("mpts_sinusoid", PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["mpts_sinusoid"] = module
    spec.loader.exec_module(module)
    return module


def setup(bench, seed: int = 0):
    cfg = dataclasses.replace(bench.SinusoidConfig(), tasks_per_step=4, candidates=8, pool=50, test_tasks=20, seed=seed)
    return cfg, bench.TaskPool.draw(cfg.pool, np.random.default_rng(seed)), bench.init_mlp(seed)


def test_drm_trains_the_worst_candidates_and_pays_for_all_of_them(bench):
    cfg, pool, params = setup(bench)
    sampler = make_sampler("drm", pool.infos(cfg.k), {"candidates": cfg.candidates}, seed=0)
    chosen, losses, spent = bench.choose(sampler, params, pool, cfg, np.random.default_rng(1))
    assert spent == 8 and len(chosen) == 4 and losses.requires_grad
    # the same data stream re-scored: the chosen tasks' losses are the 4 highest of the 8 candidates
    again = make_sampler("drm", pool.infos(cfg.k), {"candidates": cfg.candidates}, seed=0)
    seen = {}
    again.next_batch(
        4, lambda c: seen.setdefault("l", bench.query_losses(params, pool, c, cfg, np.random.default_rng(1))).tolist()
    )
    assert sorted(losses.tolist()) == pytest.approx(sorted(seen["l"].tolist())[-4:])


def test_mpts_evaluates_only_the_b_tasks_it_trains_and_learns_their_risk(bench):
    cfg, pool, params = setup(bench)
    sampler = make_sampler("mpts", pool.infos(cfg.k), {"candidates": cfg.candidates, "gamma_std": 0.0}, seed=0)
    rng = np.random.default_rng(1)
    for step in range(30):
        chosen, losses, spent = bench.choose(sampler, params, pool, cfg, rng)
        assert spent == 4 and len(set(chosen)) == 4
        for t, v in zip(chosen, losses.tolist(), strict=True):
            sampler.observe(t, v, step)
    assert sampler.evaluations == 0  # its risk learner used the training losses only
    mean, _ = sampler.predict()
    # an untrained net's MSE grows with amplitude: the learned risk ranks high amplitudes as riskier
    assert np.corrcoef(mean, pool.amplitude)[0, 1] > 0.8


def test_cvar_is_the_mean_of_the_worst_fraction_and_the_test_mse_is_deterministic(bench):
    assert bench.cvar_mse(np.arange(10.0), 0.1) == 9.0 and bench.cvar_mse(np.arange(10.0), 0.5) == 7.0
    cfg, pool, params = setup(bench)
    test = bench.TaskPool.draw(cfg.test_tasks, np.random.default_rng(2))
    torch.manual_seed(0)
    a = bench.test_mses(params, test, cfg)
    assert np.array_equal(a, bench.test_mses(params, test, cfg)) and a.shape == (20,) and np.all(a > 0)
