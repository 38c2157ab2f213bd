"""Cached generators (``<library>/generators/<key>``) are part of the library: verify checks each one against
its recorded checksum, gc removes the ones no adapter needs and leaves the others."""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from helpers import random_delta

from adaptforge.generate.storage import TENSORS_FILE, read_generator_files, write_generator_files
from adaptforge.library import BaseRef, Library
from adaptforge.provenance import read as made_by

BASE = "sentence-transformers/all-MiniLM-L6-v2"


def add(lib: Library, name: str, **kwargs) -> None:
    lib.add(random_delta({"m": (4, 4)}, rank=2), name=name, base=BaseRef(BASE, "fp"), **kwargs)


def generator(lib: Library, key: str, learned_from: list[str], icm: bool = False) -> Path:
    folder = lib.generators_dir / key
    meta = {"method": "icm", "info": {"adapters": learned_from}} if icm else {"names": learned_from}
    write_generator_files(folder, meta, {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)})
    return folder


def test_verify_checks_every_cached_generator(tmp_path: Path) -> None:
    lib = Library(tmp_path / "lib")
    assert lib.verify() == []  # no generators folder at all
    add(lib, "a")
    sound = generator(lib, "1111111111111111", ["a"])
    broken = generator(lib, "2222222222222222", ["a"], icm=True)
    assert lib.verify() == []
    data = bytearray((broken / TENSORS_FILE).read_bytes())
    data[-1] ^= 0xFF
    (broken / TENSORS_FILE).write_bytes(bytes(data))
    problems = lib.verify()
    assert len(problems) == 1 and "2222222222222222" in problems[0] and TENSORS_FILE in problems[0]
    assert "corrupted or was modified" in problems[0]
    assert lib.verify("a") == []  # one adapter: its own checks only
    read_generator_files(sound)  # the generator code reads what the library calls sound


def test_gc_removes_the_generators_nothing_needs(tmp_path: Path) -> None:
    lib = Library(tmp_path / "lib")
    for name in ("a", "b", "c"):
        add(lib, name)
    reusable = generator(lib, "1111111111111111", ["a", "b"])
    stale = generator(lib, "2222222222222222", ["a", "c"], icm=True)
    named = generator(lib, "3333333333333333", ["c"])
    add(lib, "gen", provenance=made_by("generate", {}, {"generator_id": named.name}), parents=["c"])
    young = lib.generators_dir / ".tmp-4444444444444444-0a0b0c0d"
    old = lib.generators_dir / ".tmp-5555555555555555-0a0b0c0d"
    for folder in (young, old):
        folder.mkdir()
    hour_ago = time.time() - 7200
    os.utime(old, (hour_ago, hour_ago))

    assert lib.leftovers().generators == ()
    assert lib.gc() == [old] and young.is_dir()
    lib.remove("c", force=True)  # `stale` learned from c; `named` too, but a stored adapter names it
    found = lib.leftovers()
    assert found.generators == (stale,) and found.messages() == []  # not damage: verify still passes
    assert lib.verify() == []
    assert lib.gc() == [stale]
    assert reusable.is_dir() and named.is_dir() and not stale.exists()
    lib.remove("gen")
    assert lib.gc() == [named] and reusable.is_dir()
    generator(lib, "6666666666666666", ["a"])
    (lib.generators_dir / "6666666666666666" / "generator.json").write_text("{")  # damaged, no one names it
    assert lib.gc() == [lib.generators_dir / "6666666666666666"]
