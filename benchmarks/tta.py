"""Test-time adaptation under shift: does adapting on unlabelled test inputs help, and what does it cost? (issue 16)

For every pair (an adapter trained on a source task, scored on a target task with the same label set) and every
run (a test-time method at a granularity), over seeds: accuracy before (the adapter alone) and after, on the
same label-stratified sample of the target's test split (a different sample per seed, in the split's order,
which is the stream's order), the cost per input of the method and of a plain forward pass over the same units
(one input, or batches of --batch-size), measured side by side, and the resets that fired.

Pairs:
- shift: movie_review > customer_review, mpqa_polarity, sni_sentiment140; yelp > amazon;
  tweet_stance_abortion > tweet_stance_atheism, tweet_stance_climate (the issue's pairs);
- corruption: agnews, trec_question_type, tweet_emotion with character noise (rate 0.05 and 0.15 per
  character: delete, swap, replace or insert) and word drops (rate 0.2 and 0.4 per word), seeded per seed.

Bars (issue 16): the best run gains >= 2 points on the mean over shift pairs; runs with reset enabled (eata,
sar, tent-stream-reset, em-prior's guard) lose no more than 1 point on any pair (mean over seeds); tent per
batch costs < 3x a plain forward pass. em-prior only re-weights by a class prior: the test samples keep each
split's label proportions, so where source and target priors differ it is measured on real label shift; the
summary names the best run that adapts the model apart from it.

Adapters are trained once into --work/library (resumable); results are appended to --json after every cell,
so a stopped run continues where it stopped.

python benchmarks/tta.py --threads 1 --json benchmarks/results/tta.json --markdown benchmarks/results/tta.md
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from adaptforge.backbone import Backbone  # noqa: E402
from adaptforge.library import Library  # noqa: E402
from adaptforge.pipelines.train import train_into_library  # noqa: E402
from adaptforge.pipelines.tta import tta_on_task  # noqa: E402
from adaptforge.tasks import Example, Task, load_task  # noqa: E402
from adaptforge.train.config import TrainConfig  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "tasks"
SHIFT = (
    "movie_review>customer_review,movie_review>mpqa_polarity,movie_review>sni_sentiment140,yelp>amazon,"
    "tweet_stance_abortion>tweet_stance_atheism,tweet_stance_abortion>tweet_stance_climate"
)
CORRUPT = ",".join(
    f"{task}~{kind}:{rate}"
    for task in ("agnews", "trec_question_type", "tweet_emotion")
    for kind, rate in (("chars", 0.05), ("chars", 0.15), ("words", 0.2), ("words", 0.4))
)
# label -> (method, granularity, params); the seed is added per run
# the tent variants other than "tent" keep every norm layer (last_blocks=0), as when their cells were measured
RUNS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "tent": ("tent", "batch", {}),
    "tent-all": ("tent", "batch", {"last_blocks": 0}),  # every norm layer (TENT's choice; the default before)
    "tent-online": ("tent", "batch", {"online": True, "steps": 1, "last_blocks": 0}),
    "tent-stream": ("tent", "stream", {"last_blocks": 0}),
    # TENT's own protocol: online, continual
    "tent-stream-online": ("tent", "stream", {"online": True, "last_blocks": 0}),
    "tent-stream-reset": ("tent", "stream", {"reset_window": 64, "last_blocks": 0}),
    "eata": ("eata", "stream", {}),
    "sar": ("sar", "stream", {}),
    "pseudo": ("pseudo", "batch", {}),
    "input-lora": ("input-lora", "input", {}),
    "ttt-nn": ("ttt-nn", "input", {"pool_per_task": 256}),
    "ttt-nn-24": ("ttt-nn", "input", {"pool_per_task": 256}),  # the earlier run's cells, on 24 inputs per pair
    "atlas-unsup": ("atlas-unsup", "batch", {}),
    "em-prior": ("em-prior", "batch", {}),
    "em-prior-stream": ("em-prior", "stream", {}),
}
RESET_RUNS = ("tent-stream-reset", "eata", "sar", "em-prior", "em-prior-stream")
LABEL_SHIFT_RUNS = ("em-prior", "em-prior-stream")  # corrects the class prior only: reported apart (see markdown)
LETTERS = "abcdefghijklmnopqrstuvwxyz"


def char_noise(text: str, rate: float, rng: random.Random) -> str:
    out: list[str] = []
    chars = list(text)
    i = 0
    while i < len(chars):
        c = chars[i]
        if c.isalpha() and rng.random() < rate:
            op = rng.randrange(4)
            if op == 0:  # delete
                i += 1
                continue
            if op == 1 and i + 1 < len(chars):  # swap with the next character
                out += [chars[i + 1], c]
                i += 2
                continue
            if op == 2:  # replace
                out.append(rng.choice(LETTERS))
                i += 1
                continue
            out += [c, rng.choice(LETTERS)]  # insert after
            i += 1
            continue
        out.append(c)
        i += 1
    return "".join(out) or text


def word_drop(text: str, rate: float, rng: random.Random) -> str:
    words = text.split()
    kept = [w for w in words if rng.random() >= rate]
    return " ".join(kept or words[:1])


def corrupted(task: Task, kind: str, rate: float, seed: int, split: str = "test") -> Task:
    """``task`` with its ``split`` texts corrupted (labels unchanged), reproducibly per (seed, example)."""
    fn = char_noise if kind == "chars" else word_drop
    rows = [Example(fn(e.text, rate, random.Random(f"{seed}:{i}")), e.label) for i, e in enumerate(task.split(split))]
    return task.with_splits(**{split: rows})


def parse_pair(spec: str) -> tuple[str, str, str]:
    """``source>target`` (shift) or ``task~kind:rate`` (corruption) -> (kind, source, target name)."""
    if ">" in spec:
        source, target = spec.split(">", 1)
        return "shift", source, target
    source, corruption = spec.split("~", 1)
    return "corrupt", source, f"{source}~{corruption}"


def target_task(spec: str, seed: int, split: str = "test") -> Task:
    """The pair's target: the shift target task, or the source task with its ``split`` corrupted."""
    kind, source, target = parse_pair(spec)
    if kind == "shift":
        return load_task(SHARED / target)
    how, rate = target.split("~", 1)[1].split(":")
    return corrupted(load_task(SHARED / source), how, float(rate), seed, split)


def load_cells(path: Path | None) -> list[dict[str, Any]]:
    if path is None or not path.is_file():
        return []
    return json.loads(path.read_text())["cells"]


def save_cells(path: Path | None, config: dict[str, Any], cells: list[dict[str, Any]]) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"config": config, "cells": cells}, indent=1))
    tmp.replace(path)


def mean_sd(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:+.1f}"
    return f"{statistics.mean(values):+.1f} ± {statistics.stdev(values):.1f}"


def resets(rows: list[dict[str, Any]]) -> str:
    """Resets summed over cells, with how many of them the anchor guard fired (drift), when any."""
    total, drifts = sum(r["resets"] for r in rows), sum(r.get("drifts", 0) for r in rows)
    return f"{total} ({drifts} drift)" if drifts else str(total)


def markdown(cells: list[dict[str, Any]], runs: list[str], pairs: list[str]) -> str:
    """Per pair and run: accuracy before/after and change (points, mean ± sd over seeds), cost and resets; then a
    summary per run (means over shift and corruption pairs, worst pair) and the three bars."""
    by = {}
    for c in cells:
        by.setdefault((c["pair"], c["run"]), []).append(c)
    lines = [
        "| pair | run | before | after | Δ acc (pts) | tta ms/input | plain ms/input | cost ratio | resets | seeds |"
    ]
    lines.append("|---|---|---|---|---|---|---|---|---|---|")
    pair_delta: dict[tuple[str, str], float] = {}
    for pair in pairs:
        for run in runs:
            rows = by.get((pair, run), [])
            if not rows:
                continue
            deltas = [100 * (r["after"] - r["before"]) for r in rows]
            pair_delta[(pair, run)] = statistics.mean(deltas)
            lines.append(
                f"| {pair} | {run} | {100 * statistics.mean(r['before'] for r in rows):.1f} "
                f"| {100 * statistics.mean(r['after'] for r in rows):.1f} | {mean_sd(deltas)} "
                f"| {statistics.mean(r['tta_ms'] for r in rows):.1f} "
                f"| {statistics.mean(r['plain_ms'] for r in rows):.1f} "
                f"| {statistics.mean(r['ratio'] for r in rows):.2f} | {resets(rows)} | {len(rows)} |"
            )
    summary = ["", "| run | mean Δ shift (pts) | mean Δ corruption (pts) | worst pair Δ | mean cost ratio | resets |"]
    summary.append("|---|---|---|---|---|---|")
    best: tuple[float, str] | None = None
    for run in runs:
        shift = [d for (p, r), d in pair_delta.items() if r == run and ">" in p]
        corrupt = [d for (p, r), d in pair_delta.items() if r == run and "~" in p]
        every = [(d, p) for (p, r), d in pair_delta.items() if r == run]
        if not every:
            continue
        worst = min(every)
        rows = [c for c in cells if c["run"] == run]
        if shift and (best is None or statistics.mean(shift) > best[0]):
            best = (statistics.mean(shift), run)
        summary.append(
            f"| {run} | {mean_sd([statistics.mean(shift)]) if shift else '-'} "
            f"| {mean_sd([statistics.mean(corrupt)]) if corrupt else '-'} | {worst[0]:+.1f} ({worst[1]}) "
            f"| {statistics.mean(c['ratio'] for c in rows):.2f} | {resets(rows)} |"
        )
    bars = ["", "Bars:"]
    if best is not None:
        bars.append(
            f"- best run on shift pairs: {best[1]} {best[0]:+.1f} points (bar >= +2): "
            f"{'met' if best[0] >= 2 else 'NOT met'}"
        )
    adapting = [
        (statistics.mean(ds), run)
        for run in runs
        if run not in LABEL_SHIFT_RUNS and (ds := [d for (p, r), d in pair_delta.items() if r == run and ">" in p])
    ]
    if adapting and best is not None and best[1] in LABEL_SHIFT_RUNS:
        top = max(adapting)
        bars.append(
            f"- best run that adapts the model (label-shift correction apart): {top[1]} {top[0]:+.1f} points "
            f"(bar >= +2): {'met' if top[0] >= 2 else 'NOT met'}"
        )
    for run in RESET_RUNS:
        every = [(d, p) for (p, r), d in pair_delta.items() if r == run]
        if every:
            worst = min(every)
            verdict = "met" if worst[0] >= -1 else "NOT met"
            bars.append(f"- {run} (reset on): worst pair {worst[1]} {worst[0]:+.1f} points (bar >= -1): {verdict}")
    for run in ("tent", "tent-all", "tent-online"):
        rows = [c for c in cells if c["run"] == run]
        if rows:
            ratio = statistics.mean(c["ratio"] for c in rows)
            bars.append(
                f"- {run} per batch: {ratio:.2f}x a plain forward pass (bar < 3x): {'met' if ratio < 3 else 'NOT met'}"
            )
    return "\n".join(lines + summary + bars) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", default=f"{SHIFT},{CORRUPT}", help="source>target or task~chars|words:rate")
    parser.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated, of: {', '.join(RUNS)}")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--limit", type=int, default=200, help="test inputs per pair and seed (stratified sample)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-train", type=int, default=1000, help="training examples of each source adapter")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("out/tta"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--markdown", type=Path, default=None)
    parser.add_argument(
        "--merge", default="", help="comma-separated result files whose cells are added to --json (runs kept apart)"
    )
    parser.add_argument("--render-only", action="store_true", help="run nothing: write the markdown of --json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pairs = [p for p in args.pairs.split(",") if p]
    runs = [r for r in args.runs.split(",") if r]
    unknown = [r for r in runs if r not in RUNS]
    if unknown:
        raise SystemExit(f"unknown run(s) {unknown}; known: {', '.join(RUNS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    cells = load_cells(args.json)
    done = {(c["pair"], c["run"], c["seed"]) for c in cells}
    for extra in (Path(p) for p in args.merge.split(",") if p):
        for c in load_cells(extra):
            if (c["pair"], c["run"], c["seed"]) not in done:
                cells.append(c)
                done.add((c["pair"], c["run"], c["seed"]))
    if args.merge:
        save_cells(args.json, config, cells)
    if args.render_only:
        text = markdown(cells, runs, pairs)
        print(text)
        if args.markdown is not None:
            args.markdown.write_text(text)
        return

    backbone = Backbone.load()
    lib = Library(args.work / "library")
    sources = sorted({parse_pair(p)[1] for p in pairs})
    cfg = TrainConfig(max_train=args.max_train, epochs=args.epochs, seed=0)
    for source in sources:
        if not lib.exists(source):
            print(f"training {source} ({args.max_train} examples, {args.epochs} epochs)", flush=True)
            train_into_library(load_task(SHARED / source), backbone, lib, source, cfg, eval_splits=(), resume=True)
    pool = [load_task(SHARED / s) for s in sources]  # ttt-nn: the library tasks' training pools

    for pair in pairs:
        kind, source, _ = parse_pair(pair)
        for seed in seeds:
            task = target_task(pair, seed)
            for run in runs:
                if (pair, run, seed) in done:
                    continue
                method, granularity, params = RUNS[run]
                start = time.perf_counter()
                outcome = tta_on_task(
                    task,
                    lib,
                    source,
                    method=method,
                    params={**params, "seed": seed},
                    granularity=granularity,
                    batch_size=args.batch_size,
                    limit=args.limit,
                    sample_seed=seed,
                    pool=pool,
                    backbone=backbone,
                )
                cell = {
                    "pair": pair,
                    "kind": kind,
                    "run": run,
                    "method": method,
                    "granularity": granularity,
                    "params": outcome.params,
                    "seed": seed,
                    "n": outcome.n,
                    "before": outcome.before.accuracy,
                    "after": outcome.after.accuracy,
                    "before_f1": outcome.before.macro_f1,
                    "after_f1": outcome.after.macro_f1,
                    "tta_ms": outcome.tta_ms_per_input,
                    "plain_ms": outcome.plain_ms_per_input,
                    "ratio": outcome.cost_ratio or float("nan"),
                    "setup_s": outcome.run.setup_seconds,
                    "resets": outcome.run.resets,
                    "drifts": outcome.run.drifts,
                    "updated": outcome.run.updated,
                    "wall_s": time.perf_counter() - start,
                }
                cells.append(cell)
                save_cells(args.json, config, cells)
                print(
                    f"{pair} seed {seed} {run}: {cell['before']:.3f} -> {cell['after']:.3f} "
                    f"({100 * (cell['after'] - cell['before']):+.1f}), {cell['tta_ms']:.1f} vs {cell['plain_ms']:.1f} "
                    f"ms/input, resets {cell['resets']}, {cell['wall_s']:.0f}s",
                    flush=True,
                )
    text = markdown(cells, runs, pairs)
    print(text)
    if args.markdown is not None:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text)


if __name__ == "__main__":
    main()
