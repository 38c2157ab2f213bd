"""Training on real models: the embedded encoder and a tiny random LLaMA; resume after a kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import small_task, task_dir

from adaptforge.core import AdaptforgeError
from adaptforge.evaluate import evaluate
from adaptforge.scorers import make_scorer
from adaptforge.train.config import TrainConfig
from adaptforge.train.trainer import train


def assert_same_delta(a, b) -> None:
    assert a.targets == b.targets
    for name in a:
        assert torch.equal(a[name].A, b[name].A), name
        assert torch.equal(a[name].B, b[name].B), name
        assert a[name].scale == b[name].scale


def test_lora_beats_zero_shot_on_real_task(minilm):
    task = small_task("trec_question_type", n_train=240, n_test=150)
    scorer = make_scorer(minilm)
    zero = evaluate(scorer, task, "test")
    result = train(task, minilm, TrainConfig(epochs=2, batch_size=16))
    tuned = evaluate(scorer, task, "test", result.delta)
    assert tuned.accuracy > zero.accuracy + 0.15, (zero.accuracy, tuned.accuracy)
    # The backbone is left exactly as it was: LoRA layers are unloaded after training.
    assert evaluate(scorer, task, "test").accuracy == zero.accuracy


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(minilm, tmp_path):
    task = small_task("sst2", n_train=48, n_test=8)
    cfg = TrainConfig(epochs=2, batch_size=16, checkpoint_every=2, dropout=0.1)  # dropout: RNG state must resume too
    full = train(task, minilm, cfg)
    first = train(task, minilm, cfg, checkpoint_dir=tmp_path / "ckpt", stop_after=3)
    assert len(first.history) == 3
    resumed = train(task, minilm, cfg, checkpoint_dir=tmp_path / "ckpt", resume=True)
    assert resumed.resumed_from == 3
    assert [round(h[2], 6) for h in resumed.history] == [round(h[2], 6) for h in full.history]
    assert_same_delta(full.delta, resumed.delta)


def test_resume_refuses_a_changed_config(minilm, tmp_path):
    task = small_task("sst2", n_train=32, n_test=8)
    train(task, minilm, TrainConfig(epochs=1, batch_size=16, checkpoint_every=1), checkpoint_dir=tmp_path, stop_after=1)
    with pytest.raises(AdaptforgeError, match=r"settings changed \(lr 0\.001 -> 0\.0005\)"):
        train(
            task,
            minilm,
            TrainConfig(epochs=1, batch_size=16, checkpoint_every=1, lr=5e-4),
            checkpoint_dir=tmp_path,
            resume=True,
        )


def test_causal_lm_trains_and_scores(tiny_llama):
    task = small_task("sst2", n_train=32, n_test=32)
    task = task.with_splits(test=task.split("train"))  # memorisation is what a tiny random model can show
    scorer = make_scorer(tiny_llama)
    before = evaluate(scorer, task, "test")
    result = train(task, tiny_llama, TrainConfig(epochs=15, batch_size=8, lr=3e-3, rank=8))
    after = evaluate(scorer, task, "test", result.delta)
    assert result.delta.targets and all("proj" in t for t in result.delta.targets)
    assert after.loss < 0.7 * before.loss, (before.loss, after.loss)
    assert after.accuracy > before.accuracy


def test_config_rejects_unknown_keys_and_bad_values():
    with pytest.raises(AdaptforgeError, match=r"train config: unknown parameter 'rnak'.*Did you mean 'rank'"):
        TrainConfig.from_dict({"rnak": 4})
    with pytest.raises(AdaptforgeError, match="train config: 'batch_size' must be >= 1, got 0"):
        TrainConfig(batch_size=0)
    with pytest.raises(AdaptforgeError, match="train config: 'rank' must be an integer >= 1, got '8'"):
        TrainConfig.from_dict({"rank": "8"})
    stored = TrainConfig(targets=["query"], sampler_options={"tau": 0.05}).to_dict()  # the recipe / checkpoint form
    assert stored["targets"] == ["query"] and stored["sampler_options"] == {"tau": 0.05}
    assert TrainConfig.from_dict(stored).targets == ("query",)


def _run_cli(args, env, **kw):
    return subprocess.Popen(
        [sys.executable, "-m", "adaptforge.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def test_killed_training_process_resumes_to_the_same_adapter(tiny_llama_dir, tmp_path):
    """SIGKILL a real `adaptforge train` process after its first checkpoint, then `--resume` it."""
    from adaptforge.library import Library

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    common = [
        str(task_dir("sst2")),
        "--model",
        str(tiny_llama_dir),
        "--max-train",
        "96",
        "--epochs",
        "3",
        "--batch-size",
        "8",
        "--checkpoint-every",
        "4",
        "--seed",
        "3",
    ]
    ref = _run_cli(["train", *common, "--library", str(tmp_path / "ref"), "--name", "a"], env)
    assert ref.wait(timeout=600) == 0, ref.stderr.read()

    lib = tmp_path / "lib"
    proc = _run_cli(["train", *common, "--library", str(lib), "--name", "a"], env)
    deadline = time.time() + 300
    while not (lib / "runs" / "a" / "state.json").exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not Library(lib).exists("a")  # nothing half-written
    again = _run_cli(["train", *common, "--library", str(lib), "--name", "a", "--resume"], env)
    assert again.wait(timeout=600) == 0, again.stderr.read()
    a, rec = Library(lib).load("a")
    b, _ = Library(tmp_path / "ref").load("a")
    assert rec.recipe["resumed_from"] is not None and rec.recipe["resumed_from"] > 0
    assert_same_delta(a, b)
    assert not (lib / "runs" / "a").exists()


def test_precision_defaults_by_kind_and_old_checkpoints_resume_as_fp32():
    """bf16 by default for causal LMs, fp32 for encoders; a checkpoint written before the setting existed ran in
    fp32, so it resumes unchanged in fp32 and names the change otherwise."""
    from adaptforge.train.trainer import resume_mismatch

    assert TrainConfig().resolved("causal", ("q_proj",)).precision == "bf16"
    assert TrainConfig().resolved("encoder", ("query",)).precision == "fp32"
    run = {"tasks": ["t"], "base": "b", "data": "d"}
    old = {**run, "config": {k: v for k, v in TrainConfig(precision="fp32").to_dict().items() if k != "precision"}}
    assert resume_mismatch(old, {**run, "config": TrainConfig(precision="fp32").to_dict()}) is None
    changed = resume_mismatch(old, {**run, "config": TrainConfig(precision="bf16").to_dict()})
    assert changed == "the training settings changed (precision 'fp32' -> 'bf16')"


def test_bf16_training_keeps_float32_lora_weights_and_learns(tiny_llama):
    from helpers import reverse_task

    from adaptforge.train.trainer import forward_precision

    with forward_precision("bf16"):
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")
    with forward_precision("fp32"):
        assert not torch.is_autocast_enabled("cpu")
    cfg = TrainConfig(epochs=3, batch_size=8, lr=1e-2, rank=4, checkpoint_every=0, precision="bf16")
    result = train(reverse_task(), tiny_llama, cfg)
    assert result.config.precision == "bf16"
    assert all(m.A.dtype == m.B.dtype == torch.float32 for m in result.delta.modules.values())
    first, last = result.history[0][2], result.history[-1][2]
    assert last < first, (first, last)
