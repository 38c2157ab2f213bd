"""Merge quality on the 8-task suite: one LoRA adapter per task, every merge method, one table.

python benchmarks/merge_quality.py --library out/merge_bench/library [--max-train 1000] [--epochs 2]
    [--test-limit 200] [--dev-limit 64] [--threads 1] [--json out.json] [--markdown out.md]

Adapters named ``<task>-lora`` already in ``--library`` are reused (trained with the same command
otherwise). Scaling of the data-free methods is tuned on the dev splits (``--dev-limit`` examples per
task, mean accuracy); aTLAS is fitted on the same dev examples; DaWin routes with the adapters' own
logits; base interpolation shrinks the tuned TIES merge toward the base, keeping held-out tasks
(``--retention``) within ``--tolerance`` of the base model. Everything is reported on the test
splits (the first ``--test-limit`` examples of a label-stratified seeded sample, the same examples
for every method). Normalized accuracy = merged / the task's own adapter on the same examples.
Every finished step is cached in ``<library>/../merge_quality_cache/<suite hash>`` so a rerun resumes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from adaptforge.backbone import Backbone  # noqa: E402
from adaptforge.core import LoraDelta  # noqa: E402
from adaptforge.evaluate import predict_logits  # noqa: E402
from adaptforge.library import Library  # noqa: E402
from adaptforge.merge import EntropyRouter, evaluate_routed, merge, run  # noqa: E402
from adaptforge.pipelines.train import train_into_library  # noqa: E402
from adaptforge.scorers import Scorer, make_scorer  # noqa: E402
from adaptforge.tasks import Task, load_task  # noqa: E402
from adaptforge.train.config import TrainConfig  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "tasks"
TASKS = "sst2,agnews,trec_question_type,tweet_emotion,dbpedia,mnli,subjectivity,tweet_hate"
RETENTION = "movie_review,customer_review,tweet_offensive"
# Data-free methods: fixed params and the scaling grid tuned on dev (mean accuracy over the tasks).
STATIC: dict[str, tuple[dict[str, Any], list[float]]] = {
    "task_arithmetic": ({}, [0.35, 0.5, 0.75, 1.0, 1.25]),
    "ties": ({"density": 0.2}, [1.0, 1.5, 2.0, 3.0]),
    "dare_ties": ({"density": 0.5, "seed": 0}, [1.0, 1.5, 2.0, 3.0]),
    "tall": ({"tall_lambda": 0.4, "min_agree": 2}, [0.5, 0.75, 1.0, 1.25]),
}

log = logging.getLogger("merge_quality")


class Cache:
    """JSON results plus tensors, one file per finished step, so an interrupted run resumes."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / "results.json"
        self.data: dict[str, Any] = json.loads(self.path.read_text()) if self.path.is_file() else {}

    def get_or(self, key: str, compute: Callable[[], Any]) -> Any:
        if key not in self.data:
            self.data[key] = compute()
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.data, indent=1))
            os.replace(tmp, self.path)
        return self.data[key]

    def tensor(self, key: str, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        path = self.folder / f"{key}.pt"
        if path.is_file():
            return torch.load(path)
        value = compute()
        torch.save(value, path)
        return value


def accuracy_of(
    scorer: Scorer, task: Task, split: str, limit: int, delta: LoraDelta | None, alpha: float = 1.0
) -> float:
    with scorer.backbone.applied(delta, weight=alpha) as model:
        logits, gold = predict_logits(scorer, task, split, model, limit=limit)
    return float((logits.argmax(-1) == gold).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--library", type=Path, required=True, help="Library with (or for) the <task>-lora adapters.")
    parser.add_argument("--tasks-dir", type=Path, default=SHARED)
    parser.add_argument("--tasks", default=TASKS)
    parser.add_argument("--retention", default=RETENTION, help="Held-out tasks base_interp must keep.")
    parser.add_argument("--max-train", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--test-limit", type=int, default=200)
    parser.add_argument("--dev-limit", type=int, default=64)
    parser.add_argument("--atlas-steps", type=int, default=25)
    parser.add_argument("--dawin-temperature", type=float, default=0.1)
    parser.add_argument("--tolerance", type=float, default=0.01)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--markdown", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()

    backbone = Backbone.load()
    scorer = make_scorer(backbone)
    tasks = [load_task(args.tasks_dir / name) for name in args.tasks.split(",")]
    retention = [load_task(args.tasks_dir / name) for name in args.retention.split(",")]
    library = Library(args.library)
    suite = hashlib.sha256(f"{args.tasks}|{args.retention}".encode()).hexdigest()[:8]
    cache = Cache(args.library.parent / "merge_quality_cache" / suite)
    cfg = TrainConfig(epochs=args.epochs, max_train=args.max_train, seed=0)
    deltas = []
    for task in tasks:
        name = f"{task.name}-lora"
        if not library.exists(name):
            log.info("training %s (%d examples, %d epochs)", name, args.max_train, args.epochs)
            train_into_library(task, backbone, library, name, cfg)
        deltas.append(library.load(name, expected_fingerprint=backbone.fingerprint)[0])
    train_recipe = library.get(f"{tasks[0].name}-lora").recipe.get("config", {})

    def test_logits(adapter: int | None, task: Task) -> torch.Tensor:
        key = f"logits_{'base' if adapter is None else tasks[adapter].name}_{task.name}_{args.test_limit}"

        def compute() -> torch.Tensor:
            with backbone.applied(None if adapter is None else deltas[adapter]) as model:
                return predict_logits(scorer, task, "test", model, limit=args.test_limit)[0]

        return cache.tensor(key, compute)

    gold = {t.name: predict_gold(scorer, t, args.test_limit) for t in tasks}

    def acc(logits: torch.Tensor, task: Task) -> float:
        return float((logits.argmax(-1) == gold[task.name]).float().mean())

    results: dict[str, dict[str, Any]] = {}
    log.info("zero-shot and individual adapters")
    results["zero-shot"] = {"test": {t.name: acc(test_logits(None, t), t) for t in tasks}}
    results["individual"] = {"test": {t.name: acc(test_logits(i, t), t) for i, t in enumerate(tasks)}}

    def dev_mean(delta: LoraDelta) -> float:
        return sum(accuracy_of(scorer, t, "dev", args.dev_limit, delta) for t in tasks) / len(tasks)

    def test_accs(delta: LoraDelta) -> dict[str, float]:
        return {t.name: accuracy_of(scorer, t, "test", args.test_limit, delta) for t in tasks}

    tuned: dict[str, dict[str, Any]] = {}
    for method, (params, grid) in STATIC.items():

        def static(method: str = method, params: dict[str, Any] = params, grid: list[float] = grid) -> dict[str, Any]:
            curve = []
            for scaling in grid:
                t0 = time.perf_counter()
                res = merge(method, deltas, {**params, "scaling": scaling})
                seconds = time.perf_counter() - t0
                curve.append({"scaling": scaling, "dev": dev_mean(res.delta), "merge_seconds": round(seconds, 2)})
                log.info("%s scaling %.2f: dev %.4f (merge %.1fs)", method, scaling, curve[-1]["dev"], seconds)
            best = max(curve, key=lambda r: r["dev"])
            res = merge(method, deltas, {**params, "scaling": best["scaling"]})
            errors = list(res.reconstruction_error.values())
            return {
                "params": {**params, "scaling": best["scaling"]},
                "dev_curve": curve,
                "test": test_accs(res.delta),
                "reconstruction_error_max": max(errors) if errors else 0.0,
            }

        tuned[method] = results[method] = cache.get_or(
            f"static_{method}_{grid}_{args.dev_limit}_{args.test_limit}", static
        )

    # aTLAS starts from task arithmetic's dev-tuned scaling (every coefficient), then learns per block.
    atlas_init = tuned["task_arithmetic"]["params"]["scaling"]

    def atlas() -> dict[str, Any]:
        params = {
            "steps": args.atlas_steps,
            "examples_per_task": args.dev_limit,
            "batch_size": 8,
            "lr": 0.05,
            "scaling": atlas_init,
        }
        res = run("atlas", deltas, params, scorer, tasks)
        return {
            "params": params,
            "test": test_accs(res.delta),
            "seconds": res.info["seconds"],
            "loss_curve": res.info["loss_curve"],
            "mean_coefficient_per_adapter": res.info["mean_coefficient_per_adapter"],
        }

    log.info("atlas")
    results["atlas"] = cache.get_or(f"atlas_{atlas_init}_{args.atlas_steps}_{args.dev_limit}_{args.test_limit}", atlas)

    def dawin() -> dict[str, Any]:
        router = EntropyRouter(deltas, temperature=args.dawin_temperature)
        out: dict[str, Any] = {"params": {"temperature": args.dawin_temperature}, "test": {}, "routing_accuracy": {}}
        t0 = time.perf_counter()
        for i, task in enumerate(tasks):
            coefs = router.from_logits([test_logits(a, task) for a in range(len(deltas))])
            res, _ = evaluate_routed(scorer, task, router, "test", args.test_limit, coefficients=coefs)
            out["test"][task.name] = res.accuracy
            out["routing_accuracy"][task.name] = float((coefs.argmax(1) == i).float().mean())
            out["mean_own_weight"] = out.get("mean_own_weight", {}) | {task.name: float(coefs[:, i].mean())}
            log.info(
                "dawin %s: %.4f (routed to own adapter %.3f)",
                task.name,
                res.accuracy,
                out["routing_accuracy"][task.name],
            )
        out["seconds_routed_pass"] = round(time.perf_counter() - t0, 1)
        return out

    log.info("dawin")
    results["dawin"] = cache.get_or(f"dawin_{args.dawin_temperature}_{args.test_limit}", dawin)

    best_static = max(tuned, key=lambda m: max(r["dev"] for r in tuned[m]["dev_curve"]))  # chosen on dev

    def base_interp(rule: str) -> dict[str, Any]:
        inner_params = {k: v for k, v in tuned[best_static]["params"].items() if k != "scaling"}
        params = {
            "inner": best_static,
            "inner_params": inner_params,
            "scaling": tuned[best_static]["params"]["scaling"],
            "retention": [t.name for t in retention],
            "retention_rule": rule,
            "tolerance": args.tolerance,
            "grid": [0.25, 0.5, 0.75, 1.0],
            "examples_per_task": args.dev_limit,
        }
        res = run("base_interp", deltas, params, scorer, tasks + retention)
        merged_full = merge(best_static, deltas, tuned[best_static]["params"]).delta
        return {
            "params": params,
            "alpha": res.info["alpha"],
            "dev_curve": [
                {k: r[k] for k in ("alpha", "target_accuracy", "retention_accuracy", "per_task")}
                for r in res.info["curve"]
            ],
            "test": test_accs(res.delta),
            "retention_test": {
                "base": {t.name: accuracy_of(scorer, t, "test", args.test_limit, None) for t in retention},
                "merged": {t.name: accuracy_of(scorer, t, "test", args.test_limit, merged_full) for t in retention},
                "base_interp": {t.name: accuracy_of(scorer, t, "test", args.test_limit, res.delta) for t in retention},
            },
        }

    for rule, label in (("mean", "base_interp"), ("each", "base_interp_each")):
        log.info("base_interp (%s) on %s", rule, best_static)
        key = f"base_interp_{best_static}_{args.tolerance}_{args.dev_limit}_{args.test_limit}"
        results[label] = cache.get_or(key if rule == "mean" else f"{key}_each", lambda rule=rule: base_interp(rule))

    summary = summarize(results, [t.name for t in tasks])
    report = {
        "config": {
            "tasks": [t.name for t in tasks],
            "retention": [t.name for t in retention],
            "train": {
                "max_train": train_recipe.get("max_train"),
                "epochs": train_recipe.get("epochs"),
                "rank": train_recipe.get("rank"),
                "lr": train_recipe.get("lr"),
            },
            "test_limit": args.test_limit,
            "dev_limit": args.dev_limit,
            "threads": args.threads,
        },
        "results": results,
        "summary": summary,
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    table = markdown(summary, results, [t.name for t in tasks])
    print(table)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))
    if args.markdown:
        args.markdown.write_text(table + "\n")


def predict_gold(scorer: Scorer, task: Task, limit: int) -> torch.Tensor:
    encoded = scorer.encode(task, task.sample("test", limit, seed=0))
    return torch.tensor(encoded.targets, dtype=torch.long)


def summarize(results: dict[str, dict[str, Any]], tasks: list[str]) -> dict[str, dict[str, Any]]:
    own = results["individual"]["test"]
    out = {}
    for method, res in results.items():
        accs = res["test"]
        normalized = {t: accs[t] / own[t] for t in tasks if own[t] > 0}
        low = min(normalized, key=lambda t: normalized[t])
        out[method] = {
            "average_accuracy": sum(accs[t] for t in tasks) / len(tasks),
            "average_normalized": sum(normalized.values()) / len(normalized),
            "worst_task": low,
            "worst_normalized": normalized[low],
        }
    return out


SHORT = {"trec_question_type": "trec", "tweet_emotion": "emotion", "subjectivity": "subj", "tweet_hate": "hate"}


def markdown(summary: dict[str, dict[str, Any]], results: dict[str, dict[str, Any]], tasks: list[str]) -> str:
    head = ["method", *[SHORT.get(t, t) for t in tasks], "avg acc", "avg norm", "worst (norm)", "params"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, res in results.items():
        s = summary[method]
        params = ", ".join(
            f"{k}={v}" for k, v in res.get("params", {}).items() if k not in ("inner_params", "retention")
        )
        if method.startswith("base_interp"):
            keep = ("inner", "scaling", "retention_rule", "tolerance")
            params = f"alpha={res['alpha']} on " + ", ".join(f"{k}={res['params'][k]}" for k in keep)
        cells = [f"{res['test'][t]:.3f}" for t in tasks]
        worst = f"{SHORT.get(s['worst_task'], s['worst_task'])} {s['worst_normalized']:.3f}"
        lines.append(
            f"| {method} | " + " | ".join(cells) + f" | {s['average_accuracy']:.3f} | {s['average_normalized']:.3f} | "
            f"{worst} | {params} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
