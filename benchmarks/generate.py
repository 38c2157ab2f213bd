"""ICM-LoRA (``generate --method icm``) vs the span generator and the new-task baselines (issue 14).

The library holds one adapter per dev task (``--train`` examples, ``--epochs``, seed 0, so every task's LoRA
starts from the same initialisation, as the paper's runs of one recipe do) with ``--snapshots`` snapshots each.
Three parts, rows to ``<out>/runs.jsonl`` (skipped when present, so a run resumes):

1. Seen-task reconstruction: icm fitted on all tasks; per task, the adapter generated from k demonstrations
   of its train split, accuracy / the task's own adapter's accuracy on the same test examples.
2. New tasks, k = 16: leave-one-task-out over the dev tasks (icm and span refitted without the held-out
   task) and the related-task protocol of ``benchmarks/new_task.py`` (four tasks not in the library):
   icm vs zero-shot, retrieval, span (``generate`` there) and a LoRA trained on the 16 shots; the baselines
   run through ``new_task.run_cell``.
3. Condition ablation on seen tasks (``ablation``): each library task's test accuracy when its adapter is
   generated from another library task's 16 demonstrations (``icm_wrong_task``; task ``i`` gets task
   ``(i + 1 + seed) mod n``, a different one per seed), with the condition at the training conditions' mean
   (``icm_no_condition``: the normalised condition 0), and the mean of all training snapshots
   (``mean_snapshot``), reported against the right-task generation of part 1.
4. Cost: fit and generation seconds, generator bytes against the snapshots and the final adapters.

The generator is fitted once per held-out task (params seed 0); the benchmark seeds vary the demonstrations
(and the baselines' shots). ``--budget-minutes`` stops starting new cells after that much time.

``--icm key=value,...`` overrides icm's params (chosen on dev splits with ``benchmarks/icm_dev.py``); ``--methods``
runs only some of the new-task methods, ``--protocols`` only some parts (rows already in ``runs.jsonl`` are kept).

    python benchmarks/generate.py [--seeds 0,1,2] [--out out/generate] [--budget-minutes 38] [--methods icm,span]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from new_task import TASKS, evaluate_each, fit_generator, mean, run_cell  # noqa: E402

from adaptforge.backbone import Backbone  # noqa: E402
from adaptforge.compose import draw_shots  # noqa: E402
from adaptforge.core import LoraDelta  # noqa: E402
from adaptforge.evaluate import evaluate  # noqa: E402
from adaptforge.generate.condition import task_vector  # noqa: E402
from adaptforge.generate.icm import (  # noqa: E402
    IcmGenerator,
    IcmParams,
    IcmSamples,
    collect_icm_samples,
    flat_sizes,
    icm_key,
    unflatten,
)
from adaptforge.generate.methods import GENERATORS_DIR, IcmMethod, Obtained, folder_bytes  # noqa: E402
from adaptforge.library import Library  # noqa: E402
from adaptforge.pipelines.demo import shipped_tasks_dir  # noqa: E402
from adaptforge.pipelines.train import train_into_library  # noqa: E402
from adaptforge.scorers import Scorer, make_scorer  # noqa: E402
from adaptforge.tasks import Example, Task, load_task  # noqa: E402
from adaptforge.train.config import TrainConfig  # noqa: E402

RELATED = "movie_review,customer_review,tweet_offensive,mpqa_polarity"
# library-only tasks (issue 14, third round): more tasks for the generator to learn from; none is a related target
EXTRA = (
    "amazon,boolq,cb,qqp,rte,sni_emotion,sni_sentiment140,sni_sst2_polarity,tweet_irony,"
    "tweet_stance_abortion,tweet_stance_atheism,tweet_stance_climate,wic,yelp"
)
BASELINES = ("zero_shot", "retrieval", "generate", "shot_lora")  # "generate" is the span generator


def build_library(tasks: list[Task], backbone: Backbone, library: Library, args: argparse.Namespace) -> None:
    for task in tasks:
        name = f"{task.name}-s"
        if library.exists(name):
            continue
        t0 = time.perf_counter()
        cfg = TrainConfig(
            max_train=args.train, epochs=args.epochs, seed=0, checkpoint_every=0, snapshots=args.snapshots
        )
        train_into_library(task, backbone, library, name, cfg, eval_splits=())
        print(f"trained {name} in {time.perf_counter() - t0:.0f}s", flush=True)


def icm_params(text: str) -> IcmParams:
    """``key=value,...`` over :class:`IcmParams`' defaults (values parsed by the field's type)."""
    kinds = {f.name: str(f.type) for f in dataclasses.fields(IcmParams)}
    casts = {"int": int, "float": float, "str": str}
    return IcmParams.from_dict(
        {k: casts[kinds[k]](v) for k, v in (item.split("=", 1) for item in text.split(",") if item)}
    )


class CachedCondition:
    """``IcmMethod.condition`` with each (task, demonstrations) read once per run: the fits read every stored
    demonstration of every task, and the leave-one-out refits read the same ones again."""

    def __init__(self, scorer: Scorer, params: IcmParams) -> None:
        self.scorer, self.params, self.seen = scorer, params, {}

    def __call__(self, task: Task, shots: Sequence[Example]) -> np.ndarray:
        key = (task.name, tuple((e.text, e.label) for e in shots))
        if key not in self.seen:
            self.seen[key] = IcmMethod.condition(self.scorer, task, shots, self.params)[0]
        return self.seen[key]


def icm_for(
    library: Library, backbone: Backbone, condition: CachedCondition, held_out: str | None, params: IcmParams
) -> Obtained:
    """What ``IcmMethod.obtain`` does (same samples, fit, key and folder), with the run's cached condition."""
    return icm_from(icm_samples(library, backbone, held_out, params), library, backbone, condition, params)


def icm_samples(library: Library, backbone: Backbone, held_out: str | None, params: IcmParams) -> IcmSamples:
    return collect_icm_samples(library, backbone.fingerprint, params.tail, [held_out] if held_out else [])


def icm_from(
    samples: IcmSamples, library: Library, backbone: Backbone, condition: CachedCondition, params: IcmParams
) -> Obtained:
    folder = library.root / GENERATORS_DIR / icm_key(samples.records, params, backbone.fingerprint)
    if folder.is_dir():
        generator = IcmGenerator.load(folder)
        return Obtained(
            generator, samples.records, folder, folder_bytes(folder), samples.raw_bytes, False, samples.final_bytes
        )
    print(f"fitting icm on {len(samples.task_of)} snapshots of {len(samples.records)} adapters", flush=True)
    generator = IcmGenerator.fit(samples, condition, params)
    size = generator.save(folder)
    return Obtained(generator, samples.records, folder, size, samples.raw_bytes, True, samples.final_bytes)


def mean_snapshot(samples: IcmSamples) -> LoraDelta:
    """The mean of all training snapshots (what a decoder that ignores its inputs would return)."""
    parts = samples.x.mean(0).split(flat_sizes(samples.template))
    raw = torch.cat([p * sd + m for p, m, sd in zip(parts, samples.mean, samples.std, strict=True)])
    return unflatten(raw, samples.template)


def wrong_task(tasks: Sequence[Task], i: int, seed: int) -> Task:
    """Another library task for task ``i``: ``(i + 1 + seed) mod n``, a different one per seed."""
    return tasks[(i + 1 + seed % (len(tasks) - 1)) % len(tasks)]


def icm_cell(
    task: Task,
    k: int,
    seed: int,
    got: Obtained,
    scorer: Scorer,
    args,
    condition_task: Task | None = None,
    condition: np.ndarray | None = None,
    method: str = "icm",
) -> dict[str, Any]:
    """The adapter generated for ``task`` from k demonstrations of ``condition_task`` (default: ``task``) or from
    ``condition`` as given, scored on ``task``'s test split. With ``latent`` 'prior' z is drawn with ``seed``."""
    source = condition_task or task
    t0 = time.perf_counter()
    if condition is None:
        condition = task_vector(scorer, source, draw_shots(source, k, seed=seed).examples)
    prior = got.generator.params.latent == "prior"
    delta = got.generator.generate(condition, seed=seed if prior else None)
    gen_s = time.perf_counter() - t0
    result, correct = evaluate_each(scorer, task, delta, args.test_limit)
    return {
        "task": task.name,
        "k": k,
        "seed": seed,
        "method": method,
        "condition_task": source.name,
        "accuracy": result.accuracy,
        "macro_f1": result.macro_f1,
        "n_test": result.n,
        "fit_seconds": round(gen_s, 2),
        "generator_fit_seconds": got.generator.info.get("fit_seconds"),
        "generator_bytes": got.generator_bytes,
        "training_bytes": got.training_bytes,
        "final_bytes": got.final_bytes,
        "correct": correct,
    }


def table(rows: list[dict[str, Any]], protocol: str, tasks: list[str]) -> str:
    cell = [r for r in rows if r["protocol"] == protocol]
    zero = {t: mean([r["accuracy"] for r in cell if r["method"] == "zero_shot" and r["task"] == t]) for t in tasks}
    lines = [
        "| method | mean acc | Δ vs zero-shot | seeds | " + " | ".join(tasks) + " |",
        "|---|---|---|---|" + "---|" * len(tasks),
    ]
    for method in ("zero_shot", "retrieval", "span", "shot_lora", "icm"):
        mine = [r for r in cell if r["method"] == method]
        per = {t: mean([r["accuracy"] for r in mine if r["task"] == t]) for t in tasks}
        if not mine or any(v != v for v in per.values()):
            continue
        avg, base = mean(list(per.values())), mean(list(zero.values()))
        lines.append(
            f"| {method} | {avg * 100:.1f} | {(avg - base) * 100:+.1f} | {len({r['seed'] for r in mine})} | "
            + " | ".join(f"{per[t] * 100:.1f}" for t in tasks)
            + " |"
        )
    return "\n".join(lines)


def per_seed_means(rows: list[dict[str, Any]], protocol: str, method: str, tasks: list[str]) -> dict[int, float]:
    """Mean accuracy over ``tasks`` per seed (seeds where every task has a row); a method that does not depend on
    the seed (zero-shot, span) ran seed 0 only and stands for every seed."""
    mine = [r for r in rows if r["protocol"] == protocol and r["method"] == method]
    out = {}
    for seed in sorted({r["seed"] for r in mine}):
        accs = {r["task"]: r["accuracy"] for r in mine if r["seed"] == seed}
        if all(t in accs for t in tasks):
            out[seed] = mean([accs[t] for t in tasks])
    return out


def icm_beats_span(rows: list[dict[str, Any]], protocol: str, tasks: list[str]) -> tuple[bool, str]:
    """The default rule (issue 14, written before the third round's numbers): icm beats span in a protocol when,
    with ``d_s`` = icm's minus span's mean accuracy at seed ``s``, every ``d_s > 0`` and ``mean(d_s)`` exceeds the
    seed-to-seed noise, the larger of the two methods' standard deviations (ddof 1) of their per-seed means.
    ``icm`` becomes the default of ``adaptforge generate`` only if it beats span in both protocols."""
    icm, span = per_seed_means(rows, protocol, "icm", tasks), per_seed_means(rows, protocol, "span", tasks)
    if not icm or not span:
        return False, "missing rows"
    d = [icm[s] - span.get(s, span[min(span)]) for s in icm]
    spread = [float(np.std(list(v.values()), ddof=1)) if len(v) > 1 else 0.0 for v in (icm, span)]
    noise, margin = max(spread), mean(d)
    won = len(d) > 1 and min(d) > 0 and margin > noise
    return won, (
        f"icm - span = {margin * 100:+.1f} points (per seed {', '.join(f'{x * 100:+.1f}' for x in d)}), "
        f"seed-to-seed noise {noise * 100:.1f}: {'beats' if won else 'does not beat'} span"
    )


def margin_errors(rows: list[dict[str, Any]], protocol: str, tasks: list[str], method: str, versus: str) -> str:
    """``method``'s mean accuracy minus ``versus``'s over ``tasks`` (each averaged over its seeds), with the test
    sampling standard error: paired, from the per-example differences on the same test examples where both rows
    record which examples were right (``correct``; the seeds' answers averaged per example first, since every
    seed scores the same examples), else binomial and unpaired, ``sqrt(sum_t p(1-p)/n) / T`` for each method.
    The seeds change only the demonstrations, so the seed-to-seed deviation leaves this error out."""
    cell = [r for r in rows if r["protocol"] == protocol]
    diffs, var_paired, var_unpaired, paired = [], 0.0, 0.0, True
    for t in tasks:
        a = [r for r in cell if r["method"] == method and r["task"] == t]
        b = [r for r in cell if r["method"] == versus and r["task"] == t]
        if not a or not b:
            return f"{method} - {versus}: missing rows"
        pa, pb = mean([r["accuracy"] for r in a]), mean([r["accuracy"] for r in b])
        n = a[0]["n_test"]
        diffs.append(pa - pb)
        var_unpaired += (pa * (1 - pa) / n + pb * (1 - pb) / n) / len(tasks) ** 2
        if all("correct" in r for r in a + b):
            ca = np.mean([[int(c) for c in r["correct"]] for r in a], axis=0)
            cb = np.mean([[int(c) for c in r["correct"]] for r in b], axis=0)
            var_paired += float(np.var(ca - cb, ddof=1)) / len(ca) / len(tasks) ** 2
        else:
            paired = False
    text = f"{method} - {versus} = {mean(diffs) * 100:+.1f} points, unpaired binomial SE {var_unpaired**0.5 * 100:.1f}"
    return text + (f", paired SE {var_paired**0.5 * 100:.1f}" if paired else " (no per-example rows to pair)")


def ablation_report(rows: list[dict[str, Any]], seen: list[str]) -> list[str]:
    """Seen-task accuracy per condition against the right-task generation, over the tasks every condition has;
    per seed where the condition depends on it. The bar: the wrong-task vector drops it by >= 5 points."""
    right = {(r["task"], r["seed"]): r["accuracy"] for r in rows if r["protocol"] == "reconstruction"}
    abl = [r for r in rows if r["protocol"] == "ablation"]
    if not abl:
        return []
    tasks = [t for t in seen if any(r["task"] == t for r in abl) and any(k[0] == t for k in right)]
    right_mean = mean([mean([v for (t2, _), v in right.items() if t2 == t]) for t in tasks])
    out = [f"### Condition ablation on seen tasks ({len(tasks)} tasks, test accuracy, mean over tasks)", ""]
    out += ["| condition | mean acc | Δ vs right task | per seed Δ | tasks down >= 5 |", "|---|---|---|---|---|"]
    own = mean([mean([r["own_accuracy"] for r in abl if r["task"] == t]) for t in tasks])
    out.append(f"| own adapter | {own * 100:.1f} | {(own - right_mean) * 100:+.1f} | | |")
    out.append(f"| icm, right task (reconstruction) | {right_mean * 100:.1f} | +0.0 | | |")
    for method, label in (
        ("icm_wrong_task", "icm, another task's vector"),
        ("icm_no_condition", "icm, no condition (normalised 0)"),
        ("mean_snapshot", "mean of all snapshots"),
    ):
        mine = [r for r in abl if r["method"] == method and r["task"] in tasks]
        if not mine:
            continue
        per_seed = []
        for seed in sorted({r["seed"] for r in mine}):
            cell = {r["task"]: r["accuracy"] for r in mine if r["seed"] == seed}
            ref = {t: right.get((t, seed), mean([v for (t2, _), v in right.items() if t2 == t])) for t in cell}
            per_seed.append(mean([cell[t] - ref[t] for t in cell]))
        acc = {t: mean([r["accuracy"] for r in mine if r["task"] == t]) for t in tasks}
        ref_t = {t: mean([v for (t2, _), v in right.items() if t2 == t]) for t in tasks}
        down = sum(acc[t] - ref_t[t] <= -0.05 for t in tasks)
        avg = mean(list(acc.values()))
        out.append(
            f"| {label} | {avg * 100:.1f} | {(avg - right_mean) * 100:+.1f} | "
            f"{', '.join(f'{d * 100:+.1f}' for d in per_seed)} | {down} of {len(tasks)} |"
        )
    return out


def report(rows: list[dict[str, Any]], dev: list[str], related: list[str], extra: Sequence[str] = ()) -> str:
    recon = [r for r in rows if r["protocol"] == "reconstruction"]
    out = ["### Seen-task reconstruction (icm accuracy / the task's own adapter, same test examples)", ""]
    out += ["| task | own adapter | icm | ratio | seeds |", "|---|---|---|---|---|"]
    ratios, ratios_dev = [], []
    for t in [*dev, *extra]:
        mine = [r for r in recon if r["task"] == t]
        if not mine:
            continue
        own, gen = mean([r["own_accuracy"] for r in mine]), mean([r["accuracy"] for r in mine])
        ratios.append(gen / own)
        if t in dev:
            ratios_dev.append(gen / own)
        out.append(f"| {t} | {own * 100:.1f} | {gen * 100:.1f} | {gen / own:.3f} | {len(mine)} |")
    out.append(f"| **mean** ({len(ratios)} tasks) | | | **{mean(ratios):.3f}** | |")
    if extra and ratios_dev:
        out.append(f"| mean of the {len(ratios_dev)} dev tasks | | | {mean(ratios_dev):.3f} | |")
    out += ["", *ablation_report(rows, [*dev, *extra])]
    out += ["", "### Leave-one-task-out, k = 16", "", table(rows, "loo", dev)]
    out += ["", "### Related new tasks, k = 16", "", table(rows, "related", related)]
    verdicts = [icm_beats_span(rows, "loo", dev), icm_beats_span(rows, "related", related)]
    out += ["", "### Default rule (icm vs span, both protocols)", ""]
    out += [f"- leave-one-out: {verdicts[0][1]}", f"- related: {verdicts[1][1]}"]
    out.append(f"- icm {'becomes' if all(v[0] for v in verdicts) else 'does not become'} the default")
    out += ["", "### Margins with test sampling error (200 test examples per task)", ""]
    for protocol, names in (("loo", dev), ("related", related)):
        for versus in ("span", "zero_shot"):
            out.append(f"- {protocol}: {margin_errors(rows, protocol, names, 'icm', versus)}")
    icm = [r for r in rows if r["method"] == "icm"]
    if icm:
        fits = {(r["generator_fit_seconds"], r["training_bytes"]): r for r in icm}  # one row per fitted generator
        out += [
            "",
            "### Cost",
            "",
            f"- icm generator fit: {mean([r['generator_fit_seconds'] or 0 for r in fits.values()]):.1f} s (mean over "
            f"{len(fits)} fits); "
            f"generation (task vector + decode): {mean([r['fit_seconds'] for r in icm]):.2f} s",
            f"- icm generator {mean([r['generator_bytes'] for r in fits.values()]) / 1e6:.2f} MB vs "
            f"{mean([r['training_bytes'] for r in fits.values()]) / 1e6:.2f} MB of snapshots it learned from "
            f"({100 * mean([r['generator_bytes'] / r['training_bytes'] for r in fits.values()]):.1f}%)",
        ]
        finals = [r for r in fits.values() if r.get("final_bytes")]
        if finals:
            out.append(
                f"- against the final adapters of the same tasks: {mean([r['final_bytes'] for r in finals]) / 1e6:.2f}"
                f" MB ({100 * mean([r['generator_bytes'] / r['final_bytes'] for r in finals]):.1f}%)"
            )
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", default=TASKS)
    parser.add_argument(
        "--extra-tasks", default="", help=f"library-only tasks under --data (held out nowhere); e.g. {EXTRA}"
    )
    parser.add_argument("--related", default=RELATED, help="tasks not in the library, folders under --data")
    parser.add_argument("--data", type=Path, default=Path("../shared/data/tasks"))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--train", type=int, default=200, help="training examples per library adapter")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--snapshots", type=int, default=30)
    parser.add_argument("--candidates", type=int, default=30)
    parser.add_argument("--test-limit", type=int, default=200)
    parser.add_argument("--budget-minutes", type=float, default=38.0)
    parser.add_argument("--stop-at", default=None, help="UTC HH:MM after which no new cell starts (a wall-clock end)")
    parser.add_argument("--out", type=Path, default=Path("out/generate"))
    parser.add_argument(
        "--methods",
        default="icm,zero_shot,retrieval,span,shot_lora",
        help="new-task methods to run (the baselines do not depend on icm's params)",
    )
    parser.add_argument(
        "--protocols",
        default="related,loo,reconstruction,ablation",
        help="parts to run: new tasks (related, loo), seen tasks (reconstruction, ablation)",
    )
    parser.add_argument("--icm", default="", help="icm params over the defaults, key=value,... (chosen on dev)")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    dev = [load_task(shipped_tasks_dir() / n) for n in args.tasks.split(",")]
    related = [load_task(args.data / n) for n in args.related.split(",")]
    extra = [load_task(args.data / n) for n in args.extra_tasks.split(",") if n]
    clash = {t.name for t in extra} & {t.name for t in dev + related}
    if clash:
        parser.error(f"--extra-tasks {sorted(clash)} are also dev or related tasks")
    log_path = args.out / "runs.jsonl"
    rows = [json.loads(line) for line in log_path.read_text().splitlines()] if log_path.is_file() else []
    names_dev, names_rel = [t.name for t in dev], [t.name for t in related]
    if args.report_only:
        print(report(rows, names_dev, names_rel, [t.name for t in extra]))
        return
    start = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    backbone = Backbone.load()
    scorer = make_scorer(backbone)
    library = Library(args.out / "library")
    build_library(dev + extra, backbone, library, args)
    done = {(r["protocol"], r["task"], r["seed"], r["method"]) for r in rows}
    k = args.shots

    def emit(row: dict[str, Any]) -> None:
        rows.append(row)
        with log_path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(
            f"[{time.perf_counter() - start:6.0f}s] {row['protocol']:<14} {row['task']:<20} seed {row['seed']} "
            f"{row['method']:<10} acc {row['accuracy']:.3f}",
            flush=True,
        )

    stop_at = None
    if args.stop_at:
        now = datetime.datetime.now(datetime.UTC)
        hh, mm = (int(x) for x in args.stop_at.split(":"))
        stop_at = now.replace(hour=hh, minute=mm, second=0, microsecond=0)
        stop_at += datetime.timedelta(days=1) if stop_at < now - datetime.timedelta(hours=12) else datetime.timedelta()

    def over_budget() -> bool:
        late = stop_at is not None and datetime.datetime.now(datetime.UTC) > stop_at
        return late or (time.perf_counter() - start) / 60 > args.budget_minutes

    seeds = [int(s) for s in args.seeds.split(",")]
    params = icm_params(args.icm)
    methods = set(args.methods.split(","))
    protocols = set(args.protocols.split(","))
    own_accs: dict[str, float] = {}
    condition = CachedCondition(scorer, params)
    print(f"icm params: {params.to_dict()}", flush=True)
    for seed in seeds:
        if over_budget():
            break
        samples = icm_samples(library, backbone, None, params) if "icm" in methods else None
        full = icm_from(samples, library, backbone, condition, params) if samples is not None else None
        for protocol, held in (("related", related), ("loo", dev)):  # 2. new tasks
            if protocol not in protocols:
                continue
            for task in held:
                if over_budget():
                    break
                got = full if protocol == "related" else None
                for method in ("icm", *BASELINES):
                    if ("span" if method == "generate" else method) not in methods:
                        continue
                    if (protocol, task.name, seed, "span" if method == "generate" else method) in done:
                        continue
                    if method in ("zero_shot", "generate") and seed != seeds[0]:
                        continue  # neither depends on the seed (span: fitted with seed 0, decodes z = 0)
                    if method == "icm":
                        got = got or icm_for(library, backbone, condition, task.name, params)
                        row = icm_cell(task, k, seed, got, scorer, args)
                    else:
                        exclude = task.name if protocol == "loo" else "-"
                        gens = {task.name: fit_generator(library, backbone, exclude, 0)} if method == "generate" else {}
                        row = run_cell(
                            method,
                            task,
                            0 if method in ("zero_shot", "generate") else k,
                            seed,
                            library,
                            backbone,
                            scorer,
                            gens,
                            args,
                        )
                        row["method"] = "span" if method == "generate" else method
                    emit({"protocol": protocol, **row})
        # 1. reconstruction, every library task (after the new tasks, which decide the default)
        seen = dev + extra
        for i, task in enumerate(seen if full is not None and samples is not None else ()):
            if over_budget():
                break
            if task.name not in own_accs:  # the same for every seed
                own, _ = library.load(f"{task.name}-s")
                own_accs[task.name] = evaluate(scorer, task, "test", own, limit=args.test_limit).accuracy
            own_acc = own_accs[task.name]
            if "reconstruction" in protocols and ("reconstruction", task.name, seed, "icm") not in done:
                row = icm_cell(task, k, seed, full, scorer, args)
                emit({"protocol": "reconstruction", **row, "own_accuracy": own_acc})
            if "ablation" not in protocols:
                continue
            # 3. condition ablation: another task's demonstrations; no condition; the mean snapshot
            cells = [("icm_wrong_task", seed)]
            prior = full.generator.params.latent == "prior"
            if seed == seeds[0] or prior:  # without z sampling neither depends on the seed
                cells += [("icm_no_condition", seed)]
            if seed == seeds[0]:
                cells += [("mean_snapshot", seed)]
            for method, s_ in cells:
                if ("ablation", task.name, s_, method) in done:
                    continue
                if method == "icm_wrong_task":
                    other = wrong_task(seen, i, s_)
                    row = icm_cell(task, k, s_, full, scorer, args, condition_task=other, method=method)
                elif method == "icm_no_condition":
                    c_mean = full.generator.cvae.c_mean.numpy()
                    row = icm_cell(task, k, s_, full, scorer, args, condition=c_mean, method=method)
                else:
                    result, correct = evaluate_each(scorer, task, mean_snapshot(samples), args.test_limit)
                    row = {"task": task.name, "k": 0, "seed": s_, "method": method, "accuracy": result.accuracy}
                    row |= {"macro_f1": result.macro_f1, "n_test": result.n, "correct": correct}
                emit({"protocol": "ablation", **row, "own_accuracy": own_acc})
    text = report(rows, names_dev, names_rel, [t.name for t in extra])
    (args.out / "report.md").write_text(text + "\n")
    print(text)
    print(f"total {time.perf_counter() - start:.0f}s", flush=True)


if __name__ == "__main__":
    main()
