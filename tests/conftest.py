"""Shared fixtures and builders: the real embedded backbone, a tiny random LLaMA saved as an HF folder, small
tasks, LoRA deltas of any shape, and a snapshot of everything a command could change in a library."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from adaptforge.library import TaskEntry
from adaptforge.provenance import read as made_by

if TYPE_CHECKING:
    from adaptforge.core import LoraDelta

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):  # execnet gives its workers COLUMNS=80; the CLI tests read a pipe's width
    for name in ("COLUMNS", "LINES"):
        os.environ.pop(name, None)

SHARED_TASKS = Path(__file__).resolve().parents[2] / "shared" / "data" / "tasks"
SHIPPED_TASKS = Path(__file__).resolve().parents[1] / "src" / "adaptforge" / "data" / "tasks"
MINILM_ATTENTION = [f"encoder.layer.{i}.attention.self.{m}" for i in range(6) for m in ("query", "value")]


def random_delta(
    shapes: Mapping[str, tuple[int, int]] | Sequence[str],
    rank: int | Mapping[str, int] = 4,
    scale: float | Mapping[str, float] = 2.0,
    seed: int = 0,
    std: float = 1.0,
):
    """The one test delta builder: module name -> (out, in) (a list of names means MiniLM's 384 x 384
    projections), per-module or shared rank and scale, Gaussian factors times ``std`` from one seeded generator."""
    import torch

    from adaptforge.core import LoraDelta, LoraModule

    if not isinstance(shapes, Mapping):
        shapes = {name: (384, 384) for name in shapes}
    gen = torch.Generator().manual_seed(seed)
    modules = {}
    for name, (out_dim, in_dim) in shapes.items():
        r = rank[name] if isinstance(rank, Mapping) else rank
        s = scale[name] if isinstance(scale, Mapping) else scale
        A = torch.randn(r, in_dim, generator=gen) * std
        B = torch.randn(out_dim, r, generator=gen) * std
        modules[name] = LoraModule(A=A, B=B, scale=s)
    return LoraDelta(modules)


def snapshot(root: Path) -> tuple:
    """Everything a command could have changed in a library: the catalog's rows and every file under it."""
    rows: tuple = ()
    catalog = root / "catalog.sqlite"
    if catalog.is_file() and catalog.stat().st_size:
        conn = sqlite3.connect(catalog)
        try:
            rows = tuple(
                tuple(conn.execute(f"SELECT * FROM {t} ORDER BY rowid").fetchall())
                for t in ("adapters", "lineage", "metrics")
            )
        finally:
            conn.close()
    files = tuple(
        sorted(
            str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and not p.name.startswith("catalog.sqlite")
        )
    )
    return rows, files


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


WORDS = ["good", "bad", "film", "movie", "great", "story", "the", "a", "actors", "plot", "fun", "long"]


def reverse_task(n_train: int = 24, n_test: int = 6):
    """Say the two words in reverse order: a generation task the tiny model can learn a little of."""
    import torch

    from adaptforge.tasks import Example, Task

    gen = torch.Generator().manual_seed(0)

    def example() -> Example:
        i, j = torch.randint(len(WORDS), (2,), generator=gen).tolist()
        return Example(f"{WORDS[i]} {WORDS[j]}", f"{WORDS[j]} {WORDS[i]}")

    splits = {"train": [example() for _ in range(n_train)], "test": [example() for _ in range(n_test)]}
    return Task("reverse2", "Reverse the two words.", (), splits, task_type="generation")


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


def listening_url(proc) -> str:
    """The ``http://127.0.0.1:PORT`` a started ``adaptforge serve`` process says it listens on (stderr)."""
    import re

    for line in proc.stderr:
        found = re.search(r"(http://127\.0\.0\.1:\d+)", line)
        if found:
            return found.group(1)
    raise AssertionError("the server never said where it listens")


def run_cli(*args: object, ok: bool = True):
    """Invoke the real ``adaptforge`` CLI in-process (arguments stringified); ``ok`` asserts exit code 0."""
    from typer.testing import CliRunner

    from adaptforge.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def minilm_delta(seed: int, rank: int = 8, modules: Sequence[str] = MINILM_ATTENTION) -> LoraDelta:
    """A LoRA delta that fits the embedded MiniLM (384 x 384 attention projections), small but not zero."""
    return random_delta(modules, rank=rank, scale=2.0, seed=seed, std=0.01)


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


def refused(*args: object, contains: str | tuple[str, ...] = ()) -> str:
    """Run the CLI; it must refuse with exit 2 and a one-line error (no traceback) holding ``contains`` (matched
    with runs of whitespace as one space: the console wraps long lines)."""
    result = run_cli(*args, ok=False)
    assert result.exit_code == 2, result.output + repr(result.exception)
    assert "Traceback" not in result.output
    flat = " ".join(result.output.split())
    for text in (contains,) if isinstance(contains, str) else contains:
        assert " ".join(text.split()) in flat, result.output
    return result.output


@pytest.fixture(scope="session")
def minilm():
    from adaptforge.backbone import Backbone

    return Backbone.load()


TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant\n{% endif %}"
)


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
    fast.chat_template = TINY_CHAT_TEMPLATE  # generation tasks build prompts with the model's chat template
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


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory) -> Path:
    """A randomly initialised GPT-2 (``Conv1D`` layers, weights stored in x out) saved as an HF folder."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tmp_path_factory.mktemp("tiny-gpt2")
    tok = _tiny_tokenizer(folder)
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


LIBRARY_TASKS = ("sst2", "subjectivity", "agnews")


@pytest.fixture(scope="session")
def trained_library(tmp_path_factory, minilm):
    """The one trained library the pipeline tests share: a small LoRA per task of :data:`LIBRARY_TASKS`
    (``<task>-a``) plus a second sst2 adapter of another seed (``sst2-b``), and the tasks as folders.
    Read-only: tests that write take a copy (:func:`library_copy`)."""
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


def library_copy(trained, dest: Path):
    """A private, writable copy of the shared trained library."""
    import shutil

    from adaptforge.library import Library

    shutil.copytree(trained[0].root, dest)
    return Library(dest)


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
