"""Task samplers: formulas, determinism, exact resume, and the worst-task property of the adaptive ones."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from adaptforge.core import AdaptforgeError
from adaptforge.train.samplers import (
    SAMPLERS,
    GroupDROConfig,
    MPTSConfig,
    MPTSSampler,
    SamplerConfig,
    TaskInfo,
    TaskSampler,
    TemperatureConfig,
    make_sampler,
)

ALL = ["uniform", "proportional", "temperature", "group_dro", "mpts"]
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

    def train(self, i: int, step: int) -> float:
        noise = np.random.default_rng([self.seed, step]).standard_normal()
        loss = self.true_loss(i) * float(np.exp(0.1 * noise))
        self.count[i] += 1
        return loss

    def worst(self) -> float:
        return max(self.true_loss(i) for i in range(len(CURVES)))


def run(sampler: TaskSampler, env: Env, start: int, stop: int) -> list[int]:
    seq = []
    for step in range(start, stop):
        t = sampler.next()
        sampler.observe(t, env.train(t, step), step)
        seq.append(t)
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
    assert [r.name for r in SAMPLERS.get("mpts").help().params][:2] == ["beta", "tau"]


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


@pytest.mark.parametrize("name", ALL)
def test_sequences_are_deterministic_under_seed(name):
    a = run(make_sampler(name, tasks(), seed=7), Env(0), 0, 200)
    b = run(make_sampler(name, tasks(), seed=7), Env(0), 0, 200)
    c = run(make_sampler(name, tasks(), seed=8), Env(0), 0, 200)
    assert a == b
    assert a != c


@pytest.mark.parametrize("name", ALL)
def test_state_dict_resumes_the_identical_sequence(name):
    full_sampler, full_env = make_sampler(name, tasks(), seed=11), Env(5)
    first = run(full_sampler, full_env, 0, 150)
    state = json.loads(json.dumps(full_sampler.state_dict(), allow_nan=False))  # strictly JSON
    env_at_kill = copy.deepcopy(full_env)
    rest = run(full_sampler, full_env, 150, 400)

    resumed = make_sampler(name, tasks(), seed=999)  # the seed is overridden by the saved RNG state
    resumed.load_state_dict(state)
    assert np.array_equal(resumed.draw_counts(), np.bincount(first, minlength=len(SIZES)))
    assert run(resumed, env_at_kill, 150, 400) == rest
    assert np.array_equal(resumed.probabilities(), full_sampler.probabilities())
    assert resumed.state_dict() == json.loads(json.dumps(full_sampler.state_dict()))


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


# --------------------------------------------------------------------------------- adaptive samplers


def test_adaptive_samplers_visit_every_task_first():
    for name in ("group_dro", "mpts"):
        sampler = make_sampler(name, tasks(), seed=1)
        first = run(sampler, Env(0), 0, len(SIZES))
        assert sorted(first) == list(range(len(SIZES))), name


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


def test_mpts_risk_model_predicts_the_next_loss_better_than_the_last_level():
    err_model, err_level = [], []
    for seed in range(3):
        sampler, env = make_sampler("mpts", tasks(), seed=seed), Env(seed + 1)
        assert isinstance(sampler, MPTSSampler)
        for step in range(600):
            t = sampler.next()
            mean, std = sampler.predict()
            level = sampler.state_dict()["state"]["level"][t]
            expected = env.true_loss(t)  # the noise-free loss of the batch about to be trained
            if step >= 100:  # after the warm-up and a few updates of the risk model
                err_model.append(abs(mean[t] - expected))
                err_level.append(abs(level - expected))
                assert std[t] > 0
            sampler.observe(t, env.train(t, step), step)
    # The learned model corrects the lag of the EMA level (about 20% lower error on this curve family).
    assert np.mean(err_model) < 0.9 * np.mean(err_level), (np.mean(err_model), np.mean(err_level))


def test_mpts_prefers_tasks_predicted_to_stay_hard():
    # Two tasks at the same level: task 0 is flat, task 1 is falling fast. MPTS anticipates the fall.
    sampler = make_sampler("mpts", tasks([100, 100]), MPTSConfig(beta=0.0, ema=0.2), seed=0)
    flat, falling = 1.0, 2.0
    for step in range(400):
        t = sampler.next()
        if t == 1:
            falling = max(0.5, falling * 0.97)
        sampler.observe(t, flat if t == 0 else falling, step)
        if abs(sampler.state_dict()["state"]["level"][1] - 1.0) < 0.02 and falling < 0.99:
            break
    else:
        pytest.fail("the falling task's level never reached the flat task's")
    mean, _ = sampler.predict()
    assert mean[1] < mean[0]  # same level now, but its next loss is predicted lower...
    p = sampler.probabilities()
    assert p[0] > p[1]  # ...so the flat task, which will stay hard, is preferred


def test_mpts_uses_reduced_task_features_and_dev_losses():
    rng = np.random.default_rng(0)
    infos = [TaskInfo(f"t{i}", 100, 3, tuple(rng.normal(size=384))) for i in range(6)]
    sampler = make_sampler("mpts", infos, {"task_feature_dim": 3})
    assert sampler.dim == 8  # [level, trend, log gap, log size, 1] + 3 principal components
    sampler.observe_eval(dict.fromkeys(range(6), 1.0) | {4: 3.0})  # dev losses end the warm-up
    assert int(np.argmax(sampler.probabilities())) == 4
    assert make_sampler("mpts", infos, {"task_feature_dim": 0}).dim == 5


@pytest.mark.parametrize("name", ["group_dro", "mpts"])
def test_adaptive_samplers_lower_the_worst_task_loss(name):
    """The property these samplers exist for: same step budget, lower worst-task loss than uniform."""
    worst: dict[str, list[float]] = {"uniform": [], name: []}
    for seed in range(4):
        for sampler_name in worst:
            env = Env(seed)
            run(make_sampler(sampler_name, tasks(), seed=seed), env, 0, 600)
            worst[sampler_name].append(env.worst())
    assert np.mean(worst[name]) < 0.7 * np.mean(worst["uniform"]), worst


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
    with pytest.raises(AdaptforgeError, match=r"'floor' must be in \[0, 1\], got 1.5"):
        MPTSConfig(floor=1.5)
    with pytest.raises(AdaptforgeError, match="task sampler 'mpts': 'tau' must be > 0, got 0"):
        make_sampler("mpts", tasks(), {"tau": 0})
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
