"""Shared fixtures: the real embedded backbone, a tiny random LLaMA saved as an HF folder, small tasks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED_TASKS = Path(__file__).resolve().parents[2] / "shared" / "data" / "tasks"
SHIPPED_TASKS = Path(__file__).resolve().parents[1] / "src" / "adaptforge" / "data" / "tasks"


def task_dir(name: str) -> Path:
    """A real task folder: the package's shipped copy, else the shared data."""
    for root in (SHIPPED_TASKS, SHARED_TASKS):
        if (root / name / "task.json").is_file():
            return root / name
    pytest.skip(f"task {name} not available")


def small_task(name: str, n_train: int = 64, n_test: int = 64, seed: int = 0):
    from adaptforge.tasks import load_task

    task = load_task(task_dir(name))
    return task.with_splits(
        train=task.sample("train", n_train, seed=seed),
        dev=task.sample("dev" if "dev" in task.splits else "test", n_test, seed=seed),
        test=task.sample("test", n_test, seed=seed),
    )


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a module: its batches are tiny, small LAPACK calls are ~100x slower with two
    OpenMP threads on a loaded 2-core box, and extra threads only spin. Use with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_cli(*args: object, ok: bool = True):
    """Invoke the real ``adaptforge`` CLI in-process (arguments stringified); ``ok`` asserts exit code 0."""
    from typer.testing import CliRunner

    from adaptforge.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, result.output + repr(result.exception)
    return result


@pytest.fixture(scope="session")
def minilm():
    from adaptforge.backbone import Backbone

    return Backbone.load()


def _tiny_tokenizer(folder: Path):
    """A byte-level BPE trained in memory on real task text: no download, a real HF fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from adaptforge.tasks import load_task

    texts = []
    for name in ("sst2", "agnews", "trec_question_type"):
        task = load_task(task_dir(name))
        texts += [e.text for e in task.split("train")[:300]] + [task.description, " ".join(task.labels)]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    fast.save_pretrained(folder)
    return fast


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """A randomly initialised LLaMA-style causal LM saved with save_pretrained, loadable by path."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny-llama")
    tok = _tiny_tokenizer(folder)
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
def tiny_llama(tiny_llama_dir):
    from adaptforge.backbone import Backbone

    return Backbone.load(str(tiny_llama_dir))
