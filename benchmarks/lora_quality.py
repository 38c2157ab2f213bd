"""LoRA vs zero-shot on the embedded model: test accuracy per task, 1000 training examples each.

python benchmarks/lora_quality.py [--tasks ...] [--n 1000] [--epochs 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from adaptforge.backbone import Backbone  # noqa: E402
from adaptforge.evaluate import evaluate  # noqa: E402
from adaptforge.library import Library  # noqa: E402
from adaptforge.pipelines.train import train_into_library  # noqa: E402
from adaptforge.scorers import make_scorer  # noqa: E402
from adaptforge.tasks import load_task  # noqa: E402
from adaptforge.train.config import TrainConfig  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "tasks"
TASKS = "sst2,agnews,trec_question_type,tweet_emotion,dbpedia,mnli"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", default=TASKS)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--library", type=Path, default=Path("out/bench_library"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    backbone = Backbone.load()
    scorer = make_scorer(backbone)
    cfg = TrainConfig(epochs=args.epochs, max_train=args.n, seed=args.seed)
    library = Library(args.library)
    rows = []
    print(f"{'task':<22}{'zero-shot':>10}{'LoRA':>8}{'gain':>8}{'F1 zero':>9}{'F1 LoRA':>9}{'train s':>9}")
    for name in args.tasks.split(","):
        task = load_task(SHARED / name)
        zero = evaluate(scorer, task, "test")
        adapter = f"{name}-lora"
        if not library.exists(adapter):
            train_into_library(task, backbone, library, adapter, cfg, resume=True)
        delta, record = library.load(adapter, expected_fingerprint=backbone.fingerprint)
        seconds = float(record.recipe.get("seconds", float("nan")))
        tuned = evaluate(scorer, task, "test", delta, adapter=adapter)
        trained = {k: record.recipe["config"][k] for k in ("max_train", "epochs", "rank", "lr", "seed")}
        rows.append(
            {
                "task": name,
                "zero_shot": zero.accuracy,
                "lora": tuned.accuracy,
                "zero_shot_f1": zero.macro_f1,
                "lora_f1": tuned.macro_f1,
                "n_test": zero.n,
                "train_seconds": seconds,
                "trained": trained,
            }
        )
        print(
            f"{name:<22}{zero.accuracy:>10.3f}{tuned.accuracy:>8.3f}{tuned.accuracy - zero.accuracy:>+8.3f}"
            f"{zero.macro_f1:>9.3f}{tuned.macro_f1:>9.3f}{seconds:>9.0f}",
            flush=True,
        )
    mz = sum(r["zero_shot"] for r in rows) / len(rows)
    ml = sum(r["lora"] for r in rows) / len(rows)
    print(f"{'average':<22}{mz:>10.3f}{ml:>8.3f}{ml - mz:>+8.3f}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "average_zero_shot": mz, "average_lora": ml}, indent=2))


if __name__ == "__main__":
    main()
