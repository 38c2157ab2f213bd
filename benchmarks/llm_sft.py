"""SFT adapters on the embedded LLM (SmolLM2-135M-Instruct): exact match of the base vs the adapter per task.

python benchmarks/llm_sft.py [--tasks arith_add,country_capital,word_reverse,sni_emotion,sni_sst2_polarity]
    [--max-train 300] [--epochs 2] [--test 100] [--split test|dev] [--precision fp32|bf16]
    [--targets q_proj,k_proj,...] [--threads 2] [--json FILE] [--tasks-dir DIR]

Per task: the base model's greedy answers on the first ``--test`` test examples (sampled with seed 0), then
an SFT adapter (``--max-train`` training examples, ``--epochs`` epochs, the trainer's LoRA defaults for the
LLaMA family: rank 8 on q/k/v/o and gate/up/down) and its answers on the same examples. Exact match (case, surrounding
punctuation and whitespace ignored), ROUGE-L and the mean response NLL per token for both, training
tokens/s and wall times.

Tasks: the three shipped generation tasks (programmatic: ``arith_add``, ``country_capital``,
``word_reverse``) and real Super-NaturalInstructions tasks from ``shared/data/tasks`` read as generation
tasks, as SNI states them: the definition is the instruction, the input the prompt, the output (a label word)
the response (``sni_*``; their answers are short label words, so they test format and skill, not long-form
writing). The settings are fixed before the run (lr 1e-3, batch 8, max length 256, 16 new tokens); nothing
is chosen on the test examples.

``--tasks-dir DIR`` also resolves task names under DIR (e.g. ``benchmarks/data/sni``, the capped
Super-NaturalInstructions generation tasks; ``--tasks-dir sni`` is short for it), after the two roots above.

``--split dev`` scores the dev split instead (what choices of settings are made on); ``--precision`` and
``--targets`` set the trainer's (defaults: the trainer's own).

Bar (issue 29): on at least 4 tasks, the adapter gains >= 30 exact-match points over the base on 3 of them.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from adaptforge.backbone import Backbone  # noqa: E402
from adaptforge.generation import evaluate_generation  # noqa: E402
from adaptforge.tasks import Task, load_task  # noqa: E402
from adaptforge.train.config import TrainConfig  # noqa: E402
from adaptforge.train.trainer import train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "src" / "adaptforge" / "data" / "tasks"
SHARED = ROOT.parent / "shared" / "data" / "tasks"
SNI = ROOT / "benchmarks" / "data" / "sni"
DEFAULT_TASKS = "arith_add,country_capital,word_reverse,sni_emotion,sni_sst2_polarity"
SETTINGS = {"lr": 1e-3, "batch_size": 8, "max_length": 256, "max_new_tokens": 16}


def as_generation(task: Task) -> Task:
    """A classification task as SNI states it: the label word is the answer to generate."""
    if task.generative:
        return task
    return Task(
        task.name,
        task.description,
        (),
        dict(task.splits),
        source=task.source,
        license=task.license,
        task_type="generation",
    )


def load(name: str, extra: Path | None = None) -> Task:
    roots = (SHIPPED, SHARED) + ((extra,) if extra else ())
    for root in roots:
        if (root / name / "task.json").is_file():
            return as_generation(load_task(root / name))
    where = f"{SHIPPED.name}/, shared/data/tasks/" + (f" or {extra}" if extra else "")
    raise SystemExit(f"error: task {name!r} is in none of {where}")


def run_task(backbone: Backbone, task: Task, args: argparse.Namespace) -> dict:
    limit, new, split = args.test, SETTINGS["max_new_tokens"], args.split
    start = time.perf_counter()
    base = evaluate_generation(backbone, task, split, limit=limit, max_new_tokens=new, max_length=256)
    base_s = time.perf_counter() - start
    cfg = TrainConfig(
        max_train=args.max_train,
        epochs=args.epochs,
        batch_size=SETTINGS["batch_size"],
        lr=SETTINGS["lr"],
        max_length=SETTINGS["max_length"],
        checkpoint_every=0,
        seed=args.seed,
        **({"precision": args.precision} if args.precision else {}),
        targets=tuple(args.targets.split(",")) if args.targets else None,
    )
    result = train(task, backbone, cfg)
    start = time.perf_counter()
    tuned = evaluate_generation(
        backbone, task, split, delta=result.delta, adapter="sft", limit=limit, max_new_tokens=new, max_length=256
    )
    return {
        "task": task.name,
        "source": task.source,
        "split": split,
        "n_test": base.n,
        "precision": result.config.precision,
        "targets": list(result.config.targets or ()),
        "n_train": result.n_train,
        "base": base.metric_values(),
        "sft": tuned.metric_values(),
        "gain_em_points": 100 * (tuned.exact_match - base.exact_match),
        "train_seconds": result.seconds,
        "train_tokens_per_second": result.tokens_per_second,
        "eval_seconds": {"base": base_s, "sft": time.perf_counter() - start},
    }


def print_table(rows: list[dict]) -> None:
    print("| task | n test | base EM | SFT EM | gain (points) | base ROUGE-L | SFT ROUGE-L | train tok/s | train s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['task']} | {r['n_test']} | {r['base']['exact_match']:.2f} | {r['sft']['exact_match']:.2f} | "
            f"{r['gain_em_points']:+.0f} | {r['base']['rouge_l']:.2f} | {r['sft']['rouge_l']:.2f} | "
            f"{r['train_tokens_per_second']:.0f} | {r['train_seconds']:.0f} |"
        )
    wins = sum(r["gain_em_points"] >= 30 for r in rows)
    met = len(rows) >= 4 and wins >= 3
    print(f"bar: >= 30 EM points on 3 of >= 4 tasks: {wins} of {len(rows)}: {'met' if met else 'NOT met'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", type=Path, nargs="+", help="only print the table of these result files")
    parser.add_argument("--tasks", default=DEFAULT_TASKS)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--max-train", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--test", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", default="test", choices=("test", "dev"))
    parser.add_argument("--precision", choices=("fp32", "bf16"), help="default: the trainer's")
    parser.add_argument("--targets", help="comma-separated LoRA targets; default: the trainer's for the model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--tasks-dir", type=Path, help="another folder of task folders ('sni': benchmarks/data/sni)")
    args = parser.parse_args()
    if args.table:
        print_table([row for path in args.table for row in json.loads(path.read_text())["rows"]])
        return
    torch.set_num_threads(args.threads)
    extra = SNI if args.tasks_dir == Path("sni") else args.tasks_dir
    tasks = [load(name, extra) for name in args.tasks.split(",")]
    backbone = Backbone.load(args.model)
    rows = []
    for task in tasks:
        row = run_task(backbone, task, args)
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.json:  # after every task, so a long run that is stopped keeps what it measured
            settings = {**SETTINGS, **vars(args), "json": None, "table": None}
            args.json.write_text(json.dumps({"settings": settings, "rows": rows}, indent=2, default=str) + "\n")
    print_table(rows)


if __name__ == "__main__":
    main()
