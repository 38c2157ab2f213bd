"""Builders and checks shared by the test modules (fixtures and hooks live in ``conftest.py``): LoRA deltas of any
shape, small real tasks, the in-process CLI, a snapshot of everything a command could change in a library, a tiny
tokenizer for the random causal LMs, catalog records built by hand, and the forward hooks on the shared models."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from adaptforge.core import LoraDelta
    from adaptforge.library import AdapterRecord, MetricRow

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


def minilm_delta(seed: int, rank: int = 8, modules: Sequence[str] = MINILM_ATTENTION) -> LoraDelta:
    """A LoRA delta that fits the embedded MiniLM (384 x 384 attention projections), small but not zero."""
    return random_delta(modules, rank=rank, scale=2.0, seed=seed, std=0.01)


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


LIBRARY_TASKS = ("sst2", "subjectivity", "agnews")


def library_copy(trained, dest: Path):
    """A private, writable copy of the shared trained library."""
    import shutil

    from adaptforge.library import Library

    shutil.copytree(trained[0].root, dest)
    return Library(dest)


def run_cli(*args: object, ok: bool = True):
    """Invoke the real ``adaptforge`` CLI in-process (arguments stringified); ``ok`` asserts exit code 0."""
    from typer.testing import CliRunner

    from adaptforge.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, result.output + repr(result.exception)
    return result


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


def listening_url(proc) -> str:
    """The ``http://127.0.0.1:PORT`` a started ``adaptforge serve`` process says it listens on (stderr)."""
    import re

    for line in proc.stderr:
        found = re.search(r"(http://127\.0\.0\.1:\d+)", line)
        if found:
            return found.group(1)
    raise AssertionError("the server never said where it listens")


TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant\n{% endif %}"
)


def tiny_tokenizer(folder: Path):
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


# Forward hooks left on the session's shared models (the guards are conftest's autouse fixtures).

WATCHED_MODELS = pytest.StashKey[dict]()  # name -> a session-scoped backbone the hook guards watch
SERVE_HOOKS = "adaptforge.serve"  # a server fixture's worker thread may hold them between two of its module's tests


def watched(config: pytest.Config, name: str, backbone):
    """Register a session backbone with the hook guards and return it."""
    config.stash.setdefault(WATCHED_MODELS, {})[name] = backbone
    return backbone


def forward_hooks(config: pytest.Config, ignore: tuple[str, ...] = ()) -> dict[str, set[tuple[str, str, int]]]:
    """(module, kind, handle id) of every forward (pre-)hook on each watched model but those whose function lives
    in a module of ``ignore``. transformers' output recorders count: asking a model for ``output_hidden_states``
    installs them on every layer for good."""
    found: dict[str, set[tuple[str, str, int]]] = {}
    for name, backbone in config.stash.get(WATCHED_MODELS, {}).items():
        found[name] = {
            (module_name, kind, key)
            for module_name, module in backbone.model.named_modules()
            for kind in ("_forward_hooks", "_forward_pre_hooks")
            for key, hook in getattr(module, kind).items()
            if not (ignore and getattr(hook, "__module__", "").startswith(ignore))
        }
    return found


def assert_no_hook_left(config: pytest.Config, before: dict, who: str, ignore: tuple[str, ...] = ()) -> None:
    for name, hooks in forward_hooks(config, ignore).items():
        left = hooks - before.get(name, set())
        assert not left, f"{who} left forward hooks on the shared {name}: {sorted(left)}"


# Catalog records and metric rows built by hand, for report tests that need no model.

BASE = "f" * 32


def record(
    name: str, kind: str = "train", task: str | None = "t1", parents: tuple[str, ...] = (), **extra
) -> AdapterRecord:
    from adaptforge.library import AdapterRecord

    ident = extra.pop("ident", f"{abs(hash(name)) % 16**16:016x}")
    return AdapterRecord(
        id=ident,
        name=name,
        task=task,
        description=None,
        base_model=extra.pop("base_model", "mini"),
        base_fingerprint=extra.pop("base", BASE),
        rank=4,
        targets=("q", "v"),
        recipe=extra.pop("recipe", {}),
        method=extra.pop("method", kind),
        params={},
        parents=parents,
        checksum="a" * 64,
        created=extra.pop("created", 1.0),
        path=Path("/nowhere") / ident,
        embedding=None,
        config_checksum="b" * 64,
        kind=kind,
    )


def metric(
    adapter: AdapterRecord | None, task: str, value: float, n: int = 10, created: float = 1.0, **extra
) -> MetricRow:
    from adaptforge.library import MetricRow

    return MetricRow(
        None if adapter is None else adapter.id,
        extra.pop("base", BASE),
        task,
        extra.pop("split", "test"),
        extra.pop("metric", "accuracy"),
        value,
        n,
        created,
    )
