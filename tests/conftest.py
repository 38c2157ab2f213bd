"""Fixtures and hooks only (the builders the modules share are in ``helpers.py``): the real embedded backbone, a
tiny random LLaMA and GPT-2 saved as HF folders, libraries to work on, a Ray cluster, one torch thread, and the
guards that fail a test or module leaving a forward hook on a shared model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import (
    LIBRARY_TASKS,
    SERVE_HOOKS,
    assert_no_hook_left,
    forward_hooks,
    library_copy,
    minilm_delta,
    small_task,
    tiny_tokenizer,
    watched,
)

from adaptforge.library import TaskEntry
from adaptforge.provenance import read as made_by

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):  # execnet gives its workers COLUMNS=80; the CLI tests read a pipe's width
    for name in ("COLUMNS", "LINES"):
        os.environ.pop(name, None)


@pytest.fixture(autouse=True)
def no_hook_left_by_a_test(request):
    """A forward hook left on a shared model changes every later test's numbers: the test that left it fails.
    A running server's own hooks are the module guard's to check (its worker may hold them between tests)."""
    before = forward_hooks(request.config, ignore=(SERVE_HOOKS,))
    yield
    assert_no_hook_left(request.config, before, request.node.nodeid, ignore=(SERVE_HOOKS,))


@pytest.fixture(scope="module", autouse=True)
def no_hook_left_by_a_module(request):
    """The same over a whole module, after its module-scoped fixtures (servers included) are torn down."""
    before = forward_hooks(request.config)
    yield
    assert_no_hook_left(request.config, before, f"{request.node.nodeid} (its module-scoped fixtures)")


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """One intra-op torch thread for the whole run: the suite's batches are tiny, small LAPACK calls are ~100x
    slower with two OpenMP threads on a loaded 2-core box, and the suite runs as two pytest-xdist workers, one
    per core. Subprocesses (the CLI, Ray workers, servers) choose their own threads."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture()
def library(minilm, tmp_path: Path) -> Path:
    """A library of two MiniLM adapters (sst2 and agnews) and a merge child, plus an unrelated user file."""
    from adaptforge.library import Library

    root = tmp_path / "lib"
    lib = Library(root)
    for seed, (name, task) in enumerate((("sst2-a", "sst2"), ("agnews-a", "agnews"))):
        lib.add(minilm_delta(seed), name=name, base=minilm, task=TaskEntry(task))
    lib.add(
        minilm_delta(7),
        name="child",
        base=minilm,
        provenance=made_by("merge", {"method": "task_arithmetic"}, {}),
        parents=["sst2-a", "agnews-a"],
    )
    (root / "notes.txt").write_text("the user's own file")
    return root


@pytest.fixture(scope="session")
def minilm(request):
    from adaptforge.backbone import Backbone

    return watched(request.config, "minilm", Backbone.load())


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """A randomly initialised LLaMA-style causal LM saved with save_pretrained, loadable by path."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny-llama")
    tok = tiny_tokenizer(folder)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_llama(request, tiny_llama_dir):
    from adaptforge.backbone import Backbone

    return watched(request.config, "tiny_llama", Backbone.load(str(tiny_llama_dir)))


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory) -> Path:
    """A randomly initialised GPT-2 (``Conv1D`` layers, weights stored in x out) saved as an HF folder."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tmp_path_factory.mktemp("tiny-gpt2")
    tok = tiny_tokenizer(folder)
    config = GPT2Config(
        vocab_size=len(tok),
        n_embd=64,
        n_layer=2,
        n_head=4,
        n_positions=512,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def trained_library(tmp_path_factory, minilm):
    """The one trained library the pipeline tests share: a small LoRA per task of :data:`LIBRARY_TASKS`
    (``<task>-a``) plus a second sst2 adapter of another seed (``sst2-b``), and the tasks as folders.
    Read-only: tests that write take a copy (:func:`trained_copy`, or :func:`helpers.library_copy`)."""
    from adaptforge.library import Library
    from adaptforge.pipelines.train import train_into_library
    from adaptforge.tasks import write_task
    from adaptforge.train.config import TrainConfig

    root = tmp_path_factory.mktemp("trained-library")
    lib = Library(root / "lib")
    dirs = {}
    for name in LIBRARY_TASKS:
        task = small_task(name, n_train=32, n_test=24)
        dirs[name] = write_task(task, root / "tasks" / name)
        for suffix, seed in (("a", 0), ("b", 1)) if name == "sst2" else (("a", 0),):
            cfg = TrainConfig(max_train=32, epochs=1, batch_size=16, rank=4, targets=("query", "value"), seed=seed)
            train_into_library(task, minilm, lib, f"{name}-{suffix}", cfg, eval_splits=())
    return lib, dirs


@pytest.fixture()
def trained_copy(trained_library, tmp_path: Path):
    """A private, writable copy of :func:`trained_library` for one test."""
    return library_copy(trained_library, tmp_path / "lib")


@pytest.fixture(scope="module")
def minilm_scorer(minilm):
    """The encoder scorer over the shared MiniLM, one per module."""
    from adaptforge.scorers import make_scorer

    return make_scorer(minilm)


@pytest.fixture()
def no_model_load(monkeypatch):
    """Loading a base model fails the test: what it checks is refused from the library and the files alone."""
    from adaptforge.backbone import Backbone

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the base model was loaded before the refusal")

    monkeypatch.setattr(Backbone, "load", classmethod(refuse))


@pytest.fixture(scope="session")
def ray_session():
    """One real local Ray cluster (2 CPUs) for the whole test run, shut down at the end; skips without Ray."""
    try:
        import ray
    except ImportError:
        pytest.skip("ray is not installed (pip install 'adaptforge[ray]'); the CI installs it")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()
