"""Seeded fuzzing of everything adaptforge reads from users: task files and PEFT adapter folders.

A generator breaks valid inputs in the ways real files break (truncation, stray bytes, wrong types in
fields, missing or extra keys, non-UTF-8, wrong shapes and dtypes, NaN). Every case must end in success
or one :class:`AdaptforgeError` (which the CLI prints as a one-line error), never another exception, and
a refused import must leave the library exactly as it was.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import torch
from helpers import MINILM_ATTENTION, random_delta, snapshot, task_dir
from safetensors.torch import load_file, save_file

from adaptforge.adapters import CONFIG_FILE, WEIGHTS_FILE, write_adapter
from adaptforge.core import AdaptforgeError
from adaptforge.library import Library
from adaptforge.tasks import load_task, write_task

TASK_CASES = 300
PEFT_CASES = 200

# Values of every JSON type, the awkward ones included.
ODD_VALUES: list[object] = [
    None,
    True,
    False,
    0,
    -1,
    1,
    2**70,
    0.5,
    float("nan"),
    float("inf"),
    -0.0,
    "",
    "abc",
    "(unclosed",
    "\u0000",
    "é" * 3,
    [],
    [1, 2],
    ["a"],
    [None],
    {},
    {"a": 1},
    {"(": 2},
    {"query": "x"},
    [[1]],
]


def _mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    kind = rng.randrange(5)
    if kind == 0 or not data:  # truncated anywhere
        return data[: rng.randrange(len(data) + 1)]
    pos = rng.randrange(len(data))
    if kind == 1:  # stray bytes, often not UTF-8
        return data[:pos] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 4))) + data[pos:]
    if kind == 2:  # a byte flipped
        return data[:pos] + bytes([data[pos] ^ (1 << rng.randrange(8))]) + data[pos + 1 :]
    if kind == 3:  # a line duplicated or dropped
        lines = data.split(b"\n")
        i = rng.randrange(len(lines))
        lines.insert(i, lines[i]) if rng.random() < 0.5 else lines.pop(i)
        return b"\n".join(lines)
    return b""


def _mutate_json(value: object, rng: random.Random) -> object:
    """One structural change somewhere in a JSON value: a key dropped, added or given an odd value."""
    if isinstance(value, dict) and value:
        key = rng.choice(sorted(value))
        out = dict(value)
        roll = rng.random()
        if roll < 0.3:
            del out[key]
        elif roll < 0.5:
            out[rng.choice(["extra", "labels", "name", "r", "rank_pattern"])] = rng.choice(ODD_VALUES)
        elif roll < 0.8 or not isinstance(value[key], (dict, list)):
            out[key] = rng.choice(ODD_VALUES)
        else:
            out[key] = _mutate_json(value[key], rng)
        return out
    if isinstance(value, list) and value:
        out = list(value)
        i = rng.randrange(len(out))
        out[i] = rng.choice(ODD_VALUES) if rng.random() < 0.7 else _mutate_json(out[i], rng)
        return out
    return rng.choice(ODD_VALUES)


def _broken_task(src: Path, dest: Path, rng: random.Random) -> Path:
    shutil.copytree(src, dest)
    files = sorted(dest.iterdir())
    target = rng.choice(files)
    roll = rng.random()
    if roll < 0.15:
        target.unlink()
    elif roll < 0.55 and target.name == "task.json":
        meta = json.loads(target.read_text())
        target.write_text(json.dumps(_mutate_json(meta, rng)))
    elif roll < 0.75 and target.suffix == ".jsonl":
        lines = target.read_text().splitlines()
        i = rng.randrange(len(lines))
        lines[i] = json.dumps(_mutate_json(json.loads(lines[i]), rng))
        target.write_text("\n".join(lines) + "\n")
    else:
        target.write_bytes(_mutate_bytes(target.read_bytes(), rng))
    return dest


def _broken_csv(dest: Path, rng: random.Random) -> Path:
    rows = ["text,label,split", "good film,positive,train", "bad film,negative,train", '"a, quoted",positive,test']
    rows += ["fine,negative,dev", "nice,positive,test", "meh,negative,test"]
    data = ("\n".join(rows) + "\n").encode()
    for _ in range(rng.randint(1, 3)):
        data = _mutate_bytes(data, rng)
    dest.write_bytes(data)
    return dest


def test_task_loaders_end_in_a_task_or_a_clean_error(tmp_path: Path) -> None:
    rng = random.Random(20261201)
    src = tmp_path / "src"
    task = load_task(task_dir("sst2"))
    write_task(
        task.with_splits(train=task.sample("train", 12), dev=task.sample("dev", 6), test=task.sample("test", 6)), src
    )
    outcomes = {"loaded": 0, "refused": 0}
    for case in range(TASK_CASES):
        path = (
            _broken_csv(tmp_path / f"c{case}.csv", rng)
            if case % 4 == 3
            else _broken_task(src, tmp_path / f"t{case}", rng)
        )
        try:
            loaded = load_task(path)
        except AdaptforgeError as err:
            assert str(err) and "\n" not in str(err).strip(), repr(err)
            outcomes["refused"] += 1
        else:
            assert loaded.labels and all(e.label in loaded.labels for s in loaded.splits.values() for e in s)
            outcomes["loaded"] += 1
    assert sum(outcomes.values()) == TASK_CASES
    assert outcomes["refused"] > TASK_CASES // 3  # the generator really breaks things
    print(f"task fuzz: {outcomes}")


def _broken_peft(src: Path, dest: Path, rng: random.Random) -> Path:
    shutil.copytree(src, dest)
    config_path, weights_path = dest / CONFIG_FILE, dest / WEIGHTS_FILE
    roll = rng.random()
    if roll < 0.4:
        config_path.write_text(json.dumps(_mutate_json(json.loads(config_path.read_text()), rng)))
    elif roll < 0.5:
        config_path.write_bytes(_mutate_bytes(config_path.read_bytes(), rng))
    elif roll < 0.6:
        weights_path.write_bytes(_mutate_bytes(weights_path.read_bytes(), rng))
    elif roll < 0.65:
        rng.choice([config_path, weights_path]).unlink()
    else:
        tensors = load_file(str(weights_path))
        key = rng.choice(sorted(tensors))
        t = tensors[key]
        change = rng.randrange(6)
        if change == 0:
            tensors[key] = t[: max(1, t.shape[0] - 1)].clone()  # wrong rank or wrong width
        elif change == 1:
            tensors[key] = (t * 1000).to(rng.choice([torch.int32, torch.int8, torch.bool]))
        elif change == 2:
            t = t.clone()
            t.view(-1)[rng.randrange(t.numel())] = rng.choice([float("nan"), float("inf"), -float("inf")])
            tensors[key] = t
        elif change == 3:
            del tensors[key]
        elif change == 4:
            tensors[key.replace("base_model.model.", "base_model.model.nonexistent.")] = tensors.pop(key)
        else:
            tensors[key] = t.to(rng.choice([torch.float16, torch.bfloat16, torch.float64]))  # still valid
        save_file(tensors, str(weights_path))
    return dest


def test_peft_import_ends_in_an_adapter_or_a_clean_error_and_loses_nothing(minilm, tmp_path: Path) -> None:
    from adaptforge.pipelines.importing import import_peft_folder

    rng = random.Random(7)
    src = write_adapter(random_delta(MINILM_ATTENTION, rank=4, std=0.01), tmp_path / "src", "all-MiniLM-L6-v2")
    lib = Library(tmp_path / "lib")
    import_peft_folder(src, minilm, lib, "original")
    outcomes = {"imported": 0, "refused": 0}
    for case in range(PEFT_CASES):
        folder = _broken_peft(src, tmp_path / f"p{case}", rng)
        before = snapshot(lib.root)
        try:
            record = import_peft_folder(folder, minilm, lib, f"case-{case}")
        except AdaptforgeError as err:
            assert str(err) and "\n" not in str(err).strip(), repr(err)
            assert snapshot(lib.root) == before, f"case {case} changed the library: {err}"
            outcomes["refused"] += 1
        else:
            delta, _ = lib.load(record.name, expected_fingerprint=minilm.fingerprint)
            assert delta.non_finite() is None
            outcomes["imported"] += 1
        shutil.rmtree(folder)
    assert sum(outcomes.values()) == PEFT_CASES
    assert outcomes["refused"] > PEFT_CASES // 3 and outcomes["imported"] > 0
    assert Library(lib.root).verify() == []
    print(f"peft fuzz: {outcomes}")
