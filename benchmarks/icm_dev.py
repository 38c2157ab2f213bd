"""Diagnose ICM-LoRA on the library ``benchmarks/generate.py`` builds, and compare variants on dev splits only.

Per variant (``--variant name:key=value,key=value``, keys are :class:`IcmParams` fields):

- condition separation: centred cosine of task vectors within a task (different 16-demonstration draws) and
  between tasks, and the ratio of between-task to within-task variance;
- fit: final reconstruction MSE and KL, active latent units (variance of the posterior mean over samples > 0.01);
- decoder use of the condition: spread of the decoded adapters over the tasks' conditions (z = 0) divided by
  the spread of the tasks' real snapshot means (1: as task-specific as the data; 0: one adapter for all), and of
  z: distance between decodes at z ~ N(0, I) and z = 0, relative to the same data spread;
- seen-task reconstruction on **dev** splits: generated adapter (condition from 16 demonstrations of the train
  split) / the task's own adapter;
- leave-one-out on **dev** splits (``--loo``): the generator refitted without the task, vs zero-shot;
- related tasks on **dev** splits (``--related``): the generator fitted on the whole library (which must not
  hold them), conditioned on 16 train-split demonstrations, vs zero-shot;
- with ``--ablation``, the condition ablation on **dev** splits: each library task's adapter generated from the
  next library task's 16 train-split demonstrations (``wrong_dev_drop``: right-task dev accuracy minus that, points,
  mean over tasks) and with the normalised condition 0 (``nocond_dev_drop``); and the saved generator's bytes;
- with ``--scales``, the same seen, related and leave-one-out cells again with the generated adapter's ``dW``
  multiplied by each scale (the same fitted generators; a hint for new tasks, whose decodes are near the
  average adapter, chosen by :func:`select_scale`).

``--extra-tasks`` names the library-only tasks (under ``--data``) that ``benchmarks/generate.py --extra-tasks``
trained; their seen-task ratios count in the mean.

Nothing here reads a test split.

    python benchmarks/icm_dev.py --out out/generate --variant base: --variant white:condition_norm=whiten
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from generate import RELATED  # noqa: E402
from new_task import TASKS  # noqa: E402

from adaptforge.backbone import Backbone  # noqa: E402
from adaptforge.compose import draw_shots  # noqa: E402
from adaptforge.evaluate import evaluate  # noqa: E402
from adaptforge.generate.condition import task_vector  # noqa: E402
from adaptforge.generate.icm import IcmGenerator, IcmParams, collect_icm_samples, draw  # noqa: E402
from adaptforge.library import Library  # noqa: E402
from adaptforge.merge.interp import scale_delta  # noqa: E402
from adaptforge.pipelines.demo import shipped_tasks_dir  # noqa: E402
from adaptforge.scorers import make_scorer  # noqa: E402
from adaptforge.tasks import Example, Task, load_task  # noqa: E402


def parse_variant(text: str) -> tuple[str, dict[str, object]]:
    name, _, rest = text.partition(":")
    fields = {f.name: f.type for f in IcmParams.__dataclass_fields__.values()}
    out: dict[str, object] = {}
    for item in filter(None, rest.split(",")):
        key, value = item.split("=")
        kind = fields[key]
        out[key] = {"int": int, "float": float, "str": str, "bool": lambda v: v == "1"}[str(kind)](value)
    return name, out


def centred_cosines(vectors: dict[str, list[np.ndarray]]) -> dict[str, float]:
    allv = np.concatenate([np.stack(v) for v in vectors.values()])
    mean = allv.mean(0)
    names = list(vectors)
    unit = {n: [(v - mean) / np.linalg.norm(v - mean) for v in vs] for n, vs in vectors.items()}
    within, between = [], []
    for i, a in enumerate(names):
        for p in range(len(unit[a])):
            for q in range(p + 1, len(unit[a])):
                within.append(float(unit[a][p] @ unit[a][q]))
        for b in names[i + 1 :]:
            between += [float(u @ w) for u in unit[a] for w in unit[b]]
    task_means = np.stack([np.stack(v).mean(0) for v in vectors.values()])
    var_between = float(((task_means - mean) ** 2).sum(1).mean())
    var_within = float(np.mean([((np.stack(v) - np.stack(v).mean(0)) ** 2).sum(1).mean() for v in vectors.values()]))
    rawcos = [
        float(v @ w / np.linalg.norm(v) / np.linalg.norm(w))
        for a in names
        for b in names
        if a < b
        for v in vectors[a][:1]
        for w in vectors[b][:1]
    ]
    return {
        "raw_cos_between": round(float(np.mean(rawcos)), 4),
        "centred_cos_within": round(float(np.mean(within)), 4),
        "centred_cos_between": round(float(np.mean(between)), 4),
        "var_between_over_within": round(var_between / max(var_within, 1e-12), 3),
    }


def pairwise(rows: torch.Tensor) -> float:
    return float(torch.pdist(rows).mean())


def select(rows: list[dict]) -> str:
    """The rule fixed before any result was seen. Rows with a new-task number (third round: ``new_dev_mean_delta``,
    the mean dev delta vs zero-shot over every leave-one-out and related cell, each cell weighted equally; earlier
    rounds: ``loo_dev_mean_delta``): among those whose seen-task dev ratio reaches 0.95 (the bar), the best new-task
    delta; if none reaches 0.95, the best seen-task dev ratio. Returns its ``key=value,...``."""
    key = "new_dev_mean_delta" if any("new_dev_mean_delta" in r for r in rows) else "loo_dev_mean_delta"
    candidates = [r for r in rows if key in r]
    passing = [r for r in candidates if r["seen_dev_mean"] >= 0.95]
    best = max(passing, key=lambda r: r[key]) if passing else max(candidates, key=lambda r: r["seen_dev_mean"])
    return ",".join(f"{k}={v}" for k, v in best["params"].items())


def select_scale(row: dict) -> float:
    """The scale rule (issue 14, fourth round), fixed before any scaled row was seen, applied to the chosen
    variant's row: a scale other than 1 is chosen only if its new-task mean dev delta beats scale 1's by at least
    1.0 point (7 cells of 100 dev examples: smaller gains are noise) while its seen-task dev ratio stays within
    0.02 of scale 1's; among those, the best new-task delta. Otherwise 1."""
    base = {"new_dev_mean_delta": row["new_dev_mean_delta"], "seen_dev_mean": row["seen_dev_mean"]}
    ok = {
        float(a): r
        for a, r in row.get("scales", {}).items()
        if r["new_dev_mean_delta"] >= base["new_dev_mean_delta"] + 1.0
        and r["seen_dev_mean"] >= base["seen_dev_mean"] - 0.02
    }
    return max(ok, key=lambda a: ok[a]["new_dev_mean_delta"]) if ok else 1.0


def select_decoder(rows: list[dict]) -> str:
    """The decoder rule (issue 32), fixed before its rows were seen: a variant qualifies with a seen-task dev ratio
    >= 0.95 and a wrong-task dev drop >= 5 points. Among the qualifying, the best related dev mean delta; variants
    within 1.0 point of it count as tied, and among those the smallest generator wins. If none qualifies, the
    current decoder at its defaults (``pca``, z = 0; the row with empty params). Returns the variant's name."""
    ok = [r for r in rows if r["seen_dev_mean"] >= 0.95 and r.get("wrong_dev_drop", 0) >= 5]
    if not ok:
        return next(r["variant"] for r in rows if not r["params"])
    best = max(r["related_dev_mean_delta"] for r in ok)
    tied = [r for r in ok if r["related_dev_mean_delta"] >= best - 1.0]
    return min(tied, key=lambda r: (r["generator_bytes"], -r["related_dev_mean_delta"]))["variant"]


def dev_cells(
    ratios: dict[str, float], rel: dict[str, float], loo: dict[str, float], with_related: bool
) -> dict[str, object]:
    """A variant's dev numbers at one scale: seen ratios, related and leave-one-out deltas, their means."""
    out: dict[str, object] = {
        "seen_dev_ratio": ratios,
        "seen_dev_mean": round(float(np.mean(list(ratios.values()))), 3),
        "seen_dev_mean_dev8": round(float(np.mean([v for k, v in ratios.items() if k in TASKS.split(",")])), 3),
    }
    if rel:
        out["related_dev_delta_vs_zero"] = rel
        out["related_dev_mean_delta"] = round(float(np.mean(list(rel.values()))), 2)
    if loo:
        out["loo_dev_delta_vs_zero"] = loo
        out["loo_dev_mean_delta"] = round(float(np.mean(list(loo.values()))), 2)
    cells = [*rel.values(), *loo.values()]
    if cells and with_related:
        out["new_dev_mean_delta"] = round(float(np.mean(cells)), 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("out/generate"), help="folder holding generate.py's library")
    parser.add_argument("--tasks", default=TASKS)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/tasks"))
    parser.add_argument("--extra-tasks", default="", help="library-only tasks under --data")
    parser.add_argument("--related", default="", help=f"tasks not in the library, under --data (e.g. {RELATED})")
    parser.add_argument("--variant", action="append", default=[], help="name:key=value,... (IcmParams fields)")
    parser.add_argument("--dev-limit", type=int, default=100)
    parser.add_argument("--draws", type=int, default=4, help="16-demonstration draws per task for the diagnostics")
    parser.add_argument("--loo", default="", help="comma-separated tasks for leave-one-out on dev ('' none)")
    parser.add_argument("--loo-variants", default="", help="variants that run --loo ('' all)")
    parser.add_argument("--json", type=Path, default=None, help="append one row per variant here")
    parser.add_argument("--no-eval", action="store_true", help="diagnostics only: no accuracy, no leave-one-out")
    parser.add_argument("--ablation", action="store_true", help="condition ablation on dev and generator bytes")
    parser.add_argument("--select-decoder", type=Path, default=None, help="print select_decoder's pick over this file")
    parser.add_argument("--scales", default="", help="also evaluate dW times these scales, e.g. 1.5,2 ('' none)")
    parser.add_argument(
        "--select", type=Path, nargs="+", default=None, help="print the chosen variant's key=value over these files"
    )
    args = parser.parse_args()
    if args.select_decoder:
        print(select_decoder([json.loads(line) for line in args.select_decoder.read_text().splitlines()]))
        return
    if args.select:
        rows = [json.loads(line) for path in args.select for line in path.read_text().splitlines()]
        chosen = select(rows)
        print(chosen)
        row = next(r for r in rows if ",".join(f"{k}={v}" for k, v in r["params"].items()) == chosen)
        if "scales" in row:
            print(f"scale {select_scale(row)}")
        return
    scales = [1.0, *(float(a) for a in args.scales.split(",") if a)]
    torch.set_num_threads(1)
    backbone = Backbone.load()
    scorer = make_scorer(backbone)
    library = Library(args.out / "library")
    fp = backbone.fingerprint
    tasks = {n: load_task(shipped_tasks_dir() / n) for n in args.tasks.split(",")}
    tasks |= {n: load_task(args.data / n) for n in args.extra_tasks.split(",") if n}
    related = {n: load_task(args.data / n) for n in args.related.split(",") if n}
    cache: dict[tuple[str, tuple[str, ...]], np.ndarray] = {}

    def condition(task: Task, shots: Sequence[Example]) -> np.ndarray:
        key = (task.name, tuple(e.text for e in shots))
        if key not in cache:
            cache[key] = task_vector(scorer, task, shots)
        return cache[key]

    def dev_accuracy(generator: IcmGenerator, task: Task) -> dict[float, float]:
        """Per scale, the dev accuracy of the adapter generated from 16 train-split shots (times the scale)."""
        shots = draw_shots(task, 16, seed=0)
        delta = generator.generate(condition(task, shots.examples))
        return {
            a: evaluate(scorer, task, "dev", delta if a == 1 else scale_delta(delta, a), limit=args.dev_limit).accuracy
            for a in scales
        }

    def dev_gain(generator: IcmGenerator, task: Task, zero: float) -> dict[float, float]:
        """Per scale, dev accuracy minus zero-shot's, in points."""
        return {a: round((acc - zero) * 100, 1) for a, acc in dev_accuracy(generator, task).items()}

    own_dev: dict[str, float] = {}
    zero_dev: dict[str, float] = {}
    for name, task in tasks.items() if not args.no_eval else ():
        own, _ = library.load(f"{name}-s")
        own_dev[name] = evaluate(scorer, task, "dev", own, limit=args.dev_limit).accuracy
        zero_dev[name] = evaluate(scorer, task, "dev", None, limit=args.dev_limit).accuracy
    for name, task in related.items() if not args.no_eval else ():
        zero_dev[name] = evaluate(scorer, task, "dev", None, limit=args.dev_limit).accuracy
    print("own dev", own_dev, "zero-shot dev", zero_dev, flush=True)
    fits: dict[str, IcmGenerator] = {}
    for text in args.variant or ["base:"]:
        vname, overrides = parse_variant(text)
        params = IcmParams(**overrides)  # type: ignore[arg-type]
        samples = collect_icm_samples(library, fp, params.tail)
        leaked = {t.name for t in samples.tasks} & set(related)
        if leaked:
            raise SystemExit(f"--related {sorted(leaked)} are in the library; they must be new to the generator")
        gen = torch.Generator().manual_seed(123)
        vectors = {
            t.name: [condition(t, draw(t.splits["train"], params.shots, gen)) for _ in range(args.draws)]
            for t in samples.tasks
        }
        row: dict[str, object] = {"variant": vname, "params": overrides, **centred_cosines(vectors)}
        t0 = time.perf_counter()
        fit_key = json.dumps({**params.to_dict(), "latent": None}, sort_keys=True)  # z at generation only
        if fit_key not in fits:
            fits[fit_key] = IcmGenerator.fit(samples, condition, params)
        done = fits[fit_key]
        g = IcmGenerator(params, done.template, done.cvae, done.mean, done.std, done.info)
        row["fit_seconds"] = round(time.perf_counter() - t0, 1)
        row["generator_bytes"] = sum(
            v.numel() * v.element_size() for v in [*g.cvae.saved_state().values(), g.mean, g.std]
        )
        row["snapshot_bytes"], row["final_bytes"] = samples.raw_bytes, samples.final_bytes
        row["curve_last"] = g.info["curve"][-1]
        x = samples.x
        task_of = torch.tensor(samples.task_of)
        means = torch.stack([x[task_of == t].mean(0) for t in range(len(samples.tasks))])
        data_spread = pairwise(means)
        cvae = g.cvae
        with torch.no_grad():
            # stored demonstrations of each task (as the fit saw them), z = 0
            conds = torch.stack([torch.from_numpy(np.stack(vectors[t.name]).mean(0)) for t in samples.tasks]).float()
            h = cvae.condition(conds)
            dec = cvae.decode(torch.zeros(len(conds), cvae.latent_dim), h)
            row["cond_spread_ratio"] = round(pairwise(dec) / data_spread, 3)
            err = (dec - means).pow(2).sum(1).sqrt() / (means - x.mean(0)).pow(2).sum(1).sqrt()
            row["recon_rel_err_taskmean"] = round(float(err.mean()), 3)
            zs = torch.randn(len(conds), cvae.latent_dim, generator=torch.Generator().manual_seed(0))
            row["z_effect_ratio"] = round(
                float((cvae.decode(zs, h) - dec).pow(2).sum(1).sqrt().mean()) / data_spread, 3
            )
            hs = h[task_of]  # each sample with its task's mean condition
            mu, logvar = cvae.encode(x, hs)
            row["active_units"] = int((mu.var(0) > 0.01).sum())
            row["kl"] = round(float((-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(-1)).mean()), 3)
            row["h_norm"] = round(float(h.norm(dim=1).mean()), 3)
            post = torch.stack([cvae.decode(mu, hs)[task_of == t].mean(0) for t in range(len(samples.tasks))])
            err = (post - means).pow(2).sum(1).sqrt() / (means - x.mean(0)).pow(2).sum(1).sqrt()
            row["recon_rel_err_posterior_z"] = round(float(err.mean()), 3)
        if args.no_eval:
            print(json.dumps(row), flush=True)
            continue
        ratios: dict[float, dict[str, float]] = {a: {} for a in scales}
        right: dict[str, float] = {}
        for t in samples.tasks:
            for a, acc in dev_accuracy(g, tasks[t.name]).items():
                ratios[a][t.name] = round(acc / own_dev[t.name], 3)
                right[t.name] = acc if a == 1 else right.get(t.name, acc)
        if args.ablation:
            wrong, nocond = {}, {}
            names = [t.name for t in samples.tasks]
            no_c = g.cvae.c_mean.numpy()
            for i, name in enumerate(names):
                other = tasks[names[(i + 1) % len(names)]]
                c_other = condition(other, draw_shots(other, 16, seed=0).examples)
                for out, c in ((wrong, c_other), (nocond, no_c)):
                    acc = evaluate(scorer, tasks[name], "dev", g.generate(c), limit=args.dev_limit).accuracy
                    out[name] = round((right[name] - acc) * 100, 1)
            row["wrong_dev_drop"] = round(float(np.mean(list(wrong.values()))), 2)
            row["nocond_dev_drop"] = round(float(np.mean(list(nocond.values()))), 2)
            row["wrong_dev_drop_per_task"] = wrong
        rel: dict[float, dict[str, float]] = {a: {} for a in scales}
        for name, task in related.items():
            for a, gain in dev_gain(g, task, zero_dev[name]).items():
                rel[a][name] = gain
        delta_loo: dict[float, dict[str, float]] = {a: {} for a in scales}
        if args.loo and (not args.loo_variants or vname in args.loo_variants.split(",")):
            for name in args.loo.split(","):
                held = collect_icm_samples(library, fp, params.tail, [name])
                gl = IcmGenerator.fit(held, condition, params)
                for a, gain in dev_gain(gl, tasks[name], zero_dev[name]).items():
                    delta_loo[a][name] = gain
        for a in scales:
            cells = dev_cells(ratios[a], rel[a], delta_loo[a], bool(args.related))
            if a == 1:
                row |= cells
            else:
                row.setdefault("scales", {})[str(a)] = cells
        row["wall_seconds"] = round(time.perf_counter() - t0, 1)
        print(json.dumps(row), flush=True)
        if args.json:
            with args.json.open("a") as fh:
                fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
