"""New tasks without full training: leave-one-task-out over the dev suite (issue 5).

For each held-out task, the library holds adapters of every other task (``--variants`` per task: the
same recipe on different label-stratified data subsets and seeds, so the generator sees several
samples per task); the held-out task gets ``k`` labelled shots from its train split (k in ``--shots``)
and each method builds an adapter for it, evaluated on its test split (the same label-stratified
``--test-limit`` examples for every method). Methods:

- ``zero_shot``: the base model; ``prototype``: mean shot embedding per label (k > 0);
- ``shot_lora``: a LoRA trained on the k shots only (k > 0);
- ``retrieval``: the best candidate by description similarity (k = 0) or by shot loss (k > 0);
- ``lorahub`` / ``atlas``: compose the ``--candidates`` retrieved adapters from the shots (k > 0);
- ``tuned``: the retrieved adapter plus a LoRA trained on the shots on top of it (k > 0);
- ``arrow``: per-token routing over the candidates, no shots used (reported at k = 0);
- ``generate``: the conditional generator trained on the other tasks' adapters, from the description (k = 0).

Rows go to ``<out>/runs.jsonl`` and are skipped when present, so an interrupted run resumes.
``--held-out`` composes other tasks (e.g. ``../shared/data/tasks/movie_review``) over the same library
instead of leaving each library task out in turn.

    python benchmarks/new_task.py [--tasks a,b,...] [--shots 0,4,16,64] [--seeds 0,1,2] [--out out/new_task]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from adaptforge.backbone import Backbone  # noqa: E402
from adaptforge.compose import (  # noqa: E402
    ComposeResult,
    compose,
    draw_shots,
    evaluate_composed,
    prototype_eval,
    rank_candidates,
    train_on_shots,
)
from adaptforge.compose.baselines import SHOT_TRAIN_DEFAULTS  # noqa: E402
from adaptforge.core import LoraDelta  # noqa: E402
from adaptforge.evaluate import EvalResult, predict_logits, result_from_logits, subset_of  # noqa: E402
from adaptforge.generate import GeneratorConfig, LoraGenerator  # noqa: E402
from adaptforge.library import Library  # noqa: E402
from adaptforge.pipelines.demo import shipped_tasks_dir  # noqa: E402
from adaptforge.pipelines.generate import library_generator  # noqa: E402
from adaptforge.pipelines.train import train_into_library
from adaptforge.scorers import (  # noqa: E402
    Scorer,
    describe,  # noqa: E402
    make_scorer,
)
from adaptforge.tasks import Task, load_task  # noqa: E402
from adaptforge.train.config import TrainConfig  # noqa: E402

TASKS = "sst2,agnews,trec_question_type,tweet_emotion,dbpedia,mnli,subjectivity,tweet_hate"
ZERO_K = ("zero_shot", "retrieval", "arrow", "generate")
FEW_K = ("retrieval", "lorahub", "atlas", "tuned", "shot_lora", "prototype")

log = logging.getLogger("new_task")


def build_library(tasks: list[Task], backbone: Backbone, library: Library, args: argparse.Namespace) -> None:
    """``<task>-v<i>`` for every task and variant: ``--variant-train`` examples (a different stratified
    subset per seed), ``--epochs`` epochs. Existing names are kept, so this resumes."""
    for task in tasks:
        for v in range(args.variants):
            name = f"{task.name}-v{v}"
            if library.exists(name):
                continue
            t0 = time.perf_counter()
            cfg = TrainConfig(max_train=args.variant_train, epochs=args.epochs, seed=v, checkpoint_every=0)
            train_into_library(task, backbone, library, name, cfg, eval_splits=())
            print(f"trained {name} in {time.perf_counter() - t0:.0f}s", flush=True)


def evaluate_each(scorer: Scorer, task: Task, delta: LoraDelta | None, limit: int | None) -> tuple[EvalResult, str]:
    """``evaluate`` on the test split, plus which examples were right ('1') or wrong ('0') in the sample's order,
    so two methods scored on the same examples can be compared pairwise (issue 14's margins)."""
    with scorer.backbone.applied(delta) as model:
        logits, gold = predict_logits(scorer, task, "test", model, limit=limit)
    correct = "".join("1" if p == g else "0" for p, g in zip(logits.argmax(-1).tolist(), gold.tolist(), strict=True))
    return result_from_logits(task, "test", None, logits, gold, subset_of(task, "test", limit)), correct


def run_cell(
    method: str,
    task: Task,
    k: int,
    seed: int,
    library: Library,
    backbone: Backbone,
    scorer: Scorer,
    generators: dict[str, LoraGenerator],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Build one method's adapter for the held-out ``task`` from ``k`` shots and evaluate it on test."""
    shots = draw_shots(task, k, seed=seed)
    t0 = time.perf_counter()
    info: dict[str, Any] = {}

    def test(delta=None) -> EvalResult:
        result, info["correct"] = evaluate_each(scorer, task, delta, args.test_limit)
        return result

    def candidates():
        return rank_candidates(
            library, scorer, task, n=args.candidates, shots=shots if k else None, exclude_tasks={task.name}
        )

    if method == "zero_shot":
        fit_s, result = 0.0, test()
    elif method == "prototype":
        result = prototype_eval(scorer, task, shots, "test", limit=args.test_limit)
        fit_s = time.perf_counter() - t0
    elif method == "shot_lora":
        delta = train_on_shots(backbone, shots, TrainConfig(seed=seed, **SHOT_TRAIN_DEFAULTS)).delta
        fit_s = time.perf_counter() - t0
        result = test(delta)
    elif method == "generate":
        generator = generators[task.name]
        delta = generator.generate(describe(scorer, task))
        fit_s = time.perf_counter() - t0
        result = test(delta)
    else:
        found = candidates()
        composed: ComposeResult = compose(method, found, scorer, shots, {"seed": seed})
        fit_s = time.perf_counter() - t0
        result = evaluate_composed(scorer, task, composed, "test", limit=args.test_limit)
        info = {"candidates": [c.name for c in found], "weights": [round(w, 4) for w in composed.weights]}
    return {
        "task": task.name,
        "k": k,
        "seed": seed,
        "method": method,
        "accuracy": result.accuracy,
        "macro_f1": result.macro_f1,
        "n_test": result.n,
        "fit_seconds": round(fit_s, 2),
        "total_seconds": round(time.perf_counter() - t0, 2),
        **info,
    }


def fit_generator(library: Library, backbone: Backbone, held_out: str, seed: int) -> LoraGenerator:
    """The generator of the library without ``held_out``'s adapters (cached in the library by
    :func:`~adaptforge.pipelines.generate.library_generator`, keyed by its adapters and config)."""
    return library_generator(library, backbone, GeneratorConfig(seed=seed), exclude_tasks=[held_out])[0]


def mean(values: list[float]) -> float:
    return statistics.mean(values) if values else float("nan")


def report(rows: list[dict[str, Any]], tasks: list[str], shots: list[int]) -> str:
    """Markdown: per method and k, the mean over held-out tasks and the worst task (each task's accuracy
    averaged over seeds first), the seeds run and the mean fit time."""
    lines = [
        "| k | method | mean acc | Δ vs zero-shot | worst task acc (task) | tasks × seeds | fit s (mean) |",
        "|---|---|---|---|---|---|---|",
    ]
    zero = {t: mean([r["accuracy"] for r in rows if r["method"] == "zero_shot" and r["task"] == t]) for t in tasks}
    for k in shots:
        methods = ZERO_K if k == 0 else FEW_K
        for method in methods:
            cell = [r for r in rows if r["k"] == k and r["method"] == method]
            per_task = {t: mean([r["accuracy"] for r in cell if r["task"] == t]) for t in tasks}
            per_task = {t: v for t, v in per_task.items() if v == v}
            if not per_task:
                continue
            worst_task = min(per_task, key=per_task.get)
            avg = mean(list(per_task.values()))
            base = mean([zero[t] for t in per_task if zero.get(t) == zero.get(t)])
            lines.append(
                f"| {k} | {method} | {avg * 100:.1f} | {(avg - base) * 100:+.1f} | {per_task[worst_task] * 100:.1f} "
                f"({worst_task}) | {len(per_task)} × {len({r['seed'] for r in cell})} "
                f"| {mean([r['fit_seconds'] for r in cell]):.1f} |"
            )
    lines += ["", "Per held-out task (accuracy %, mean over seeds):", ""]
    header = ["k", "method", *tasks]
    lines += ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for k in shots:
        for method in ZERO_K if k == 0 else FEW_K:
            cell = [r for r in rows if r["k"] == k and r["method"] == method]
            if not cell:
                continue
            values = [mean([r["accuracy"] for r in cell if r["task"] == t]) for t in tasks]
            lines.append(
                f"| {k} | {method} | " + " | ".join("-" if v != v else f"{v * 100:.1f}" for v in values) + " |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", default=TASKS, help="shipped tasks whose adapters make the library")
    parser.add_argument(
        "--held-out",
        default=None,
        help="tasks to compose (shipped names or task folders; default: --tasks, each left out in turn)",
    )
    parser.add_argument("--shots", default="0,4,16,64")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--methods", default=None, help="comma-separated subset of methods (default: all)")
    parser.add_argument("--variants", type=int, default=3, help="adapters per task in the library")
    parser.add_argument("--variant-train", type=int, default=200, help="training examples per variant")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--candidates", type=int, default=20)
    parser.add_argument("--test-limit", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("out/new_task"))
    parser.add_argument("--report-only", action="store_true", help="print the table of the runs so far and exit")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    tasks = [load_task(shipped_tasks_dir() / n) for n in args.tasks.split(",")]
    held_out = (
        [load_task(Path(n) if "/" in n else shipped_tasks_dir() / n) for n in args.held_out.split(",")]
        if args.held_out
        else tasks
    )
    names = [t.name for t in held_out]
    shots = [int(k) for k in args.shots.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    only = set(args.methods.split(",")) if args.methods else None
    log_path = args.out / "runs.jsonl"
    rows = [json.loads(line) for line in log_path.read_text().splitlines()] if log_path.is_file() else []
    if args.report_only:
        print(report(rows, names, shots))
        return
    backbone = Backbone.load()
    scorer = make_scorer(backbone)
    args.out.mkdir(parents=True, exist_ok=True)
    library = Library(args.out / "library")
    build_library(tasks, backbone, library, args)
    done = {(r["task"], r["k"], r["seed"], r["method"]) for r in rows}
    start = time.perf_counter()
    for seed in seeds:  # one seed over every task first: a partial run still covers the whole suite
        for task in held_out:
            generators: dict[str, LoraGenerator] = {}
            for k in shots:
                for method in ZERO_K if k == 0 else FEW_K:
                    if (only and method not in only) or (task.name, k, seed, method) in done:
                        continue
                    if method == "zero_shot" and seed != seeds[0]:
                        continue  # deterministic: one row per task
                    if method == "generate" and task.name not in generators:
                        generators[task.name] = fit_generator(library, backbone, task.name, seed)
                    row = run_cell(method, task, k, seed, library, backbone, scorer, generators, args)
                    rows.append(row)
                    with log_path.open("a") as fh:
                        fh.write(json.dumps(row) + "\n")
                    print(
                        f"[{time.perf_counter() - start:6.0f}s] {task.name:<20} k={k:<3} seed {seed} "
                        f"{method:<10} acc {row['accuracy']:.3f} fit {row['fit_seconds']:.1f}s",
                        flush=True,
                    )
    table = report(rows, names, shots)
    (args.out / "report.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
