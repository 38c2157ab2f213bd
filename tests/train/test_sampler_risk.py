"""The risk DRM and MPTS rank tasks by: ``risk_scale`` (loss over the chance-level loss ln k) and MPTS's
``risk_target`` (the step's own training loss at no extra cost, the reference's choice and the default, or a
post-update re-measurement)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from adaptforge.core import AdaptforgeError
from adaptforge.train.samplers import MPTSConfig, TaskInfo, make_sampler
from adaptforge.train.samplers.base import chance_scale

# Two binary tasks and two 14-way ones (dbpedia-like): raw loss favours the many-label tasks.
LABELS = [2, 2, 14, 14]
# Raw losses: the 14-way tasks are higher in loss but nearer solved relative to chance (ln 14 = 2.64).
LOSSES = [0.65, 0.30, 1.20, 0.90]  # over ln k: 0.94, 0.43, 0.45, 0.34


def tasks() -> list[TaskInfo]:
    return [TaskInfo(f"t{i}", 100, k) for i, k in enumerate(LABELS)]


def test_chance_scale_is_ln_k_with_single_label_tasks_as_binary():
    assert chance_scale(tasks(), "none", "x").tolist() == [1.0] * 4
    assert chance_scale(tasks(), "log_k", "x") == pytest.approx([math.log(2)] * 2 + [math.log(14)] * 2)
    assert chance_scale([TaskInfo("one", 5, 1)], "log_k", "x") == pytest.approx([math.log(2)])


def test_drm_ranks_by_loss_over_ln_k():
    raw = make_sampler("drm", tasks(), {"candidates": 4})  # raw loss is the default (the reference's)
    assert raw.next_batch(2, lambda pool: [LOSSES[i] for i in pool]) == [2, 3]
    scaled = make_sampler("drm", tasks(), {"candidates": 4, "risk_scale": "log_k"})
    assert scaled.next_batch(2, lambda pool: [LOSSES[i] for i in pool]) == [0, 2]
    assert scaled.evaluations == 4


@pytest.mark.parametrize("risk_target", ["post_update", "pre_update"])
def test_mpts_learns_the_scaled_risk_from_either_target(risk_target):
    opts = {"candidates": 4, "risk_model": "linear", "gamma_std": 0.0, "risk_target": risk_target}
    chosen = {}
    for scale in ("none", "log_k"):
        sampler = make_sampler("mpts", tasks(), {**opts, "risk_scale": scale})
        assert sampler.wants_risk == (risk_target == "post_update")
        for step in range(30):
            sampler.next_batch(2)
            if risk_target == "pre_update":
                for t in range(4):  # the trainer's observe of each trained sub-batch, before the update
                    sampler.observe(t, LOSSES[t], step)
            else:
                sampler.observe_risk([0, 1, 2, 3], LOSSES, step)
        mean, _ = sampler.predict()
        expected = np.asarray(LOSSES) / chance_scale(tasks(), scale, "x")
        assert mean == pytest.approx(expected, abs=0.05)
        chosen[scale] = sampler.next_batch(2)
        assert sampler.evaluations == (30 * 4 if risk_target == "post_update" else 0)
    assert chosen == {"none": [2, 3], "log_k": [0, 2]}


def test_pre_update_losses_of_a_step_wait_in_the_state_until_the_next_step():
    opts = {"candidates": 4, "risk_model": "linear", "risk_target": "pre_update"}
    sampler = make_sampler("mpts", tasks(), opts)
    sampler.next_batch(2)
    sampler.observe(1, 0.3, 0)
    sampler.observe(3, 0.9, 0)
    state = json.loads(json.dumps(sampler.state_dict()))
    assert state["state"]["pending"] == [[1, 0.3], [3, 0.9]] and state["state"]["m"] == 0.0
    resumed = make_sampler("mpts", tasks(), opts)
    resumed.load_state_dict(state)
    assert resumed.next_batch(2) == sampler.next_batch(2)
    assert resumed.state_dict() == sampler.state_dict()
    assert sampler.state_dict()["state"]["pending"] == [] and sampler.state_dict()["state"]["m"] == 2.0
    for bad in ([[9, 0.3]], [[1]], "x", [[1, float("nan")]]):
        broken = {**state, "state": {**state["state"], "pending": bad}}
        with pytest.raises(AdaptforgeError, match="task sampler 'mpts': (malformed 'pending'|loss of task)"):
            make_sampler("mpts", tasks(), opts).load_state_dict(broken)


def test_bad_risk_options_are_refused_with_the_known_values():
    with pytest.raises(AdaptforgeError, match=r"'risk_scale' must be one of .*none.*log_k.*got 'log'"):
        make_sampler("mpts", tasks(), {"risk_scale": "log"})
    with pytest.raises(AdaptforgeError, match=r"task sampler 'drm': 'risk_scale' must be one of .*got 'ln_k'"):
        make_sampler("drm", tasks(), {"risk_scale": "ln_k"})
    with pytest.raises(AdaptforgeError, match=r"'risk_target' must be one of .*post_update.*pre_update.*got 'after'"):
        MPTSConfig(risk_target="after")
    with pytest.raises(AdaptforgeError, match=r"unknown parameter 'risk_targt'.*Did you mean 'risk_target'"):
        make_sampler("mpts", tasks(), {"risk_targt": "pre_update"})
    with pytest.raises(AdaptforgeError, match=r"task sampler 'drm': unknown parameter 'risk_target'.*risk_scale"):
        make_sampler("drm", tasks(), {"risk_target": "pre_update"})
    unlabelled = [TaskInfo("a", 10, 2), TaskInfo("b", 10)]
    with pytest.raises(AdaptforgeError, match="risk_scale=log_k needs every task's label count .* missing for b"):
        make_sampler("mpts", unlabelled, {"risk_scale": "log_k"})
    assert make_sampler("mpts", unlabelled).config.risk_scale == "none"  # the default needs no label counts
    with pytest.raises(AdaptforgeError, match="task sampler 'mpts': the state was made with a different config"):
        state = make_sampler("mpts", tasks()).state_dict()
        make_sampler("mpts", tasks(), {"risk_scale": "log_k"}).load_state_dict(state)
