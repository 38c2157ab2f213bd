"""``similar`` answers from the embedding index exactly as a scan over every record would, whatever changed
in the catalog since the index was written; reading the catalog never loads torch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import random_delta

from adaptforge.library import AdapterRecord, BaseRef, Library, TaskEntry, rebuild_catalog

BASE = "sentence-transformers/all-MiniLM-L6-v2"


def scan(lib: Library, query: np.ndarray, k: int, base: str | None = None) -> list[tuple[str, float]]:
    """The reference: every record built in Python, scored in float64, best first, then the older one."""
    q = np.asarray(query, dtype=np.float64)
    q = q / np.linalg.norm(q)
    records: list[AdapterRecord] = [
        r for r in lib.list(base_fingerprint=base) if r.embedding is not None and r.embedding.size == q.size
    ]
    if not records:
        return []
    matrix = np.stack([r.embedding for r in records]).astype(np.float64)
    scores = matrix @ q / np.linalg.norm(matrix, axis=1)
    order = sorted(range(len(records)), key=lambda i: (-round(scores[i], 12), records[i].created))
    return [(records[i].name, float(scores[i])) for i in order[:k]]


def answer(lib: Library, query: np.ndarray, k: int, base: str | None = None) -> list[tuple[str, float]]:
    return [(r.name, s) for r, s in lib.similar(query, k=k, base_fingerprint=base)]


def same(a: list[tuple[str, float]], b: list[tuple[str, float]]) -> bool:
    return [n for n, _ in a] == [n for n, _ in b] and np.allclose([s for _, s in a], [s for _, s in b], atol=1e-12)


def add(lib: Library, name: str, embedding: np.ndarray | None, base: str = "fp-a", overwrite: bool = False) -> None:
    lib.add(
        random_delta({"m": (4, 4)}, rank=2, seed=len(name)),
        name=name,
        base=BaseRef(BASE, base),
        task=TaskEntry(None, embedding=embedding),
        overwrite=overwrite,
    )


def test_similar_matches_the_scan_through_adds_overwrites_removals_and_a_rebuild(tmp_path: Path) -> None:
    lib = Library(tmp_path / "lib")
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((12, 8)).astype(np.float32)
    for i, v in enumerate(vectors):
        add(lib, f"a{i}", v, base="fp-a" if i % 3 else "fp-b")
    add(lib, "twin", vectors[4])  # the same embedding as a4: a tie, the older adapter first
    add(lib, "bare", None)
    add(lib, "wide", rng.standard_normal(16))  # another dimension: never a candidate
    query = vectors[4] + 0.01 * rng.standard_normal(8).astype(np.float32)

    def check() -> None:
        for base in (None, "fp-a", "fp-b", "fp-none"):
            for k in (1, 3, 50):
                assert same(answer(lib, query, k, base), scan(lib, query, k, base)), (base, k)

    check()
    assert answer(lib, query, 2)[:2] == [(n, s) for n, s in scan(lib, query, 2)]
    index = lib.root / "index" / "embeddings-8.npz"
    assert index.is_file()
    written = index.stat().st_mtime_ns
    check()  # answered from the index: not rewritten
    assert index.stat().st_mtime_ns == written

    add(lib, "a1", -query, overwrite=True)  # now the farthest, under an old name
    assert answer(lib, -query, 1) == [("a1", pytest.approx(1.0))]
    check()
    lib.remove("a4")
    assert "a4" not in [n for n, _ in answer(lib, query, 50)]
    check()

    index.write_bytes(b"not an index")  # unreadable: rebuilt from the catalog, same answer
    check()
    (lib.root / "catalog.sqlite").unlink()
    for suffix in ("-wal", "-shm"):
        (lib.root / f"catalog.sqlite{suffix}").unlink(missing_ok=True)
    rebuild_catalog(lib.root)  # a new catalog whose counter may meet the old index's: its id differs
    add(lib, "late", query)
    assert answer(lib, query, 1)[0][0] == "late"
    check()


def test_reading_the_catalog_loads_no_tensor_code(tmp_path: Path) -> None:
    lib = Library(tmp_path / "lib")
    add(lib, "a", np.ones(4, dtype=np.float32))
    code = (
        "import sys; from typer.testing import CliRunner; from adaptforge.cli import app; "
        f"r = CliRunner().invoke(app, ['library', 'list', '--library', {str(lib.root)!r}, '--json']); "
        'assert r.exit_code == 0, r.output; assert \'"name": "a"\' in r.output; '
        "from adaptforge.library import Library; "
        f"assert Library({str(lib.root)!r}).similar([1, 1, 1, 1], k=1)[0][0].name == 'a'; "
        "print(sorted(m for m in ('torch', 'transformers', 'safetensors.torch') if m in sys.modules))"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_long_listings_print_aligned_plain_columns() -> None:
    from adaptforge.cli.library import plain_table

    text = plain_table("lib (2 adapters)", ("name", "kind"), [("a-long-name", "train"), ("b", "merge")])
    assert text.splitlines() == ["lib (2 adapters)", "name         kind", "a-long-name  train", "b            merge"]
