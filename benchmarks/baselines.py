"""The baseline a user tries first, beside ``adaptforge train``: a linear probe on the frozen encoder (issue 35).

On each shipped classification task, with the same training examples (``--n``, label-stratified, seed 0) and the
same first ``--test`` rows of the test split:

- ``zero-shot``: the base model's scorer (cosine of text and label-name embeddings);
- ``probe``: logistic regression on frozen all-MiniLM-L6-v2 mean-pooled, L2-normalised embeddings of the texts
  (what sentence-transformers returns), C chosen by stratified 5-fold cross-validation on the training examples
  from ``PROBE_CS``; its time is embedding both splits plus the search and the final fit;
- ``train``: ``adaptforge train``'s defaults (LoRA r=8 on the encoder, 3 epochs, batch 32); its time is training.

Accuracy and macro-F1 on the test rows. The probe needs scikit-learn, which adaptforge does not depend on:
without it the probe column is skipped with a line saying so. SetFit is not installed (it would pull its own
training stack); it is not run here.

    python benchmarks/baselines.py [--tasks a,b] [--n 400] [--test 300] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from adaptforge.backbone import Backbone  # noqa: E402
from adaptforge.evaluate import EvalResult, evaluate, macro_f1  # noqa: E402
from adaptforge.pipelines.demo import shipped_tasks_dir  # noqa: E402
from adaptforge.scorers import Scorer, make_scorer  # noqa: E402
from adaptforge.tasks import Task, load_task  # noqa: E402
from adaptforge.train.config import TrainConfig  # noqa: E402
from adaptforge.train.trainer import train  # noqa: E402

TASKS = "sst2,agnews,trec_question_type,tweet_emotion,dbpedia,subjectivity,tweet_hate,tweet_offensive,mnli"
PROBE_CS = (0.01, 0.1, 1.0, 10.0, 100.0)
PROBE_FOLDS = 5


def probe(scorer: Scorer, task: Task, seed: int) -> dict[str, float] | None:
    """Logistic regression on frozen embeddings, C by cross-validation on the training examples only."""
    try:
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import GridSearchCV, StratifiedKFold
    except ImportError:
        return None
    start = time.perf_counter()
    train_x = scorer.embed_texts([e.text for e in task.split("train")]).numpy()
    test_x = scorer.embed_texts([e.text for e in task.split("test")]).numpy()
    train_y, test_y = np.array(task.label_ids("train")), task.label_ids("test")
    folds = max(2, min(PROBE_FOLDS, int(np.bincount(train_y).max())))  # sklearn warns when a class has fewer
    search = GridSearchCV(
        LogisticRegression(max_iter=5000),
        {"C": list(PROBE_CS)},
        cv=StratifiedKFold(folds, shuffle=True, random_state=seed),
        scoring="accuracy",
    )
    search.fit(train_x, train_y)
    pred = search.predict(test_x).tolist()
    seconds = time.perf_counter() - start
    return {
        "accuracy": float(np.mean(np.array(pred) == np.array(test_y))),
        "macro_f1": macro_f1(pred, test_y, len(task.labels)),
        "C": float(search.best_params_["C"]),
        "cv_accuracy": float(search.best_score_),
        "folds": folds,
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", default=TASKS)
    parser.add_argument("--n", type=int, default=400, help="training examples per task")
    parser.add_argument("--test", type=int, default=300, help="the first rows of the test split")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--minutes", type=float, default=0, help="start no new task after this long (0: no limit)")
    args = parser.parse_args()
    backbone = Backbone.load()
    scorer = make_scorer(backbone)
    rows = []
    skipped_probe = False
    print(f"{'task':<20}{'zero':>7}{'probe':>7}{'train':>7}{'F1 probe':>9}{'F1 train':>9}{'C':>7}"
          f"{'probe s':>8}{'train s':>8}", flush=True)  # fmt: skip
    began = time.perf_counter()
    for name in args.tasks.split(","):
        if args.minutes and time.perf_counter() - began > 60 * args.minutes:
            print(f"stopped before {name}: --minutes {args.minutes:g} reached")
            break
        full = load_task(shipped_tasks_dir() / name)
        task = full.with_splits(train=full.sample("train", args.n, args.seed), test=full.split("test")[: args.test])
        zero = evaluate(scorer, task, "test")
        found = probe(scorer, task, args.seed)
        skipped_probe = skipped_probe or found is None
        torch.manual_seed(args.seed)
        result = train(task, backbone, TrainConfig(seed=args.seed))
        tuned: EvalResult = evaluate(scorer, task, "test", result.delta, adapter="train")
        row = {
            "task": name,
            "n_train": len(task.split("train")),
            "n_test": zero.n,
            "zero_shot": {"accuracy": zero.accuracy, "macro_f1": zero.macro_f1},
            "probe": found,
            "train": {"accuracy": tuned.accuracy, "macro_f1": tuned.macro_f1, "seconds": result.seconds},
        }
        rows.append(row)
        p = found or {}
        print(
            f"{name:<20}{zero.accuracy:>7.3f}{p.get('accuracy', float('nan')):>7.3f}{tuned.accuracy:>7.3f}"
            f"{p.get('macro_f1', float('nan')):>9.3f}{tuned.macro_f1:>9.3f}{p.get('C', float('nan')):>7g}"
            f"{p.get('seconds', float('nan')):>8.1f}{result.seconds:>8.1f}",
            flush=True,
        )
        if args.json:  # after every task: a stopped run keeps what it measured
            write(args, rows)
    if skipped_probe:
        print("probe skipped: scikit-learn is not installed (pip install scikit-learn); adaptforge does not need it")
    print("average accuracy: " + ", ".join(f"{k} {v:.3f}" for k, v in means(rows).items() if v is not None))


def means(rows: list[dict]) -> dict[str, float | None]:
    return {
        k: float(np.mean([r[k]["accuracy"] for r in rows])) if rows and all(r[k] for r in rows) else None
        for k in ("zero_shot", "probe", "train")
    }


def write(args: argparse.Namespace, rows: list[dict]) -> None:
    out = {"n": args.n, "test": args.test, "seed": args.seed, "probe_Cs": PROBE_CS, "rows": rows, "mean": means(rows)}
    args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
