"""Multi-task task samplers head to head: average, worst-task and CVaR accuracy, and wall time.

Every sampler trains one LoRA adapter on the same tasks with the same step budget, batch size,
dev checks (``eval_every`` / ``eval_examples``, which feed the adaptive samplers) and seeds; each
adapter is then evaluated on every task's test split (a label-stratified sample of at most
``--test-limit`` examples, the same for every run). Per run: accuracy per task, the average, the
worst task, CVaR (mean of the worst 20% of tasks), training wall and CPU time, and the sampler's
own compute (its draws replayed on the recorded losses). Runs are appended to ``runs.jsonl`` in
``--out`` and skipped when already there, so an interrupted benchmark continues where it stopped.

    python benchmarks/sampling.py [--steps 300] [--seeds 0,1,2] [--samplers uniform,...,mpts]
    python benchmarks/sampling.py --probe 10              # time a few steps to choose --steps
    python benchmarks/sampling.py --split dev --samplers "mpts,mpts:tau=0.05"   # tune on dev, never test

A sampler spec is ``name`` or ``name:key=value:key=value`` (options of that sampler's config).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from adaptforge.backbone import Backbone  # noqa: E402
from adaptforge.evaluate import cvar, evaluate, worst  # noqa: E402
from adaptforge.scorers import make_scorer  # noqa: E402
from adaptforge.tasks import Task, load_task  # noqa: E402
from adaptforge.train.config import TrainConfig  # noqa: E402
from adaptforge.train.samplers import SAMPLERS, MPTSSampler, SamplerConfig, TaskInfo, make_sampler  # noqa: E402
from adaptforge.train.trainer import TrainResult, train_tasks  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "tasks"
TASKS = "cb,rte,wic,tweet_irony,tweet_stance_abortion,tweet_stance_atheism,tweet_stance_climate,agnews,dbpedia,sst2"
DEFAULT_SAMPLERS = "uniform,proportional,temperature,group_dro,mpts"


@SAMPLERS.register
class ChanceScaledMPTS(MPTSSampler):
    """Benchmark-only MPTS variant: every loss is divided by its task's chance-level loss ``log(n_labels)``.

    Cross-entropy of a k-way task at chance is ``log k``, so raw losses rank 3-way tasks above binary
    ones that are no better than chance; scaled losses are 1 at chance for every task.
    """

    name = "mpts_chance"  # reference_url and params_type (MPTSConfig) are MPTS's

    def __init__(
        self, config: SamplerConfig | Mapping[str, Any] | None = None, *, tasks: Sequence[TaskInfo], seed: int = 0
    ) -> None:
        super().__init__(config, tasks=tasks, seed=seed)
        self._chance = [math.log(max(t.n_labels, 2)) for t in self.tasks]

    def observe(self, task: int, loss: float, step: int) -> None:
        super().observe(task, float(loss) / self._chance[self._check_task(task)], step)

    def observe_eval(self, losses: Mapping[int, float]) -> None:
        super().observe_eval({t: float(v) / self._chance[self._check_task(t)] for t, v in losses.items()})


def parse_spec(spec: str) -> tuple[str, dict[str, object]]:
    """``mpts:tau=0.05:beta=2`` -> ``("mpts", {"tau": 0.05, "beta": 2})`` (values parsed as JSON when they can be)."""
    name, *pairs = spec.split(":")
    options: dict[str, object] = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return name, options


def sampler_seconds(result: TrainResult, tasks: list[Task]) -> float:
    """Time the sampler alone: a fresh one replays the run's draws on its recorded batch and dev losses."""
    cfg = result.config
    infos = [TaskInfo(t.name, len(t.sample("train", cfg.max_train, seed=cfg.seed)), len(t.labels)) for t in tasks]
    sampler = make_sampler(cfg.sampler, infos, cfg.sampler_options, seed=cfg.seed)
    total = len(result.history)
    evals = {t.name: iter(result.curves[t.name]) for t in tasks}
    t0 = time.perf_counter()
    for step, task, loss in result.history:
        sampler.next()
        sampler.observe(task, loss, step)
        if cfg.eval_every and ((step + 1) % cfg.eval_every == 0 or step + 1 == total):
            sampler.observe_eval({i: next(evals[t.name])[1] for i, t in enumerate(tasks)})
    return time.perf_counter() - t0


def run_one(spec: str, seed: int, tasks: list[Task], backbone: Backbone, args: argparse.Namespace) -> dict[str, object]:
    name, options = parse_spec(spec)
    cfg = TrainConfig(
        batch_size=args.batch_size,
        steps=args.steps,
        eval_every=args.eval_every,
        eval_examples=args.eval_examples,
        max_train=args.max_train,
        max_length=args.max_length,
        seed=seed,
        sampler=name,
        sampler_options=options,
        checkpoint_every=0,
    )
    wall0, cpu0 = time.perf_counter(), time.process_time()
    result = train_tasks(tasks, backbone, cfg)
    train_wall, train_cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    scorer = make_scorer(backbone, result.config.max_length, result.config.temperature)
    evals = [evaluate(scorer, t, args.split, result.delta, limit=args.test_limit) for t in tasks]
    accs = [e.accuracy for e in evals]
    return {
        "spec": spec,
        "seed": seed,
        "split": args.split,
        "accuracy": {e.task: e.accuracy for e in evals},
        "macro_f1": {e.task: e.macro_f1 for e in evals},
        "loss": {e.task: e.loss for e in evals},
        "n_eval": {e.task: e.n for e in evals},
        "avg": sum(accs) / len(accs),
        "worst": worst(accs),
        "worst_task": evals[accs.index(min(accs))].task,
        "cvar20": cvar(accs, 0.2),
        "train_loop_seconds": result.seconds,  # the step loop incl. dev checks (what --steps buys)
        "train_wall_seconds": train_wall,  # train_tasks() end to end (tokenization, PEFT wrap, loop)
        "train_cpu_seconds": train_cpu,
        "sampler_seconds": sampler_seconds(result, tasks),
        "draws": dict(zip(result.tasks, result.draws, strict=True)),
        "curves": result.curves,
        "config": result.config.to_dict(),
    }


def mean_sd(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    m = statistics.mean(values) * scale
    if len(values) < 2:
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} ± {statistics.stdev(values) * scale:.{digits}f}"


def report(rows: list[dict], specs: list[str], tasks: list[str]) -> str:
    """Markdown: the summary per sampler, paired differences to uniform, per-task accuracy and draws."""
    by = {s: sorted((r for r in rows if r["spec"] == s), key=lambda r: r["seed"]) for s in specs}
    by = {s: v for s, v in by.items() if v}
    split = rows[0]["split"] if rows else "test"
    lines = [
        "| sampler | seeds | avg acc | worst-task acc | CVaR20 acc | train loop s | train CPU s | sampler ms/step |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s, rs in by.items():
        steps = len(rs[0]["curves"][tasks[0]]) and rs[0]["config"]["steps"]
        lines.append(
            f"| {s} | {len(rs)} | {mean_sd([r['avg'] for r in rs], 100)} | {mean_sd([r['worst'] for r in rs], 100)} "
            f"| {mean_sd([r['cvar20'] for r in rs], 100)} | {mean_sd([r['train_loop_seconds'] for r in rs])} "
            f"| {mean_sd([r['train_cpu_seconds'] for r in rs])} "
            f"| {statistics.mean(r['sampler_seconds'] for r in rs) / steps * 1000:.3f} |"
        )
    lines[0] = lines[0].replace("acc |", f"{split} acc |", 1)
    base = by.get("uniform")
    if base:
        lines += [
            "",
            "Paired with uniform, same seed (points; time ratio - 1):",
            "",
            "| sampler | Δ avg | Δ worst | Δ CVaR20 | loop wall overhead | CPU overhead |",
            "|---|---|---|---|---|---|",
        ]
        ref = {r["seed"]: r for r in base}
        for s, rs in by.items():
            pairs = [(r, ref[r["seed"]]) for r in rs if r["seed"] in ref]
            if s == "uniform" or not pairs:
                continue

            def diff(key: str, pairs=pairs) -> str:
                return mean_sd([a[key] - b[key] for a, b in pairs], 100)

            wall = sum(a["train_loop_seconds"] for a, _ in pairs) / sum(b["train_loop_seconds"] for _, b in pairs) - 1
            cpu = sum(a["train_cpu_seconds"] for a, _ in pairs) / sum(b["train_cpu_seconds"] for _, b in pairs) - 1
            lines.append(f"| {s} | {diff('avg')} | {diff('worst')} | {diff('cvar20')} | {wall:+.1%} | {cpu:+.1%} |")
    lines += ["", f"Per-task {split} accuracy (mean over seeds) and worst task per seed:", ""]
    short = [t.replace("tweet_stance_", "stance_") for t in tasks]
    lines += ["| sampler | " + " | ".join(short) + " | worst task per seed |", "|---" * (len(tasks) + 2) + "|"]
    for s, rs in by.items():
        cells = [f"{statistics.mean(r['accuracy'][t] for r in rs) * 100:.1f}" for t in tasks]
        lines.append(f"| {s} | " + " | ".join(cells) + " | " + ", ".join(r["worst_task"] for r in rs) + " |")
    lines += ["", "Batches drawn per task (mean over seeds):", ""]
    lines += ["| sampler | " + " | ".join(short) + " |", "|---" * (len(tasks) + 1) + "|"]
    for s, rs in by.items():
        cells = [f"{statistics.mean(r['draws'][t] for r in rs):.0f}" for t in tasks]
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def probe(tasks: list[Task], backbone: Backbone, args: argparse.Namespace) -> None:
    """Seconds per step (and per dev check) of a short uniform run, to pick --steps for a time budget."""
    for eval_every in (0, args.probe):
        cfg = TrainConfig(
            batch_size=args.batch_size,
            steps=args.probe,
            eval_every=eval_every,
            eval_examples=args.eval_examples,
            max_train=args.max_train,
            max_length=args.max_length,
            checkpoint_every=0,
        )
        t0 = time.perf_counter()
        result = train_tasks(tasks, backbone, cfg)
        print(
            f"{args.probe} steps, eval_every {eval_every}: loop {result.seconds:.1f}s, "
            f"total {time.perf_counter() - t0:.1f}s"
        )
    scorer = make_scorer(backbone)
    t0 = time.perf_counter()
    for t in tasks:
        evaluate(scorer, t, args.split, result.delta, limit=args.test_limit)
    print(
        f"evaluation of one adapter on {len(tasks)} tasks ({args.split}, <= {args.test_limit} each): "
        f"{time.perf_counter() - t0:.1f}s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", default=TASKS)
    parser.add_argument("--samplers", default=DEFAULT_SAMPLERS, help="comma-separated sampler specs")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--eval-examples", type=int, default=32, help="dev examples per task in each dev check")
    parser.add_argument("--max-train", type=int, default=None)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--split", default="test", help="evaluation split (dev to tune; report on test)")
    parser.add_argument("--test-limit", type=int, default=300, help="at most this many evaluation examples per task")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--out", type=Path, default=Path("out/sampling"))
    parser.add_argument("--probe", type=int, default=0, help="only time this many steps and exit")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = args.tasks.split(",")
    tasks = [load_task(SHARED / n) for n in names]
    backbone = Backbone.load()
    if args.probe:
        probe(tasks, backbone, args)
        return
    specs, seeds = args.samplers.split(","), [int(s) for s in args.seeds.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "runs.jsonl"
    setting = {k: getattr(args, k) for k in ("tasks", "steps", "batch_size", "eval_every", "eval_examples")}
    setting |= {k: getattr(args, k) for k in ("max_train", "max_length", "split", "test_limit")}
    rows = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    rows = [r for r in rows if r.get("setting") == setting]
    sizes = {t.name: len(t.sample("train", args.max_train, seed=0)) for t in tasks}
    print(f"tasks (train size): {', '.join(f'{n} ({sizes[n]})' for n in names)}")
    print(f"setting: {json.dumps(setting)}; torch threads {torch.get_num_threads()}", flush=True)
    start = time.perf_counter()
    for seed in seeds:  # samplers interleaved within a seed, so drifting machine load hits them alike
        for spec in specs:
            if any(r["spec"] == spec and r["seed"] == seed for r in rows):
                continue
            row = {**run_one(spec, seed, tasks, backbone, args), "setting": setting}
            rows.append(row)
            with log.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
            print(
                f"[{time.perf_counter() - start:7.0f}s] {spec:<24} seed {seed}: avg {row['avg']:.3f} "
                f"worst {row['worst']:.3f} ({row['worst_task']}) cvar {row['cvar20']:.3f} "
                f"loop {row['train_loop_seconds']:.0f}s draws {list(row['draws'].values())}",
                flush=True,
            )
    table = report([r for r in rows if r["seed"] in seeds], specs, names)
    (args.out / f"report_{args.split}.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
