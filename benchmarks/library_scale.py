"""The library at 100, 1,000 and 10,000 adapters: lookups, similarity, listing and start-up, through the API.

python benchmarks/library_scale.py [--sizes 100,1000,10000] [--rank 8] [--repeats 20] [--root DIR] [--json FILE]

One library grows through ``Library.add`` (rank-``--rank`` adapters on two 384 x 384 modules, each with a
384-float description embedding, as training stores them) to each size in turn; at each size it times, as the
median of ``--repeats`` calls:
- ``similar(query, k=20)`` against the peer it replaced, the scan that builds every record in Python and
  scores them (the same ordering rule), asserting both return the same adapters in the same order; the first
  call after the library grew is timed on its own (``similar_cold_ms``: it rebuilds the embedding index);
- ``get(name)`` of a random adapter;
- ``library list`` and ``library list --json`` through the real console script in a fresh process (one run
  each: they include the interpreter's start-up), and ``adaptforge --help``.
Bars (issue 34): at 10,000 adapters similar < 50 ms, get < 2 ms, list (table and JSON) < 2 s, --help < 1 s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from adaptforge.core import LoraDelta, LoraModule  # noqa: E402
from adaptforge.library import AdapterRecord, BaseRef, Library, TaskEntry  # noqa: E402

SCRIPT = Path(sys.executable).with_name("adaptforge")
BARS = {"similar_ms": 50.0, "get_ms": 2.0, "list_s": 2.0, "list_json_s": 2.0, "help_s": 1.0}


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def scan_similar(lib: Library, query: np.ndarray, k: int) -> list[tuple[AdapterRecord, float]]:
    """The peer: every record built in Python, then scored (what ``similar`` did before)."""
    q = query.astype(np.float64) / np.linalg.norm(query)
    records = [r for r in lib.list() if r.embedding is not None and r.embedding.size == q.size]
    matrix = np.stack([r.embedding for r in records]).astype(np.float64)
    scores = matrix @ q / np.linalg.norm(matrix, axis=1)
    order = sorted(range(len(records)), key=lambda i: (-round(scores[i], 12), records[i].created))
    return [(records[i], float(scores[i])) for i in order[:k]]


def grow(lib: Library, start: int, stop: int, rank: int, rng: np.random.Generator) -> None:
    gen = torch.Generator().manual_seed(start)
    for i in range(start, stop):
        delta = LoraDelta(
            {
                f"encoder.layer.0.attention.self.{m}": LoraModule(
                    torch.randn(rank, 384, generator=gen), torch.randn(384, rank, generator=gen) * 0.01, 2.0
                )
                for m in ("query", "value")
            }
        )
        lib.add(
            delta,
            name=f"a{i:05d}",
            base=BaseRef("sentence-transformers/all-MiniLM-L6-v2", "bench"),
            task=TaskEntry(
                f"task{i % 97}",
                description=f"benchmark task {i}",
                embedding=rng.standard_normal(384).astype(np.float32),
            ),
        )


def timed_run(*args: str) -> float:
    start = time.perf_counter()
    subprocess.run([str(SCRIPT), *args], check=True, capture_output=True, env={**os.environ, "COLUMNS": "200"})
    return time.perf_counter() - start


def measure(lib: Library, size: int, repeats: int, rng: np.random.Generator) -> dict[str, float]:
    query = rng.standard_normal(384).astype(np.float32)
    start = time.perf_counter()
    ours = lib.similar(query, k=20)
    cold_ms = (time.perf_counter() - start) * 1000
    theirs = scan_similar(lib, query, 20)
    assert [r.id for r, _ in ours] == [r.id for r, _ in theirs], "similar differs from the scan"
    assert np.allclose([s for _, s in ours], [s for _, s in theirs], rtol=0, atol=1e-6)
    names = [f"a{i:05d}" for i in rng.integers(0, size, repeats)]
    it = iter(names * 2)
    return {
        "adapters": size,
        "similar_ms": median_ms(lambda: lib.similar(query, k=20), repeats),
        "similar_cold_ms": cold_ms,
        "scan_similar_ms": median_ms(lambda: scan_similar(lib, query, 20), max(3, repeats // 4)),
        "get_ms": median_ms(lambda: lib.get(next(it)), repeats),
        "list_s": timed_run("library", "list", "--library", str(lib.root)),
        "list_json_s": timed_run("library", "list", "--library", str(lib.root), "--json"),
        "help_s": timed_run("--help"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000,10000")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--root", type=Path, help="where the library grows (default: a temporary folder)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    sizes = sorted(int(s) for s in args.sizes.split(","))
    root = args.root or Path(tempfile.mkdtemp(prefix="library-scale-"))
    lib = Library(root / "lib")
    rng = np.random.default_rng(0)
    rows, built = [], 0
    try:
        for size in sizes:
            start = time.perf_counter()
            grow(lib, built, size, args.rank, rng)
            add_s = time.perf_counter() - start
            row = {**measure(lib, size, args.repeats, rng), "add_ms_each": 1000 * add_s / max(1, size - built)}
            built = size
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        if args.root is None:
            shutil.rmtree(root, ignore_errors=True)
    print("| adapters | similar(k=20) ms | after a write ms | scan ms | get ms | list s | list --json s | --help s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['adapters']} | {r['similar_ms']:.1f} | {r['similar_cold_ms']:.1f} | {r['scan_similar_ms']:.1f} | "
            f"{r['get_ms']:.2f} | "
            f"{r['list_s']:.2f} | {r['list_json_s']:.2f} | {r['help_s']:.2f} |"
        )
    last = rows[-1]
    for key, bar in BARS.items():
        print(f"{key} at {last['adapters']}: {last[key]:.2f} (bar < {bar}): {'met' if last[key] < bar else 'NOT met'}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "bars": BARS}, indent=2) + "\n")


if __name__ == "__main__":
    main()
