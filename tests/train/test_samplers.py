"""Task samplers: formulas, determinism, exact resume (JSON + safetensors), and the worst-task property of the
adaptive ones (group DRO, DRM, MPTS) on a simulated task set whose losses fall as tasks are trained."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from adaptforge.core import AdaptforgeError
from adaptforge.train.config import TrainConfig
from adaptforge.train.samplers import (
    SAMPLERS,
    DRMSampler,
    GroupDROConfig,
    MPTSConfig,
    MPTSSampler,
    SamplerConfig,
    TaskInfo,
    TaskSampler,
    TemperatureConfig,
    make_sampler,
)

ALL = ["uniform", "proportional", "temperature", "group_dro", "drm", "mpts"]
# MPTS with each risk learner, as (name, options) cases.
VARIANTS = [
    *((n, {}) for n in ALL),
    ("mpts", {"risk_model": "np", "risk_target": "post_update"}),
    ("mpts", {"risk_model": "np", "risk_scale": "log_k"}),
    ("mpts", {"risk_target": "post_update"}),
    ("drm", {"risk_scale": "log_k"}),
]
VARIANT_IDS = [n + "".join(f"-{v}" for v in o.values()) for n, o in VARIANTS]
SIZES = [5000, 40, 3000, 2000, 5000, 1000]

# Synthetic multi-task training: the true loss of task i after k batches of it is
# floor + (start - floor) * h / (h + k). Task 0 is very hard and improves slowly; task 1 is small.
# (start, floor, h)
CURVES = [(4.0, 0.3, 150.0), (1.5, 0.05, 5.0), (2.0, 0.1, 20.0), (1.5, 0.1, 10.0), (1.2, 0.1, 30.0), (1.8, 0.2, 15.0)]


def tasks(sizes: list[int] = SIZES) -> list[TaskInfo]:
    return [TaskInfo(f"task{i}", n, 2) for i, n in enumerate(sizes)]


class Env:
    """Losses that decay with the number of times each task was trained, with 10% multiplicative noise."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.count = np.zeros(len(CURVES))

    def true_loss(self, i: int) -> float:
        start, floor, h = CURVES[i]
        return floor + (start - floor) * h / (h + self.count[i])

    def noisy(self, i: int, *key: int) -> float:
        noise = np.random.default_rng([self.seed, *key]).standard_normal()
        return self.true_loss(i) * float(np.exp(0.1 * noise))

    def train(self, i: int, step: int, k: int = 0) -> float:
        loss = self.noisy(i, step, k) if k else self.noisy(i, step)
        self.count[i] += 1
        return loss

    def worst(self) -> float:
        return max(self.true_loss(i) for i in range(len(CURVES)))


def run(sampler: TaskSampler, env: Env, start: int, stop: int, per_step: int = 1) -> list[int]:
    """The trainer's protocol: choose (DRM evaluates candidates), train, observe, then feed post-update risk."""
    seq: list[int] = []
    for step in range(start, stop):
        chosen = sampler.next_batch(
            per_step, lambda pool, step=step: [env.noisy(i, step, 1000 + j) for j, i in enumerate(pool)]
        )
        for k, t in enumerate(chosen):
            sampler.observe(t, env.train(t, step, k), step)
        if sampler.wants_risk:
            sampler.observe_risk(chosen, [env.noisy(t, step, 500 + k) for k, t in enumerate(chosen)], step)
        seq += chosen
    return seq


# ------------------------------------------------------------------------------------- formulas


def test_registry_lists_all_samplers():
    assert set(ALL) <= set(SAMPLERS.names())
    with pytest.raises(AdaptforgeError, match="Did you mean 'mpts'"):
        SAMPLERS.get("mpt")


def test_every_sampler_is_a_method_with_paper_and_typed_config():
    for name in ALL:
        cls = SAMPLERS.get(name)
        assert cls.name == name and cls.kind == "task sampler"
        assert cls.reference_url.startswith("https://arxiv.org/abs/")
        assert cls.help().params == tuple(cls.params_type.help_rows())
        assert all(row.help for row in cls.help().params)
        assert cls.parse_params(None) == cls.params_type() == cls.parse_params({})
    assert [r.name for r in SAMPLERS.get("mpts").help().params][:4] == [
        "candidates",
        "risk_scale",
        "risk_model",
        "risk_target",
    ]


def test_static_probabilities_match_formulas():
    n = np.array(SIZES, dtype=float)
    assert np.allclose(make_sampler("uniform", tasks()).probabilities(), 1 / len(SIZES))
    assert np.allclose(make_sampler("proportional", tasks()).probabilities(), n / n.sum())
    capped = make_sampler("proportional", tasks(), {"size_cap": 2000}).probabilities()
    assert np.allclose(capped, np.minimum(n, 2000) / np.minimum(n, 2000).sum())
    t1 = make_sampler("temperature", tasks(), {"temperature": 1}).probabilities()
    assert np.allclose(t1, n / n.sum(), rtol=1e-12, atol=0)
    t2 = make_sampler("temperature", tasks(), TemperatureConfig(temperature=2.0)).probabilities()
    assert np.allclose(t2, np.sqrt(n) / np.sqrt(n).sum())
    hot = make_sampler("temperature", tasks(), {"temperature": 1e6}).probabilities()
    assert np.allclose(hot, 1 / len(SIZES), atol=1e-5)
    for name in ALL:
        p = make_sampler(name, tasks()).probabilities()
        assert p.shape == (len(SIZES),) and abs(p.sum() - 1) < 1e-12 and (p >= 0).all()


def test_draw_frequencies_follow_probabilities():
    sampler = make_sampler("temperature", tasks(), {"temperature": 2}, seed=3)
    draws = 20_000
    counts = np.bincount([sampler.next() for _ in range(draws)], minlength=len(SIZES))
    p = sampler.probabilities()
    assert np.all(np.abs(counts / draws - p) < 4 * np.sqrt(p * (1 - p) / draws) + 1e-3), (counts / draws, p)
    assert np.array_equal(sampler.draw_counts(), counts)


# ------------------------------------------------------------------------- determinism and resume


@pytest.mark.parametrize(("name", "options"), VARIANTS, ids=VARIANT_IDS)
def test_sequences_are_deterministic_under_seed(name, options):
    a = run(make_sampler(name, tasks(), options, seed=7), Env(0), 0, 60, per_step=2)
    b = run(make_sampler(name, tasks(), options, seed=7), Env(0), 0, 60, per_step=2)
    c = run(make_sampler(name, tasks(), options, seed=8), Env(0), 0, 60, per_step=2)
    assert a == b
    assert a != c


@pytest.mark.parametrize(("name", "options"), VARIANTS, ids=VARIANT_IDS)
def test_state_dict_resumes_the_identical_sequence(name, options, tmp_path):
    full_sampler, full_env = make_sampler(name, tasks(), options, seed=11), Env(5)
    first = run(full_sampler, full_env, 0, 40, per_step=2)
    state = json.loads(json.dumps(full_sampler.state_dict(), allow_nan=False))  # strictly JSON
    save_file(full_sampler.state_tensors(), str(tmp_path / "sampler.safetensors"))  # the checkpoint's format
    tensors = load_file(str(tmp_path / "sampler.safetensors"))
    env_at_kill = copy.deepcopy(full_env)
    rest = run(full_sampler, full_env, 40, 100, per_step=2)

    resumed = make_sampler(name, tasks(), options, seed=999)  # the seed is overridden by the saved RNG state
    resumed.load_state_dict(state, tensors)
    assert np.array_equal(resumed.draw_counts(), np.bincount(first, minlength=len(SIZES)))
    assert run(resumed, env_at_kill, 40, 100, per_step=2) == rest
    assert np.array_equal(resumed.probabilities(), full_sampler.probabilities())
    assert resumed.state_dict() == json.loads(json.dumps(full_sampler.state_dict()))
    assert resumed.evaluations == full_sampler.evaluations
    saved, now = full_sampler.state_tensors(), resumed.state_tensors()
    assert saved.keys() == now.keys() and all(torch.equal(saved[k], now[k]) for k in saved)
    if name == "mpts" and options.get("risk_model") == "np":
        assert any(k.startswith("adam/") for k in saved) and "generator" in saved  # optimiser and z-noise RNG
        with pytest.raises(AdaptforgeError, match="risk learner tensor 'net/encoder.0.weight' is missing"):
            make_sampler(name, tasks(), options).load_state_dict(state, {})


def test_load_state_dict_refuses_a_different_setup():
    sampler = make_sampler("group_dro", tasks(), {"eta": 0.05})
    run(sampler, Env(0), 0, 20)
    state = sampler.state_dict()
    with pytest.raises(AdaptforgeError, match="different config"):
        make_sampler("group_dro", tasks(), {"eta": 0.1}).load_state_dict(state)
    with pytest.raises(AdaptforgeError, match="same tasks"):
        make_sampler("group_dro", tasks(SIZES[:5]), {"eta": 0.05}).load_state_dict(state)
    with pytest.raises(AdaptforgeError, match="written by the 'group_dro' sampler"):
        make_sampler("mpts", tasks()).load_state_dict(state)
    broken = {**state, "state": {**state["state"], "log_q": [0.0]}}
    target = make_sampler("group_dro", tasks(), {"eta": 0.05})
    before = target.state_dict()
    with pytest.raises(AdaptforgeError, match="log_q"):
        target.load_state_dict(broken)
    assert target.state_dict() == before  # a rejected state changes nothing
    # a state written before an option existed: today's default need not be what that run used
    drm = make_sampler("drm", tasks(), {"candidates": 4})
    run(drm, Env(0), 0, 5)
    old = drm.state_dict()
    old["config"] = {k: v for k, v in old["config"].items() if k != "risk_scale"}
    with pytest.raises(AdaptforgeError, match=r"predates the option\(s\) risk_scale .*start it over without --resume"):
        make_sampler("drm", tasks(), {"candidates": 4}).load_state_dict(old)


# --------------------------------------------------------------------------------- adaptive samplers


def test_group_dro_visits_every_task_first():
    sampler = make_sampler("group_dro", tasks(), seed=1)
    first = run(sampler, Env(0), 0, len(SIZES))
    assert sorted(first) == list(range(len(SIZES)))


def test_group_dro_moves_mass_to_the_highest_loss_task():
    losses = [0.5, 0.6, 2.0, 0.4, 1.0, 0.7]
    sampler = make_sampler("group_dro", tasks(), GroupDROConfig(eta=0.05, floor=0.06), seed=0)
    for step in range(300):
        t = sampler.next()
        sampler.observe(t, losses[t], step)
    p = sampler.probabilities()
    assert int(np.argmax(p)) == 2 and p[2] > 0.9
    assert p.min() >= 0.06 / len(SIZES) - 1e-12  # the uniform floor keeps every task alive
    # When another task becomes the worst, mass follows it.
    losses = [0.5, 0.6, 0.3, 0.4, 3.0, 0.7]
    for step in range(300, 700):
        t = sampler.next()
        sampler.observe(t, losses[t], step)
    assert int(np.argmax(sampler.probabilities())) == 4


def test_group_dro_size_adjustment_favours_small_tasks():
    sizes = [10, 10_000]
    sampler = make_sampler("group_dro", tasks(sizes), {"size_adjustment": 1.0})
    for step in range(400):
        t = sampler.next()
        sampler.observe(t, 1.0, step)  # equal losses: only the C / sqrt(n) term differs
    assert sampler.probabilities()[0] > 0.9


@pytest.mark.parametrize("risk_model", ["np", "linear"])
def test_mpts_risk_learner_learns_each_tasks_risk(risk_model):
    """Fed noisy risks of fixed per-task levels, the risk learner ranks the tasks by their true risk."""
    truth = np.array([0.2, 1.5, 0.6, 1.0, 0.4, 2.0])
    sampler = make_sampler("mpts", tasks(), {"risk_model": risk_model}, seed=0)
    assert isinstance(sampler, MPTSSampler)
    rng = np.random.default_rng(0)
    for step in range(150):
        chosen = [int(i) for i in rng.choice(6, size=3, replace=False)]
        sampler.observe_risk(chosen, list(truth[chosen] * np.exp(0.1 * rng.standard_normal(3))), step)
    mean, std = sampler.predict()
    assert np.corrcoef(mean, truth)[0, 1] > 0.9, mean
    assert (std >= 0).all() and std.max() > 0
    assert sampler.evaluations == 450  # one per observed risk


def test_mpts_identifiers_are_principal_components_or_one_hot():
    rng = np.random.default_rng(0)
    infos = [TaskInfo(f"t{i}", 100, 3, tuple(rng.normal(size=384))) for i in range(6)]
    assert make_sampler("mpts", infos, {"identifier_dim": 3}).identifiers.shape == (6, 3)
    assert make_sampler("mpts", infos).identifiers.shape == (6, 5)  # centred, 6 tasks span N - 1 = 5 directions
    assert np.array_equal(make_sampler("mpts", tasks()).identifiers, np.eye(len(SIZES)))


def test_mpts_takes_the_top_b_of_b_hat_candidates_and_the_uniform_half():
    sampler = make_sampler("mpts", tasks(), {"candidates": 6, "risk_model": "linear", "gamma_std": 0.0})
    for step in range(30):  # task 5 is by far the riskiest, task 3 next
        sampler.observe_risk([0, 1, 2, 3, 4, 5], [0.1, 0.1, 0.1, 1.0, 0.1, 3.0], step)
    assert sampler.next_batch(2) == [5, 3]  # all 6 tasks are candidates: the two riskiest
    half = make_sampler(
        "mpts", tasks(), {"candidates": 6, "risk_model": "linear", "gamma_std": 0.0, "uniform_half": True}
    )
    half.load_state_dict({**sampler.state_dict(), "config": half.config.to_dict()})
    picks = [half.next_batch(4) for _ in range(20)]
    assert all(p[:2] == [5, 3] and len(set(p)) == 4 for p in picks)  # top half by score, the rest uniform
    assert len({tuple(sorted(p[2:])) for p in picks}) > 1


def test_drm_trains_the_worst_candidates_and_pays_for_every_evaluation():
    losses = [0.5, 0.6, 2.0, 0.4, 1.0, 0.7]
    sampler = make_sampler("drm", tasks(), {"candidates": 6})
    assert isinstance(sampler, DRMSampler)
    assert sampler.next_batch(2, lambda pool: [losses[i] for i in pool]) == [2, 4]
    assert sampler.evaluations == 6


@pytest.mark.parametrize(
    ("name", "options"),
    [("group_dro", {}), ("drm", {}), ("mpts", {}), ("mpts", {"risk_model": "np", "risk_target": "post_update"})],
)
def test_adaptive_samplers_lower_the_worst_task_loss(name, options):
    """The property these samplers exist for: same steps and examples, lower worst-task loss than uniform,
    with the reducible-loss toy of ``CURVES`` (task 0 stays hard unless it is trained often)."""
    worst: dict[str, list[float]] = {"uniform": [], name: []}
    for seed in range(3):
        for sampler_name in worst:
            env = Env(seed)
            opts = {"candidates": 6, **options} if sampler_name == name and name != "group_dro" else {}
            run(make_sampler(sampler_name, tasks(), opts, seed=seed), env, 0, 300, per_step=2)
            worst[sampler_name].append(env.worst())
    assert np.mean(worst[name]) < 0.7 * np.mean(worst["uniform"]), worst


def test_drm_spends_more_task_evaluations_than_mpts():
    spent = {}
    for name, opts in (("drm", {}), ("mpts", {}), ("mpts-post", {"risk_target": "post_update"})):
        sampler = make_sampler(name.split("-")[0], tasks(), {"candidates": 6, **opts}, seed=0)
        run(sampler, Env(0), 0, 50, per_step=2)
        spent[name] = sampler.evaluations
    # B-hat per step against none (the default learns from the step's own losses) or B (post_update)
    assert spent == {"drm": 50 * 6, "mpts": 0, "mpts-post": 50 * 2}


# ---------------------------------------------------------------------------------------- errors


def test_bad_configs_and_inputs_give_clear_errors():
    with pytest.raises(AdaptforgeError, match=r"unknown parameter 'temperatur'; .*Did you mean 'temperature'\?"):
        TemperatureConfig.from_dict({"temperatur": 2})
    with pytest.raises(AdaptforgeError, match=r"task sampler 'uniform': unknown parameter 'eta'.*takes no parameters"):
        make_sampler("uniform", tasks(), {"eta": 1})
    for bad in (0, -1.5):
        with pytest.raises(AdaptforgeError, match=rf"'temperature' must be > 0, got {bad}"):
            TemperatureConfig(temperature=bad)
    with pytest.raises(AdaptforgeError, match="'temperature' must be a finite number > 0, got '2'"):
        TemperatureConfig.from_dict({"temperature": "2"})
    with pytest.raises(AdaptforgeError, match=r"'risk_model' must be one of .*np.*linear.*got 'vae'"):
        MPTSConfig(risk_model="vae")
    with pytest.raises(AdaptforgeError, match="task sampler 'mpts': 'lr' must be > 0, got 0"):
        make_sampler("mpts", tasks(), {"lr": 0})
    with pytest.raises(AdaptforgeError, match=r"task sampler 'mpts': unknown parameter 'gama_std'.*'gamma_std'"):
        make_sampler("mpts", tasks(), {"gama_std": 1})
    with pytest.raises(AdaptforgeError, match=r"candidates \(B-hat\) = 2 is below the 3 tasks per step"):
        make_sampler("mpts", tasks(), {"candidates": 2}).next_batch(3)
    with pytest.raises(AdaptforgeError, match="'drm': next_batch needs an evaluate function"):
        make_sampler("drm", tasks()).next_batch(1)
    with pytest.raises(AdaptforgeError, match="evaluate returned 1 losses for 8 candidates"):
        make_sampler("drm", tasks(), {"candidates": 8}).next_batch(1, lambda pool: [1.0])
    with pytest.raises(AdaptforgeError, match="task sampler 'temperature' takes TemperatureConfig, got GroupDROConfig"):
        make_sampler("temperature", tasks(), GroupDROConfig())
    assert make_sampler("temperature", tasks(), SamplerConfig()).config == TemperatureConfig()
    with pytest.raises(AdaptforgeError, match="task list is empty"):
        make_sampler("uniform", [])
    with pytest.raises(AdaptforgeError, match="unique"):
        make_sampler("uniform", [TaskInfo("a", 1), TaskInfo("a", 2)])
    with pytest.raises(AdaptforgeError, match="n_train must be an integer >= 1"):
        TaskInfo("a", 0)
    with pytest.raises(AdaptforgeError, match="every task has a feature_vector"):
        make_sampler("mpts", [TaskInfo("a", 1, 2, (1.0, 2.0)), TaskInfo("b", 1)])
    sampler = make_sampler("mpts", tasks())
    with pytest.raises(AdaptforgeError, match=r"task index must be in \[0, 6\)"):
        sampler.observe(6, 1.0, 0)
    with pytest.raises(AdaptforgeError, match="loss of task 'task0' is nan"):
        sampler.observe(0, float("nan"), 0)
    with pytest.raises(AdaptforgeError, match="step must be an integer"):
        sampler.observe(0, 1.0, -1)


def test_candidate_samplers_default_to_b_hat_twice_b_and_mpts_to_the_dev_rules_pick():
    """Defaults (issue 32): B-hat = 2 B as the reference's 16 of 32; MPTS ships SELECTION_RULE_4's pick
    (linear risk model, raw loss) with the reference's no-extra-cost risk target."""
    cfg = MPTSConfig()
    assert (cfg.candidates, cfg.risk_model, cfg.risk_scale, cfg.risk_target) == (None, "linear", "none", "pre_update")
    assert cfg.b_hat(16) == 32 and MPTSConfig(candidates=5).b_hat(16) == 5
    seen: list[list[int]] = []
    drm = make_sampler("drm", tasks(), seed=0)
    chosen = drm.next_batch(2, lambda pool: seen.append(list(pool)) or [float(i) for i in pool])
    assert len(seen[0]) == 4 and drm.evaluations == 4 and sorted(chosen) == sorted(seen[0])[2:]
    mpts = make_sampler("mpts", tasks(), seed=0)
    for step in range(3):
        for t in mpts.next_batch(2):
            mpts.observe(t, 1.0, step)
    assert not mpts.wants_risk and mpts.evaluations == 0
    resolved = TrainConfig(sampler="mpts", tasks_per_step=4, batch_size=8).resolved("encoder", ("q",))
    assert resolved.sampler_options == MPTSConfig(candidates=8).to_dict()  # the recipe stores what ran
