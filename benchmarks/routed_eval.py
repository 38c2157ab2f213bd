"""Routed evaluation (DaWin, Arrow) side by side with plain evaluation of one adapter, on the embedded MiniLM.

python benchmarks/routed_eval.py [--tasks trec_question_type,dbpedia] [--n 300] [--adapters 2] [--threads 1]
    [--repeats 3] [--json out.json]

``--adapters`` rank-8 LoRA adapters with random factors on the default targets (every projection; cost does not
depend on the values) are scored on the first ``--n`` test examples of each shipped task (seeded
label-stratified sample, as ``adaptforge eval --limit`` picks them). Timed, each the median of ``--repeats``,
in one process on ``--threads`` torch threads, start-up excluded:

* plain: ``evaluate`` of one adapter (merged into the weights, batched passes): the unit of the bar;
* DaWin: ``EntropyRouter.evaluate``, split into its routing passes (one plain pass per adapter) and the mixed
  pass (per-row coefficients, labels embedded under each input's own merge: ``adaptforge.lora.rows``);
* Arrow: ``ArrowRouter.evaluate`` (per-token gates, top-k = adapters);
* before: the per-example loop routed evaluation ran until 2026-12-07 (one forward per input and one for its
  labels under that input's coefficients), timed once; its logits against the batched path's give the parity.

Bar (issue 34): routed evaluation of n examples costs at most (adapters + 2) plain passes over them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from adaptforge.backbone import Backbone  # noqa: E402
from adaptforge.batching import make_batch  # noqa: E402
from adaptforge.compose.arrow import ArrowRouter  # noqa: E402
from adaptforge.core import LoraDelta, LoraModule  # noqa: E402
from adaptforge.evaluate import evaluate  # noqa: E402
from adaptforge.lora.hooks import LoraMixture, eval_mode  # noqa: E402
from adaptforge.lora.rows import mixed_logits  # noqa: E402
from adaptforge.merge.dawin import EntropyRouter  # noqa: E402
from adaptforge.pipelines.demo import shipped_tasks_dir  # noqa: E402
from adaptforge.scorers import Scorer, make_scorer  # noqa: E402
from adaptforge.tasks import Example, Task, load_task  # noqa: E402


def random_adapters(backbone: Backbone, n: int, rank: int = 8, seed: int = 0) -> list[LoraDelta]:
    shapes = backbone.target_shapes()
    gen = torch.Generator().manual_seed(seed)
    return [
        LoraDelta(
            {
                m: LoraModule(
                    A=torch.randn(rank, fan_in, generator=gen) / fan_in**0.5,
                    B=torch.randn(fan_out, rank, generator=gen) * 0.05,
                    scale=2.0,
                )
                for m, (fan_out, fan_in) in shapes.items()
            }
        )
        for _ in range(n)
    ]


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


@torch.no_grad()
def per_example(
    scorer: Scorer, task: Task, deltas: list[LoraDelta], examples: list[Example], coefs: torch.Tensor
) -> torch.Tensor:
    """The former path: one forward per input, and one for its labels, under that input's coefficients."""
    model = scorer.backbone.model
    encoded, labels = scorer.encode(task, examples), scorer.encode_labels(task)
    out = torch.empty(len(examples), len(task.labels))
    n_modules = len(deltas[0])
    with eval_mode(model), LoraMixture(model, deltas, torch.zeros(n_modules, len(deltas))) as mixture:
        for j in range(len(examples)):
            mixture.set_coefficients(coefs[j].float().expand(n_modules, -1))
            out[j] = scorer.logits(model, make_batch(encoded, [j]), scorer.label_context(model, labels))[0]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", default="trec_question_type,dbpedia")
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--adapters", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-before", action="store_true", help="do not time the former per-example loop")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    backbone = Backbone.load()
    scorer = make_scorer(backbone)
    deltas = random_adapters(backbone, args.adapters)
    dawin = EntropyRouter(deltas, temperature=0.1)
    arrow = ArrowRouter(deltas, top_k=len(deltas))
    rows = []
    for name in args.tasks.split(","):
        task = load_task(shipped_tasks_dir() / name)
        examples = task.sample("test", args.n, seed=0)
        n = len(examples)
        evaluate(scorer, task, "test", deltas[0], limit=args.n)  # warm-up
        t_plain, _ = timed(lambda task=task: evaluate(scorer, task, "test", deltas[0], limit=args.n), args.repeats)
        t_dawin, _ = timed(lambda task=task: dawin.evaluate(scorer, task, "test", args.n), args.repeats)
        t_route, coefs = timed(lambda task=task, ex=examples: dawin.route(scorer, task, ex), args.repeats)
        t_mixed, batched = timed(
            lambda task=task, ex=examples, c=coefs: mixed_logits(scorer, task, deltas, ex, c), args.repeats
        )
        t_arrow, _ = timed(lambda task=task: arrow.evaluate(scorer, task, "test", args.n), args.repeats)
        row: dict[str, Any] = {
            "task": name,
            "labels": len(task.labels),
            "n": n,
            "plain_s": t_plain,
            "dawin_s": t_dawin,
            "dawin_routing_s": t_route,
            "dawin_mixed_s": t_mixed,
            "arrow_s": t_arrow,
            "dawin_over_plain": t_dawin / t_plain,
            "arrow_over_plain": t_arrow / t_plain,
            "bar": args.adapters + 2,
        }
        if not args.skip_before:
            t_before, before = timed(lambda t=task, ex=examples, c=coefs: per_example(scorer, t, deltas, ex, c), 1)
            row["before_dawin_s"] = t_before + t_route
            row["max_abs_logit_diff"] = float((before - batched).abs().max())
        rows.append(row)
        print(json.dumps(row), flush=True)
    setting = f"MiniLM, {args.adapters} random rank-8 adapters (default targets), {args.threads} thread(s), " + (
        f"median of {args.repeats}"
    )
    print(f"\n{setting}\n")
    print(
        "| task (labels) | n | plain s | DaWin s (routing + mixed) | DaWin / plain | Arrow s | Arrow / plain "
        "| before: per-example DaWin s | max abs logit diff |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        before = f"{r['before_dawin_s']:.2f}" if "before_dawin_s" in r else "-"
        diff = f"{r['max_abs_logit_diff']:.1e}" if "max_abs_logit_diff" in r else "-"
        print(
            f"| {r['task']} ({r['labels']}) | {r['n']} | {r['plain_s']:.2f} | {r['dawin_s']:.2f} "
            f"({r['dawin_routing_s']:.2f} + {r['dawin_mixed_s']:.2f}) | {r['dawin_over_plain']:.2f}x "
            f"| {r['arrow_s']:.2f} | {r['arrow_over_plain']:.2f}x | {before} | {diff} |"
        )
    if args.json:
        args.json.write_text(json.dumps({"setting": setting, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
