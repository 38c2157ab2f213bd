"""Adapter generation from a description (ICM-LoRA style): exact basis math on synthetic adapters, the CVAE's
fit, interpolation and determinism, storage round trips and corruption, and real adapters of MiniLM and a tiny LLaMA.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import small_task

from adaptforge.core import AdaptforgeError, LoraDelta, LoraModule
from adaptforge.evaluate import evaluate
from adaptforge.generate import (
    GeneratorConfig,
    GeneratorFileError,
    GeneratorSamples,
    LoraGenerator,
    SpanBasis,
    collect_samples,
    describe_new_task,
)
from adaptforge.generate.storage import META_FILE, TENSORS_FILE
from adaptforge.library import BaseRef, Library, TaskEntry
from adaptforge.pipelines.train import train_into_library
from adaptforge.provenance import read as made_by
from adaptforge.scorers import make_scorer
from adaptforge.train.config import TrainConfig

SHAPES = {"layers.0.q": (12, 10), "layers.1.v": (8, 12)}  # module -> (out, in)
RANK, DIM = 2, 8
FAST = GeneratorConfig(steps=800, hidden_dim=32, latent_dim=2, cond_dim=8, condition_noise=0.0)


def linear_world(seed: int = 0) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]], np.ndarray]:
    """Per module fixed ``B0 (out x r)``, ``A0 (r x in)``, ``W (r x d)``: the adapter of condition ``e`` is
    ``B0 diag(W e) A0``, linear in ``e``; and 6 unit task embeddings."""
    g = torch.Generator().manual_seed(seed)
    world = {
        name: (
            torch.randn(out, RANK, generator=g),
            torch.randn(RANK, inp, generator=g),
            torch.randn(RANK, DIM, generator=g),
        )
        for name, (out, inp) in SHAPES.items()
    }
    emb = torch.randn(6, DIM, generator=g)
    return world, torch.nn.functional.normalize(emb, dim=1).numpy()


def adapter_of(world, e: np.ndarray, mix: int | None = None, scale: float = 2.0) -> LoraDelta:
    """The world's adapter for ``e``; ``mix`` re-factors it as ``(B M)(M^-1 A)`` with a random ``M`` (another
    "initialisation" of the same dense delta)."""
    modules = {}
    for name, (B0, A0, W) in world.items():
        A, B = torch.diag(W @ torch.as_tensor(e)) @ A0 / scale, B0.clone()
        if mix is not None:
            M = torch.randn(RANK, RANK, generator=torch.Generator().manual_seed(mix)) + 2 * torch.eye(RANK)
            A, B = torch.linalg.solve(M, A), B @ M
        modules[name] = LoraModule(A=A.contiguous(), B=B.contiguous(), scale=scale)
    return LoraDelta(modules)


def dense_error(a: LoraDelta, b: LoraDelta) -> float:
    num = sum(float((a.dense(n) - b.dense(n)).pow(2).sum()) for n in a)
    return (num / sum(float(b.dense(n).pow(2).sum()) for n in b)) ** 0.5


def assert_identical(a: LoraDelta, b: LoraDelta) -> None:
    assert a.targets == b.targets
    for n in a:
        assert torch.equal(a[n].A, b[n].A) and torch.equal(a[n].B, b[n].B) and a[n].scale == b[n].scale


@pytest.fixture(scope="module")
def world():
    return linear_world()


@pytest.fixture(scope="module")
def samples(world) -> GeneratorSamples:
    """Six tasks, two factorisations ("seeds") each of the same dense adapter."""
    w, emb = world
    deltas = [adapter_of(w, e, mix=mix) for e in emb for mix in (None, 7)]
    tasks = [f"t{i}" for i in range(len(emb)) for _ in range(2)]
    names = [f"{t}-v{k}" for k, t in enumerate(tasks)]
    return GeneratorSamples.from_deltas(deltas, np.repeat(emb, 2, axis=0), names, tasks)


@pytest.fixture(scope="module")
def generator(samples) -> LoraGenerator:
    return LoraGenerator.fit(samples, FAST)


# ---------------------------------------------------------------------------------------- basis math


def test_span_basis_coordinates_decode_to_samples_and_zero_to_their_mean(samples):
    basis, coords, gram = SpanBasis.fit(samples.deltas, samples.template, "dense", "module")
    dense = {n: torch.stack([d.dense(n).double() for d in samples.deltas]) for n in samples.template.targets}
    flat = torch.cat([dense[n].flatten(1) for n in samples.template.targets], dim=1)
    torch.testing.assert_close(gram, flat @ flat.T, rtol=1e-6, atol=0.0)  # from r x r products only
    assert basis.dims == [2, 2]  # B0 diag(W e) A0 spans r = 2 directions per module; float noise is dropped
    for i in (0, 5):
        out = basis.decode(coords[i])
        assert dense_error(out.delta, samples.deltas[i]) < 1e-5 and max(out.refactor_errors.values()) < 1e-5
    mean = basis.decode(torch.zeros(basis.dim))
    torch.testing.assert_close(mean.weights, torch.full((2, len(samples)), 1 / len(samples), dtype=torch.float64))
    for n in samples.template.targets:  # the world's adapters share B0 and A0, so their mean is still rank r
        torch.testing.assert_close(mean.delta.dense(n), dense[n].mean(0).float(), rtol=1e-4, atol=1e-5)


def test_dense_span_is_invariant_to_the_factorisation_but_raw_factors_are_not(samples):
    dense, _, _ = SpanBasis.fit(samples.deltas, samples.template, "dense", "adapter")
    factors, _, _ = SpanBasis.fit(samples.deltas, samples.template, "factors", "adapter")
    assert dense.dims == [4]  # two factorisations of one adapter are one point ...
    assert factors.dim > dense.dim  # ... but two points to the raw factors
    mean = dense.decode(torch.zeros(dense.dim)).delta
    truth = LoraDelta({n: LoraModule(*_mean_factors(samples, n), 1.0) for n in samples.template.targets})
    assert dense_error(mean, truth) > 0.05  # averaging A and B separately is not averaging the adapters


def _mean_factors(samples: GeneratorSamples, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    A = torch.stack([d[name].A * d[name].scale for d in samples.deltas]).mean(0)
    B = torch.stack([d[name].B for d in samples.deltas]).mean(0)
    return A, B


# ---------------------------------------------------------------------------------------- generator


def test_generator_reproduces_a_training_task_and_interpolates(world, samples, generator):
    w, emb = world
    for i in (0, 3):
        out = generator.generate_detailed(emb[i])
        assert dense_error(out.delta, adapter_of(w, emb[i])) < 0.15
        assert out.delta.targets == samples.template.targets
        assert out.delta.ranks == samples.template.ranks
        assert all(out.delta[n].scale == samples.template.scales[n] for n in out.delta)
    mid = (emb[1] + emb[2]) / 2
    got = generator.generate(mid)
    truth = adapter_of(w, mid)
    assert dense_error(got, truth) < min(
        dense_error(got, adapter_of(w, emb[1])), dense_error(got, adapter_of(w, emb[2]))
    )
    assert generator.info["train_reconstruction_error"] < 0.15
    assert generator.info["n_samples"] == 12 and generator.info["curve"][-1][1] < generator.info["curve"][0][1]


def test_condition_noise_shrinks_a_novel_condition_to_the_mean_adapter(world):
    """A condition unlike any in the library (orthogonal to all of them) should give about the mean adapter: the
    default training noise on the condition does that; without it the untrained projection adds arbitrary terms."""
    w, emb = world
    samples = GeneratorSamples.from_deltas([adapter_of(w, e) for e in emb], emb)
    novel = emb.mean(0) + 0.8 * np.linalg.svd(emb - emb.mean(0))[2][-1]
    plain = LoraGenerator.fit(samples, FAST).generate_detailed(novel)
    noisy = LoraGenerator.fit(samples, GeneratorConfig.from_dict({**FAST.to_dict(), "condition_noise": 3.0}))
    shrunk = noisy.generate_detailed(novel)
    assert GeneratorConfig().condition_noise == 3.0
    assert np.abs(shrunk.weights - 1 / 6).max() < 0.05 < np.abs(plain.weights - 1 / 6).max()


def test_generation_is_deterministic_and_seeded_samples_differ(world):
    """Two variants per task that differ in strength: the latent carries the variation, z = 0 their mean."""
    w, emb = world
    deltas = [_stretched(adapter_of(w, e), k) for e in emb for k in (0.5, 1.5)]
    samples = GeneratorSamples.from_deltas(deltas, np.repeat(emb, 2, axis=0))
    first, again = LoraGenerator.fit(samples, FAST), LoraGenerator.fit(samples, FAST)
    e = emb[4]
    assert_identical(first.generate(e), again.generate(e))
    assert_identical(first.generate(e, seed=3), again.generate(torch.from_numpy(e), seed=3))
    assert dense_error(first.generate(e, seed=3), first.generate(e, seed=4)) > 0.05
    assert dense_error(first.generate(e), adapter_of(w, e)) < 0.15  # the mean of the two strengths


def _stretched(delta: LoraDelta, k: float) -> LoraDelta:
    return LoraDelta({n: LoraModule(m.A, m.B * k, m.scale) for n, m in delta.modules.items()})


def test_save_load_round_trip_and_size(tmp_path, samples, generator):
    folder = tmp_path / "gen"
    generator.save(folder)
    generator.save(folder)  # replacing an existing generator is atomic too
    assert sorted(p.name for p in folder.iterdir()) == [META_FILE, TENSORS_FILE]
    assert [p.name for p in tmp_path.iterdir()] == ["gen"]  # no temporary folders left behind
    loaded = LoraGenerator.load(folder)
    for e, seed in ((samples.embeddings[0], None), (samples.embeddings[7], 11)):
        assert_identical(loaded.generate(e, seed), generator.generate(e, seed))
    assert loaded.num_parameters() == generator.num_parameters() == generator.info["generator_parameters"]
    adapter = samples.template.adapter_parameters()
    assert generator.info["adapter_parameters"] == adapter == sum(RANK * (o + i) for o, i in SHAPES.values())
    assert generator.num_parameters() > len(samples) * adapter  # the basis holds the samples' factors
    assert loaded.info["sample_names"] == samples.names and loaded.config == generator.config


def test_factor_representation_fits_adapters_with_a_shared_init(world):
    w, emb = world
    samples = GeneratorSamples.from_deltas([adapter_of(w, e) for e in emb], emb)
    gen = LoraGenerator.fit(samples, GeneratorConfig.from_dict({**FAST.to_dict(), "representation": "factors"}))
    out = gen.generate_detailed(emb[2])
    assert out.refactor_errors == dict.fromkeys(samples.template.targets, 0.0)  # linear in A and B, no SVD
    assert dense_error(out.delta, samples.deltas[2]) < 0.2


# ---------------------------------------------------------------------------------------- errors


def test_errors_are_clear(tmp_path, world, samples, generator):
    w, emb = world
    with pytest.raises(AdaptforgeError, match="trained on 8-dimensional"):
        generator.generate(np.zeros(5, dtype=np.float32))
    with pytest.raises(AdaptforgeError, match="NaN"):
        generator.generate(np.full(DIM, np.nan, dtype=np.float32))
    with pytest.raises(AdaptforgeError, match="at least 2"):
        LoraGenerator.fit(GeneratorSamples.from_deltas(samples.deltas[:1], emb[:1]))
    with pytest.raises(AdaptforgeError, match="identical"):
        LoraGenerator.fit(GeneratorSamples.from_deltas([samples.deltas[0]] * 2, emb[:2]), FAST)
    with pytest.raises(AdaptforgeError, match=r"generator config: unknown parameter 'betta'.*Did you mean 'beta'"):
        GeneratorConfig.from_dict({"betta": 1.0})
    with pytest.raises(AdaptforgeError, match="generator config: 'representation' must be one of .*, got 'raw'"):
        GeneratorConfig(representation="raw")
    with pytest.raises(AdaptforgeError, match="generator config: 'steps' must be >= 1, got 0"):
        GeneratorConfig(steps=0)
    other = LoraDelta({**samples.deltas[0].modules, "layers.2.k": samples.deltas[0]["layers.0.q"]})
    with pytest.raises(AdaptforgeError, match="does not fit the template"):
        GeneratorSamples.from_deltas([samples.deltas[0], other], emb[:2])
    with pytest.raises(AdaptforgeError, match="one embedding row"):
        GeneratorSamples.from_deltas(samples.deltas[:2], emb[:3])


def test_missing_or_corrupt_files_name_the_file(tmp_path, generator):
    folder = tmp_path / "gen"
    with pytest.raises(GeneratorFileError, match=META_FILE):
        LoraGenerator.load(folder)
    generator.save(folder)
    tensors = folder / TENSORS_FILE
    data = bytearray(tensors.read_bytes())
    data[-3] ^= 0xFF
    tensors.write_bytes(bytes(data))
    with pytest.raises(GeneratorFileError, match=rf"{TENSORS_FILE}.*corrupted"):
        LoraGenerator.load(folder)
    generator.save(folder)
    meta = json.loads((folder / META_FILE).read_text())
    del meta["template"]
    (folder / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(GeneratorFileError, match="field 'template' is missing"):
        LoraGenerator.load(folder)
    (folder / META_FILE).write_text("{not json")
    with pytest.raises(GeneratorFileError, match="not valid JSON"):
        LoraGenerator.load(folder)
    tensors.unlink()
    with pytest.raises(GeneratorFileError, match=f"{TENSORS_FILE}: missing"):
        LoraGenerator.load(folder)


# ---------------------------------------------------------------------------------------- library


def _add(
    lib: Library, delta: LoraDelta, name: str, task: str | None, emb: np.ndarray | None, fp: str = "fp", kind: str = ""
) -> None:
    made = made_by(kind, {"method": kind}, {}) if kind else None
    lib.add(delta, name=name, base=BaseRef("m", fp), task=TaskEntry(task, embedding=emb), provenance=made)


def test_collect_samples_filters_and_explains(tmp_path, world, samples):
    w, emb = world
    lib = Library(tmp_path / "lib")
    for i in range(4):
        _add(lib, samples.deltas[2 * i], f"a{i}", f"t{i}", emb[i])
    _add(lib, samples.deltas[8], "a0-seed2", "t0", emb[0])
    _add(lib, samples.deltas[1], "merged", "t0+t1", None, kind="merge")
    _add(lib, samples.deltas[1], "other-base", "t1", emb[1], fp="fp2")
    small = LoraDelta({n: LoraModule(m.A[:1], m.B[:, :1], m.scale) for n, m in samples.deltas[2].modules.items()})
    _add(lib, small, "rank1", "t1", emb[1])
    _add(lib, samples.deltas[3], "short-emb", "t1", emb[1][:4])
    got = collect_samples(lib, "fp", exclude_tasks=["t3"])
    assert got.names == ["a0", "a1", "a2", "a0-seed2"] and got.tasks == ["t0", "t1", "t2", "t0"]
    np.testing.assert_allclose(got.embeddings[3], emb[0], rtol=0, atol=1e-7)
    assert set(got.skipped) == {"a3", "merged", "rank1", "short-emb"}  # other-base is not listed on this base
    assert "rank" in got.skipped["rank1"] and "dimensions" in got.skipped["short-emb"]
    assert "excluded" in got.skipped["a3"]
    assert "(merge)" in got.skipped["merged"] and "only tasks' own adapters" in got.skipped["merged"]
    with pytest.raises(AdaptforgeError, match="1 usable adapter"):
        collect_samples(lib, "fp2")


def test_real_minilm_adapters_generate_an_adapter_that_scores(tmp_path, minilm):
    lib = Library(tmp_path / "lib")
    cfg = TrainConfig(epochs=1, max_train=32, batch_size=16, max_length=48, targets=("query", "value"))
    for name, seed in (("sst2", 0), ("trec_question_type", 0), ("sst2", 1)):
        train_into_library(
            small_task(name, 32, 8),
            minilm,
            lib,
            f"{name}-{seed}",
            TrainConfig(**{**cfg.to_dict(), "seed": seed}),
            eval_splits=(),
        )
    samples = collect_samples(lib, minilm.fingerprint)
    gen = LoraGenerator.fit(samples, FAST)
    scorer = make_scorer(minilm, max_length=48)
    target = small_task("subjectivity", 8, 16)
    delta = gen.generate(describe_new_task(scorer, target.description, target.labels))
    assert delta.targets == samples.template.targets and len(delta.targets) == 12
    assert delta.ranks == dict.fromkeys(delta.targets, 8)
    result = evaluate(scorer, target, "test", delta)
    assert result.n == 16 and 0.0 <= result.accuracy <= 1.0 and np.isfinite(result.loss)
    assert gen.info["library_parameters"] == 3 * lib.load("sst2-0")[0].num_parameters()
    assert gen.num_parameters() > gen.info["library_parameters"]  # the samples' factors are the basis
    lib.add(delta, name="generated", base=minilm, provenance=made_by("generate", {}, {}))
    assert_identical_dense(lib.load("generated")[0], delta)


def assert_identical_dense(a: LoraDelta, b: LoraDelta) -> None:
    for n in a:
        torch.testing.assert_close(a.dense(n), b.dense(n))


def test_tiny_causal_lm_adapters(tmp_path, tiny_llama):
    lib = Library(tmp_path / "lib")
    cfg = TrainConfig(epochs=1, max_train=16, batch_size=8, lr=3e-3, rank=4)
    for name in ("sst2", "agnews"):
        train_into_library(small_task(name, 16, 8), tiny_llama, lib, name, cfg, eval_splits=())
    samples = collect_samples(lib, tiny_llama.fingerprint)
    gen = LoraGenerator.fit(samples, FAST)
    scorer = make_scorer(tiny_llama)
    target = small_task("trec_question_type", 8, 8)
    delta = gen.generate(describe_new_task(scorer, target.description, target.labels), seed=0)
    assert delta.targets == samples.template.targets and all("proj" in t for t in delta.targets)
    assert set(delta.ranks.values()) == {4}
    assert np.isfinite(evaluate(scorer, target, "test", delta).loss)
    with pytest.raises(AdaptforgeError, match="dimensional"):
        gen.generate(np.zeros(samples.embedding_dim + 1, dtype=np.float32))
