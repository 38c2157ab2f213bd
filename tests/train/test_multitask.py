"""Multi-task training on the real embedded encoder: every sampler, exact replay of its draws, resume, CLI."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from helpers import small_task
from typer.testing import CliRunner

from adaptforge.cli import app
from adaptforge.evaluate import cvar, worst
from adaptforge.scorers import describe, make_scorer
from adaptforge.tasks import write_task
from adaptforge.train.checkpoint import load_checkpoint
from adaptforge.train.config import TrainConfig
from adaptforge.train.samplers import SAMPLERS, MPTSConfig, TaskInfo, make_sampler
from adaptforge.train.trainer import dev_check, task_identifier, train_tasks

ALL = ["uniform", "proportional", "temperature", "group_dro", "drm", "mpts"]
REPLAYABLE = ["uniform", "proportional", "temperature", "group_dro"]  # choices a function of batch and dev losses
# trained with two tasks per step, chosen among all three; mpts with the non-default neural risk learner and
# post-update target, whose resume needs the most state (the defaults are checked through the CLI below)
MIXED = {"drm": {"candidates": 3}, "mpts": {"candidates": 3, "risk_model": "np", "risk_target": "post_update"}}
STEPS, EVAL_EVERY, EVAL_N = 12, 4, 8


def config(sampler: str, **kw) -> TrainConfig:
    base = {"batch_size": 4, "steps": STEPS, "eval_every": EVAL_EVERY, "eval_examples": EVAL_N, "checkpoint_every": 0}
    if sampler in MIXED:
        base |= {"tasks_per_step": 2, "sampler_options": MIXED[sampler]}
    base["dropout"] = 0.1  # dropout draws from the torch RNG, which a resumed run must restore too
    return TrainConfig(sampler=sampler, **{**base, **kw})


@pytest.fixture(scope="module")
def tasks():
    """Three real tasks of unequal size (48 / 16 / 16 training examples) and label count (2 / 2 / 4)."""
    return [
        small_task("sst2", n_train=48, n_test=EVAL_N),
        small_task("subjectivity", n_train=16, n_test=EVAL_N),
        small_task("agnews", n_train=16, n_test=EVAL_N),
    ]


@pytest.fixture(scope="module")
def runs(minilm, tasks):
    """One multi-task run per sampler, all with the same seed and step budget."""
    return {name: train_tasks(tasks, minilm, config(name)) for name in ALL}


def infos(tasks) -> list[TaskInfo]:
    return [TaskInfo(t.name, len(t.split("train")), len(t.labels)) for t in tasks]


def replay(name: str, tasks, result, sampler=None) -> list[int]:
    """Drive a fresh sampler with the losses the trainer observed; return the tasks it draws.

    For static samplers the losses do not matter; for adaptive ones this checks the trainer fed
    each batch loss with its step, and the dev losses of the curves at every eval.
    """
    if sampler is None:
        sampler = make_sampler(name, infos(tasks), result.config.sampler_options, seed=result.config.seed)
    evals = {task.name: iter(result.curves[task.name]) for task in tasks}
    drawn = []
    for step, task, loss in result.history:
        drawn.append(sampler.next())
        sampler.observe(task, loss, step)
        if (step + 1) % EVAL_EVERY == 0 or step + 1 == STEPS:
            points = {i: next(evals[t.name]) for i, t in enumerate(tasks)}
            assert {p[0] for p in points.values()} == {step + 1}
            sampler.observe_eval({i: p[1] for i, p in points.items()})
    return drawn


@pytest.fixture(scope="module")
def zero_shot_dev_loss(minilm, tasks):
    scorer = make_scorer(minilm)
    return [dev_check(scorer, minilm.model, t, EVAL_N, 0)[0] for t in tasks]


@pytest.mark.parametrize("name", ALL)
def test_every_sampler_trains_and_records_curves_for_every_task(name, runs, tasks, zero_shot_dev_loss):
    result = runs[name]
    per_step = 2 if name in MIXED else 1
    assert result.tasks == [t.name for t in tasks]
    assert len(result.history) == STEPS * per_step and sum(result.draws) == STEPS * per_step
    assert [h[0] for h in result.history] == [s for s in range(STEPS) for _ in range(per_step)]
    assert result.draws == [sum(1 for h in result.history if h[1] == i) for i in range(len(tasks))]
    assert set(result.curves) == {t.name for t in tasks}
    for curve in result.curves.values():
        assert [c[0] for c in curve] == list(range(EVAL_EVERY, STEPS + 1, EVAL_EVERY))
        assert all(math.isfinite(loss) and 0.0 <= acc <= 1.0 for _, loss, acc in curve)
    # Training moved the dev loss, averaged over the tasks, below the base model's (same dev sample).
    after = [result.curves[t.name][-1][1] for t in tasks]
    assert sum(after) < sum(zero_shot_dev_loss) - 0.1, (zero_shot_dev_loss, after)
    assert any(torch.count_nonzero(result.delta[m].B) > 0 for m in result.delta)


@pytest.mark.parametrize("name", REPLAYABLE)
def test_draws_are_exactly_the_samplers_sequence(name, runs, tasks):
    result = runs[name]
    assert replay(name, tasks, result) == [h[1] for h in result.history]


def test_draws_follow_each_samplers_rule(runs):
    big = 0  # sst2: 48 of the 80 training examples
    assert runs["proportional"].draws[big] > max(runs["proportional"].draws[1:])
    assert runs["proportional"].draws[big] > runs["uniform"].draws[big]
    assert runs["proportional"].draws[big] >= runs["temperature"].draws[big] >= runs["uniform"].draws[big]
    assert sorted(h[1] for h in runs["group_dro"].history[:3]) == [0, 1, 2]  # every task once first
    assert min(runs["group_dro"].draws) >= 1


def test_task_evaluations_are_counted_per_sampler(runs):
    """DRM evaluates every candidate (3 per step); MPTS measures the risk of the 2 tasks it trained."""
    assert {name: runs[name].evaluations for name in ALL} == {
        **dict.fromkeys(REPLAYABLE, 0),
        "drm": 3 * STEPS,
        "mpts": 2 * STEPS,
    }
    assert all(len({h[1] for h in runs["drm"].history if h[0] == s}) >= 1 for s in range(STEPS))
    assert all(0 <= runs[name].sampler_seconds < runs[name].seconds for name in ALL)
    assert [runs[name].evaluation_seconds > 0 for name in ALL] == [name in MIXED for name in ALL]


def test_trainer_gives_every_task_its_identifier(minilm, tasks):
    scorer = make_scorer(minilm)
    ident = task_identifier(scorer, tasks[2], 16)
    assert len(ident) == 384 + 2 and ident[-2:] == (pytest.approx(math.log(16)), 4.0)  # agnews: 4 labels
    assert ident[:-2] == pytest.approx(describe(scorer, tasks[2]).tolist(), abs=1e-6)


def test_adaptive_samplers_move_away_from_uniform(runs, tasks):
    """After the run, group DRO no longer draws uniformly: the observed losses changed its weights."""
    for name in ("group_dro",):
        result = runs[name]
        sampler = make_sampler(name, infos(tasks), result.config.sampler_options, seed=result.config.seed)
        replay_into = replay(name, tasks, result, sampler)
        assert replay_into == [h[1] for h in result.history]
        p = sampler.probabilities()
        assert p.sum() == pytest.approx(1.0) and (p > 0).all()
        assert p.max() - p.min() > 0.01, p


def test_multitask_mpts_resume_gives_identical_weights_and_draws(minilm, tasks, runs, tmp_path):
    cfg = config("mpts", checkpoint_every=2)
    full = runs["mpts"]  # two tasks per step; the neural-process risk learner and its Adam state must resume
    assert dataclasses.replace(full.config, checkpoint_every=2) == cfg.resolved(minilm.kind, minilm.default_targets())
    first = train_tasks(tasks, minilm, cfg, checkpoint_dir=tmp_path / "ckpt", stop_after=7)  # mid eval interval
    assert len(first.history) == 7 * 2
    ckpt = load_checkpoint(tmp_path / "ckpt")  # the risk learner went into the safetensors file, the rest to JSON
    learner = ckpt.extra_tensors("sampler/")
    assert "net/decoder.4.weight" in learner and "adam/0/exp_avg" in learner and "generator" in learner
    assert ckpt.meta["sampler"]["evaluations"] == 7 * 2
    resumed = train_tasks(tasks, minilm, cfg, checkpoint_dir=tmp_path / "ckpt", resume=True)
    assert resumed.resumed_from == 7
    assert [h[:2] for h in resumed.history] == [h[:2] for h in full.history]
    assert [h[2] for h in resumed.history] == pytest.approx([h[2] for h in full.history], abs=1e-6)
    assert resumed.draws == full.draws
    assert resumed.curves.keys() == full.curves.keys()
    for name in full.curves:
        assert [c[0] for c in resumed.curves[name]] == [c[0] for c in full.curves[name]]
        flat = [v for c in full.curves[name] for v in c[1:]]
        assert [v for c in resumed.curves[name] for v in c[1:]] == pytest.approx(flat, abs=1e-6)
    assert full.delta.targets == resumed.delta.targets
    for module in full.delta:
        assert torch.equal(full.delta[module].A, resumed.delta[module].A), module
        assert torch.equal(full.delta[module].B, resumed.delta[module].B), module


def test_mpts_pre_update_risk_costs_no_evaluation_and_resumes_exactly(minilm, tasks, tmp_path):
    """risk_target=pre_update learns from the step's own training losses: no task evaluation, no evaluation
    time, and a checkpoint taken between a step and the next (losses not yet learned) resumes exactly."""
    opts = {"candidates": 3, "risk_model": "linear", "risk_target": "pre_update", "risk_scale": "log_k"}
    cfg = config("mpts", eval_every=0, sampler_options=opts, checkpoint_every=2)
    full = train_tasks(tasks, minilm, cfg)
    assert full.evaluations == 0 and full.evaluation_seconds == 0.0
    train_tasks(tasks, minilm, cfg, checkpoint_dir=tmp_path / "ckpt", stop_after=7)
    assert len(load_checkpoint(tmp_path / "ckpt").meta["sampler"]["state"]["pending"]) == 2
    resumed = train_tasks(tasks, minilm, cfg, checkpoint_dir=tmp_path / "ckpt", resume=True)
    assert resumed.resumed_from == 7 and resumed.draws == full.draws
    assert [h[:2] for h in resumed.history] == [h[:2] for h in full.history]
    for module in full.delta:
        assert torch.equal(full.delta[module].A, resumed.delta[module].A), module


def test_sampler_registry_has_every_sampler():
    assert set(ALL) <= set(SAMPLERS.names())


runner = CliRunner()


def cli(*args: str):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.stdout


def test_cli_multitask_mpts_lands_one_adapter_and_eval_all_adapters_grid(tmp_path):
    lib = tmp_path / "lib"
    # Real task data cut to small folders, so the CLI's dev checks and dev evaluation stay cheap.
    dirs = [write_task(small_task(n, n_train=16, n_test=12), tmp_path / n) for n in ("sst2", "agnews")]
    common = ["--multitask", "--max-train", "16", "--batch-size", "4", "--steps", "8", "--eval-every", "4"]
    mpts = [
        "--sampler",
        "mpts",
        "--sampler-opt",
        "candidates=2",
        "--tasks-per-step",
        "2",
    ]
    bad = runner.invoke(app, ["train", *map(str, dirs), *common, "--sampler", "mpts", "--sampler-opt", "gama_std=1",
                              "--library", str(lib), "--name", "bad"])  # fmt: skip
    assert bad.exit_code != 0 and "unknown parameter 'gama_std'" in bad.output and "gamma_std" in bad.output
    cli("train", *dirs, *common, *mpts, "--library", lib, "--name", "mt")
    cli(
        "train",
        *dirs,
        "--multitask",
        "--max-train",
        "16",
        "--batch-size",
        "4",
        "--steps",
        "4",
        "--library",
        lib,
        "--name",
        "mt-u",
    )
    listed = json.loads(cli("library", "list", "--library", lib, "--json"))["adapters"]
    assert sorted(a["name"] for a in listed) == ["mt", "mt-u"]
    rec = json.loads(cli("library", "show", "mt", "--library", lib, "--json"))
    assert rec["method"] == "train_multitask" and rec["task"] == "sst2+agnews"
    recipe = rec["recipe"]
    assert recipe["kind"] == "train"  # the kind; the method column says multi-task
    assert recipe["config"]["sampler"] == "mpts"
    # the stored recipe resolves every sampler option: the shipped defaults are the dev rule's pick (linear risk
    # model, raw loss) with the reference's no-extra-cost target
    assert recipe["config"]["sampler_options"] == MPTSConfig(candidates=2).to_dict()
    opts = recipe["config"]["sampler_options"]
    assert (opts["risk_model"], opts["risk_scale"], opts["risk_target"]) == ("linear", "none", "pre_update")
    assert recipe["config"]["tasks_per_step"] == 2
    assert [t["name"] for t in recipe["tasks"]] == ["sst2", "agnews"]
    assert recipe["draws"] == {"sst2": 8, "agnews": 8}  # B = B-hat = 2: both tasks in every step
    for curve in recipe["curves"].values():
        assert [c[0] for c in curve] == [4, 8] and all(0.0 <= c[2] <= 1.0 for c in curve)
    assert len(recipe["history"]) == 16
    assert not (lib / "runs" / "mt").exists()

    grid = json.loads(cli("eval", "--library", lib, "--all-adapters", *dirs, "--limit", "12", "--json"))["results"]
    assert {(r["adapter"], r["task"]) for r in grid} == {(a, t) for a in ("mt", "mt-u") for t in ("sst2", "agnews")}
    assert all(r["n"] == 12 and 0.0 <= r["accuracy"] <= 1.0 for r in grid)
    table = cli("eval", "--library", lib, "--all-adapters", *dirs, "--limit", "12")
    assert "worst" in table and "CVaR" in table
    accs = [r["accuracy"] for r in grid if r["adapter"] == "mt"]
    assert f"{worst(accs):.3f}" in table and f"{cvar(accs):.3f}" in table
