"""Sweep wall time: the same grid of small train cells in one local process vs on Ray workers, end to end.

Each run is the real command line (``adaptforge sweep SPEC --library FRESH ...`` in a subprocess), so the Ray
run's time includes starting a local Ray session, starting the actors and each actor loading the backbone;
nothing is warmed up. Runs: ``local`` with torch's default threads (what a user gets), ``local`` with one
thread, and ``ray`` with ``--workers W --threads-per-worker 1``. The Ray run must give the same accuracy per
cell as the one-thread local run (same seeds, same thread count per cell).

    flock /tmp/adaptforge-bench.lock env OMP_NUM_THREADS=1 python benchmarks/sweep.py \\
        [--tasks sst2,agnews,...] [--seeds 2] [--max-train 128] [--limit 64] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "tasks"
TASKS = "sst2,agnews,trec_question_type,subjectivity,tweet_emotion,tweet_hate,mpqa_polarity,customer_review"
SRC = Path(__file__).resolve().parents[1] / "src"


def uptime() -> str:
    """The 1, 5 and 15 minute load averages (what `uptime` prints)."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def run(spec: Path, library: Path, flags: list[str], threads: int | None) -> tuple[float, dict]:
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    if threads is None:
        env.pop("OMP_NUM_THREADS", None)  # torch's default: one thread per core
    else:
        env["OMP_NUM_THREADS"] = str(threads)
    cmd = [sys.executable, "-m", "adaptforge.cli", "sweep", str(spec), "--library", str(library), "--json", *flags]
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return seconds, json.loads(done.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", default=TASKS)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--max-train", type=int, default=128)
    ap.add_argument("--limit", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--runs", default="local-default,ray,local-1", help="which runs, in order")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "sweep.json")
    args = ap.parse_args()

    tasks = [str(SHARED / t) for t in args.tasks.split(",")]
    work = Path(tempfile.mkdtemp(prefix="sweep-bench-"))
    spec = work / "grid.yaml"
    spec.write_text(
        "name: bench\ntrain:\n"
        f"  tasks: [{', '.join(tasks)}]\n  rank: [8]\n  seeds: {list(range(args.seeds))}\n  epochs: [1]\n"
        f"  options: {{max_train: {args.max_train}, batch_size: 16}}\n  eval: {{split: dev, limit: {args.limit}}}\n"
    )
    flags = {
        "local-default": ([], None),
        "local-1": (["--threads-per-worker", "1"], 1),
        "ray": (["--backend", "ray", "--workers", str(args.workers), "--threads-per-worker", "1"], 1),
    }
    results: dict = {
        "cells": len(tasks) * args.seeds,
        "setting": vars(args) | {"out": str(args.out)},
        "cpus": os.cpu_count(),
        "load_before": uptime(),
        "runs": {},
    }
    for name in args.runs.split(","):
        extra, threads = flags[name]
        seconds, summary = run(spec, work / f"lib-{name}", extra, threads)
        acc = {c["cell"]: c["accuracy"] for c in summary["cells"]}
        results["runs"][name] = {"seconds": round(seconds, 1), "accuracy": acc, "failed": summary["failed"]}
        print(f"{name}: {seconds:.1f}s for {len(acc)} cells (load {uptime()})", flush=True)
        summarise(results, args.out)  # after every run, so a cut-short benchmark keeps what it measured
    print(json.dumps({k: v for k, v in results.items() if k != "runs"}, indent=1))


def summarise(results: dict, out: Path) -> None:
    results["load_after"] = uptime()
    runs = results["runs"]
    if "ray" in runs:
        for base in ("local-default", "local-1"):
            if base in runs:
                results[f"speedup_vs_{base}"] = round(runs[base]["seconds"] / runs["ray"]["seconds"], 2)
        if "local-1" in runs:
            a, b = runs["local-1"]["accuracy"], runs["ray"]["accuracy"]
            results["same_accuracy_as_local_1"] = a == b
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
