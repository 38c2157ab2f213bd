"""``generate --method icm`` (ICM-LoRA): in-context task vectors on the encoder and a causal LM, the CVAE over
raw normalised snapshot factors, its size, storage, PEFT-loadable output with lineage, and bad input."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from helpers import run_cli, small_task

from adaptforge.backbone import Backbone
from adaptforge.core import AdaptforgeError
from adaptforge.generate.condition import demonstration_ids, task_vector
from adaptforge.generate.icm import (
    IcmCvae,
    IcmGenerator,
    IcmParams,
    collect_icm_samples,
    flat_sizes,
    flatten,
    init_decoder_output,
    unflatten,
)
from adaptforge.generate.methods import GENERATORS, IcmMethod
from adaptforge.library import Library
from adaptforge.pipelines.generate import generate_into_library
from adaptforge.pipelines.train import train_into_library
from adaptforge.scorers import make_scorer
from adaptforge.tasks import Example, write_task
from adaptforge.train.config import TrainConfig

TINY = IcmParams(shots=4, latent_dim=2, hidden_dim=2, encoder_dim=4, cond_dim=4, steps=30, batch_size=4)
TASKS = ("sst2", "agnews")


def flat(result) -> str:
    """The CLI's output with Rich's line wrapping undone."""
    return " ".join(result.output.split())


def snapshot_library(root, backbone, targets, snapshots: int = 4) -> Library:
    lib = Library(root)
    for name in TASKS:
        cfg = TrainConfig(max_train=16, batch_size=4, epochs=1, rank=2, targets=targets, snapshots=snapshots)
        train_into_library(small_task(name, n_train=16, n_test=8), backbone, lib, f"{name}-s", cfg, eval_splits=())
    return lib


@pytest.fixture(scope="module")
def encoder_library(tmp_path_factory, minilm):
    return snapshot_library(tmp_path_factory.mktemp("icm") / "lib", minilm, ("query",))


def test_flatten_round_trips_and_stats_are_per_tensor(encoder_library, minilm) -> None:
    samples = collect_icm_samples(encoder_library, minilm.fingerprint, tail=0.5)
    assert len(samples.records) == 2 and len(samples.task_of) == 6  # steps 2, 3, 4 of each 4-step run
    assert samples.mean.shape == samples.std.shape == (2 * len(samples.template.modules),)
    parts = samples.x.split(
        [
            t.numel()
            for m in samples.template.modules
            for t in (torch.empty(m.rank, m.in_features), torch.empty(m.out_features, m.rank))
        ],
        dim=1,
    )
    for p in parts:  # z-normalised per tensor over all samples
        assert abs(float(p.mean())) < 1e-4 and abs(float(p.std()) - 1) < 1e-3
    final, _ = encoder_library.load("sst2-s")
    back = unflatten(flatten(final, samples.template), samples.template)
    assert all(torch.equal(back[m].A, final[m].A) and torch.equal(back[m].B, final[m].B) for m in final)


def test_encoder_task_vector_is_the_mean_pooled_demonstration(minilm) -> None:
    scorer = make_scorer(minilm)
    task = small_task("sst2", n_train=8, n_test=8)
    demos = task.splits["train"][:3]
    ids = demonstration_ids(scorer, task, demos)
    label_ids = scorer.encode_labels(task).ids[task.labels.index(demos[0].label)]
    assert ids[0][-len(label_ids) + 1 :] == list(label_ids[1:])  # input, then the label, one [SEP] at the end
    single = [task_vector(scorer, task, [d]) for d in demos]
    assert np.allclose(task_vector(scorer, task, demos), np.mean(single, axis=0), atol=1e-5)
    with pytest.raises(AdaptforgeError, match="demonstration 1 of task 'sst2' has label 'nope', not one of"):
        task_vector(scorer, task, [Example("x", "nope")])


def test_icm_fits_small_generates_and_round_trips(encoder_library, minilm, tmp_path) -> None:
    scorer = make_scorer(minilm)
    got = IcmMethod.obtain(encoder_library, minilm.fingerprint, scorer, TINY, (), lambda m: None)
    assert got.fitted_now and got.generator_bytes < got.training_bytes
    task = small_task("sst2", n_train=16, n_test=8)
    cond = task_vector(scorer, task, task.splits["train"][:4])
    mean_delta = got.generator.generate(cond)
    first = next(iter(mean_delta))
    assert torch.equal(got.generator.generate(cond, seed=3)[first].A, got.generator.generate(cond, seed=3)[first].A)
    assert not torch.equal(got.generator.generate(cond, seed=3)[first].A, mean_delta[first].A)
    loaded = IcmGenerator.load(got.folder)
    again = loaded.generate(cond)
    for m in mean_delta:  # float16 decoder on disk: close, not bit-equal
        assert torch.allclose(again[m].B, mean_delta[m].B, atol=1e-3, rtol=1e-2)
    reuse = IcmMethod.obtain(encoder_library, minilm.fingerprint, scorer, TINY, (), lambda m: None)
    assert not reuse.fitted_now and reuse.folder == got.folder
    with pytest.raises(AdaptforgeError, match="fitted on 384-dimensional task vectors of another base model"):
        loaded.generate(np.zeros(64, dtype=np.float32))


def test_generate_icm_cli_writes_a_peft_folder_with_lineage(encoder_library, minilm, tmp_path) -> None:
    from peft import PeftModel

    examples = tmp_path / "demos.jsonl"
    rows = [{"text": e.text, "label": e.label} for e in small_task("sst2", n_train=8, n_test=8).splits["train"]]
    examples.write_text("\n".join(json.dumps(r) for r in rows))
    labels = ",".join(small_task("sst2", n_train=8, n_test=8).labels)
    common = (
        "generate",
        "--library",
        encoder_library.root,
        "--description",
        "Sentiment of a review.",
        "--labels",
        labels,
        "--method",
        "icm",
    )
    small = [x for k in ("latent_dim", "hidden_dim", "steps") for x in ("--param", f"{k}={getattr(TINY, k)}")]
    result = run_cli(*common, "--out", "gen-icm", "--examples", examples, "--shots", 4, "--seed", 1, *small)
    assert "generate (icm): added gen-icm" in result.stdout
    record = encoder_library.get("gen-icm")
    assert record.recipe["generator_params"]["latent_dim"] == TINY.latent_dim  # --param reached the generator
    assert record.kind == "generate" and len(record.parents) == 2
    assert record.params["generator_method"] == "icm" and record.params["condition_source"] == "4 demonstrations"
    assert record.params["seed"] == 1 and record.params["generator_id"]
    assert record.recipe["generator_bytes"] > 0 and record.recipe["training_bytes"] > 0
    assert "MB of weights); its own weights take " in flat(result)  # both sizes printed
    model = PeftModel.from_pretrained(minilm.model, str(record.path))
    assert any("lora_A" in n for n, _ in model.named_parameters())
    model.unload()
    # bad input, with the exact messages
    r = run_cli(*common, "--out", "x", "--examples", examples, "--shots", 20, ok=False)
    assert r.exit_code != 0
    assert (
        f"--shots 20 but --examples holds {len(rows)} labelled example(s); pass --shots {len(rows)} or fewer" in flat(r)
    )
    r = run_cli(*common, "--out", "x", ok=False)
    assert "--method icm conditions on 16 demonstrations of the task: pass --examples FILE" in flat(r)
    unlabelled = tmp_path / "bad.jsonl"
    unlabelled.write_text(json.dumps({"text": "great"}) + "\n")
    r = run_cli(*common, "--out", "x", "--examples", unlabelled, ok=False)
    assert f"--examples {unlabelled}, line 1, field 'label': missing field; the record has ['text']" in flat(r)
    assert "demonstrations are labelled, one JSON object per line" in flat(r)
    r = run_cli(*common[:-1], "span", "--out", "x", "--shots", 4, ok=False)
    assert "--shots and --examples are for --method icm; --method span reads no examples" in flat(r)
    r = run_cli(*common, "--out", "x", "--examples", examples, "--param", "latnt_dim=3", ok=False)
    assert "generator 'icm': unknown parameter 'latnt_dim'; known:" in flat(r)
    assert "Did you mean 'latent_dim'?" in flat(r)
    r = run_cli(*common[:-1], "icn", "--out", "x", ok=False)
    assert "unknown generator 'icn'; known: icm, span. Did you mean 'icm'?" in flat(r)


def test_description_only_conditioning(encoder_library) -> None:
    outcome = generate_into_library(
        "Sentiment of a review.",
        ["negative", "positive"],
        encoder_library,
        "gen-desc",
        method="icm",
        shots=0,
        params=TINY,
    )
    assert outcome.record.params["condition_source"] == "description"


def test_no_snapshots_in_the_library_is_a_clear_error(trained_library, tmp_path) -> None:
    lib, _ = trained_library
    r = run_cli(
        "generate",
        "--library",
        lib.root,
        "--out",
        "x",
        "--description",
        "d",
        "--labels",
        "a,b",
        "--method",
        "icm",
        "--shots",
        0,
        ok=False,
    )
    assert "has training snapshots; --method icm learns from them: train adapters with " in flat(r)
    assert "`adaptforge train --snapshots 20` (or use --method span)" in flat(r)


def test_causal_path_last_token_task_vector_and_generation(tmp_path, tiny_llama, tiny_llama_dir) -> None:
    scorer = make_scorer(tiny_llama)
    task = small_task("sst2", n_train=8, n_test=8)
    demos = task.splits["train"][:2]
    ids = demonstration_ids(scorer, task, demos)
    reference = Backbone.load(str(tiny_llama_dir)).model  # output_hidden_states hooks a model's layers for good
    with torch.no_grad():
        out = reference(input_ids=torch.tensor([ids[0]]), output_hidden_states=True)
    assert np.allclose(task_vector(scorer, task, demos[:1]), out.hidden_states[-1][0, -1].numpy(), atol=1e-4)
    lib = snapshot_library(tmp_path / "lib", tiny_llama, ("q_proj", "v_proj"))
    write_task(task, tmp_path / "task")
    outcome = generate_into_library(
        task.description,
        list(task.labels),
        lib,
        "gen",
        method="icm",
        examples=list(task.splits["train"]),
        shots=4,
        params=TINY,
        model=str(tiny_llama.name),
        backbone=tiny_llama,
    )
    assert outcome.info["generator_info"]["n_samples"] == 4
    delta, _ = lib.load("gen")
    assert all(torch.isfinite(delta[m].B).all() for m in delta)


def test_registry_has_both_methods() -> None:
    assert GENERATORS.names() == ["icm", "span"]


@pytest.mark.parametrize("norm", ["scalar", "standardise", "whiten"])
def test_condition_normalisation_folds_into_the_saved_projection(norm) -> None:
    torch.manual_seed(0)
    cvae = IcmCvae(10, 6, IcmParams(condition_norm=norm, latent_dim=2, hidden_dim=2, encoder_dim=2, cond_dim=4))
    task_of = torch.arange(12) % 4
    c = torch.randn(12, 6) * 0.1 + torch.randn(4, 6)[task_of] + 5.0
    rms = cvae.set_condition_stats(c, task_of, norm, 4)
    if norm == "whiten":  # the task means' 3 directions, each with unit variance over the 4 tasks
        assert cvae.c_proj is not None and cvae.c_proj.shape == (6, 3)
        means = torch.stack([c[task_of == t].mean(0) for t in range(4)])
        assert torch.allclose(((means - cvae.c_mean) @ cvae.c_proj).var(0), torch.ones(3), atol=1e-4)
    if norm == "standardise":
        assert torch.allclose(((c - cvae.c_mean) @ cvae.c_proj).std(0), torch.ones(6), atol=1e-4)
    assert rms > 0.5
    before = cvae.condition(c)
    cvae.fold()
    assert cvae.c_proj is None and cvae.cond.weight.shape == (4, 6)
    assert torch.allclose(cvae.condition(c), before, atol=1e-5)
    assert set(cvae.saved_state()) == {  # one stored layout for every normalisation
        "cond.weight",
        "cond.bias",
        "decoder.0.weight",
        "decoder.0.bias",
        "decoder.2.weight",
        "decoder.2.bias",
        "c_mean",
        "c_scale",
    }


def test_standardised_condition_decodes_each_seen_task_nearest_its_own_snapshots(encoder_library, minilm) -> None:
    """With the defaults (condition standardised per dimension, linear decoder from the principal directions),
    the z = 0 decode of a task's task vector lands much nearer that task's snapshots than the other task's (the
    first version's scalar scaling left the projected condition at a few hundredths of z's scale, and the
    benchmark's decodes were nearly one adapter for every task)."""
    scorer = make_scorer(minilm)
    samples = collect_icm_samples(encoder_library, minilm.fingerprint, tail=0.5)
    params = dataclasses.replace(TINY, steps=150)

    def condition(task, shots):
        return task_vector(scorer, task, shots)

    generator = IcmGenerator.fit(samples, condition, params)
    assert_decodes_nearest_own(generator, samples, condition, params.shots)


def assert_decodes_nearest_own(generator: IcmGenerator, samples, condition, shots: int) -> None:
    task_of = torch.tensor(samples.task_of)
    own = [samples.x[task_of == t].mean(0) for t in range(2)]
    for t, task in enumerate(samples.tasks):
        cond = condition(task, task.splits["train"][:shots])
        x = flatten(generator.generate(cond), samples.template)
        parts = x.split(flat_sizes(samples.template))
        xn = torch.cat([(p - m) / s for p, m, s in zip(parts, samples.mean, samples.std, strict=True)])
        assert (xn - own[t]).norm() < 0.5 * (xn - own[1 - t]).norm()


def test_per_step_draws_read_each_demonstration_once(encoder_library, minilm, tmp_path) -> None:
    """The fit reads every stored demonstration alone, once, and forms k-shot conditions as means of those
    readings (with ``condition_draw='per_step'`` a fresh draw each step); that is exact because a task vector is
    the mean of its demonstrations' readings. The fit still tells the two seen tasks apart."""
    scorer = make_scorer(minilm)
    samples = collect_icm_samples(encoder_library, minilm.fingerprint, tail=0.5)
    calls: list[int] = []

    def condition(task, shots):
        calls.append(len(shots))
        return task_vector(scorer, task, shots)

    params = dataclasses.replace(TINY, condition_draw="per_step", steps=150, hidden_dim=0)
    generator = IcmGenerator.fit(samples, condition, params)
    assert set(calls) == {1} and len(calls) == sum(len(t.splits["train"]) for t in samples.tasks)
    assert generator.cvae.decoder[2].in_features == len(samples.tasks)  # hidden_dim 0: one per training task
    generator.save(tmp_path / "g")
    assert IcmGenerator.load(tmp_path / "g").cvae.hidden == len(samples.tasks)
    task = samples.tasks[0]
    shots = task.splits["train"][:4]
    single = np.mean([task_vector(scorer, task, [e]) for e in shots], axis=0)
    np.testing.assert_allclose(single, task_vector(scorer, task, shots), atol=1e-5)
    assert_decodes_nearest_own(generator, samples, condition, params.shots)


def test_frozen_output_layer_stays_the_mean_and_principal_directions(encoder_library, minilm) -> None:
    scorer = make_scorer(minilm)
    samples = collect_icm_samples(encoder_library, minilm.fingerprint, tail=0.5)
    params = dataclasses.replace(TINY, output_lr_scale=0.0, decoder_act="identity", steps=10)
    generator = IcmGenerator.fit(samples, lambda task, shots: task_vector(scorer, task, shots), params)
    last = generator.cvae.decoder[2]
    assert isinstance(generator.cvae.decoder[1], torch.nn.Identity)
    start = IcmCvae(samples.x.shape[1], generator.cvae.c_dim, params)
    with torch.no_grad():
        init_decoder_output(start, samples.x)
    assert torch.equal(last.bias, start.decoder[2].bias) and torch.equal(last.weight, start.decoder[2].weight)
    assert torch.allclose(last.bias, samples.x.mean(0), atol=1e-5)


def centred_span_residual(x: torch.Tensor, samples) -> float:
    """Relative norm of ``x`` minus the samples' mean outside the span of the centred samples (the PCA subspace)."""
    centred = samples.x - samples.x.mean(0)
    q, _ = torch.linalg.qr(centred.T.double())
    r = (x - samples.x.mean(0)).double()
    return float((r - q @ (q.T @ r)).norm() / r.norm().clamp(min=1e-30))


def normalised(delta, samples) -> torch.Tensor:
    parts = flatten(delta, samples.template).split(flat_sizes(samples.template))
    return torch.cat([(p - m) / s for p, m, s in zip(parts, samples.mean, samples.std, strict=True)])


def test_conv_decoder_leaves_the_pca_subspace_tells_tasks_apart_and_round_trips(encoder_library, minilm, tmp_path):
    """'pca' decodes stay in the samples' principal subspace (its output layer is frozen there); the scaled-down
    convolutional decoder starts at the samples' mean, decodes off that subspace, lands each seen task nearer its
    own snapshots than the other task's (less sharply than 'pca': it cannot place every element), and is smaller
    than the snapshots it learned from."""
    scorer = make_scorer(minilm)
    samples = collect_icm_samples(encoder_library, minilm.fingerprint, tail=0.5)

    def condition(task, shots):
        return task_vector(scorer, task, shots)

    cond = condition(samples.tasks[0], samples.tasks[0].splits["train"][:4])
    pca = IcmGenerator.fit(samples, condition, dataclasses.replace(TINY, steps=20))
    assert centred_span_residual(normalised(pca.generate(cond, seed=1), samples), samples) < 1e-3
    params = dataclasses.replace(TINY, decoder="conv", conv_channels=2, conv_stages=2, steps=150)
    start = IcmCvae(samples.x.shape[1], len(cond), params)
    init_decoder_output(start, samples.x)
    with torch.no_grad():
        first = start.decode(torch.zeros(1, params.latent_dim), torch.randn(1, params.cond_dim))[0]
    assert torch.allclose(first, samples.x.mean(0))  # zero code: the first decode is the mean
    generator = IcmGenerator.fit(samples, condition, params)
    assert centred_span_residual(normalised(generator.generate(cond), samples), samples) > 0.05
    task_of = torch.tensor(samples.task_of)
    own = [samples.x[task_of == t].mean(0) for t in range(2)]
    for t, task in enumerate(samples.tasks):
        x = normalised(generator.generate(condition(task, task.splits["train"][: params.shots])), samples)
        assert (x - own[t]).norm() < (x - own[1 - t]).norm()
    size = generator.save(tmp_path / "conv")
    assert size < samples.raw_bytes
    loaded = IcmGenerator.load(tmp_path / "conv")
    assert isinstance(loaded.cvae.decoder, type(generator.cvae.decoder))
    a, b = generator.generate(cond), loaded.generate(cond)
    assert all(torch.allclose(a[m].B, b[m].B, atol=1e-3, rtol=1e-2) for m in a)


def test_prior_latent_samples_z_at_generation(encoder_library, minilm) -> None:
    """``latent='prior'`` draws z ~ N(0, I) every time (seeded by the generate seed, else the params' seed);
    'zero' decodes z = 0 unless a seed is passed."""
    scorer = make_scorer(minilm)
    samples = collect_icm_samples(encoder_library, minilm.fingerprint, tail=0.5)
    zero = IcmGenerator.fit(samples, lambda task, shots: task_vector(scorer, task, shots), TINY)
    prior_params = dataclasses.replace(TINY, latent="prior")
    prior = IcmGenerator(prior_params, zero.template, zero.cvae, zero.mean, zero.std, zero.info)
    cond = task_vector(scorer, samples.tasks[0], samples.tasks[0].splits["train"][:4])
    m = next(iter(zero.generate(cond)))
    assert torch.equal(prior.generate(cond)[m].B, zero.generate(cond, seed=TINY.seed)[m].B)
    assert torch.equal(prior.generate(cond, seed=5)[m].B, zero.generate(cond, seed=5)[m].B)
    assert not torch.equal(prior.generate(cond)[m].B, zero.generate(cond)[m].B)


def test_final_adapter_bytes_are_reported_beside_the_snapshots(encoder_library, minilm) -> None:
    samples = collect_icm_samples(encoder_library, minilm.fingerprint, tail=0.5)
    assert samples.final_bytes == 4 * sum(flat_sizes(samples.template)) * len(samples.records)
    assert samples.raw_bytes == samples.final_bytes * 3  # steps 2, 3, 4 of each 4-step run
