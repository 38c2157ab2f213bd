"""Domain pruning: does the pruned base keep general ability and the domain? (issue 15)

For each domain task: train a LoRA on the dense base; then for each method x pattern prune the base for
that domain and measure
- general retention: zero-shot accuracy on a fixed general suite (dev splits of tasks that are not the
  domain), normalised by the dense base's, averaged over the suite;
- domain accuracy (test) with the dense-trained adapter applied to the pruned base, and with an adapter
  retrained on the pruned base (same config);
- pruning seconds (the in-process ``prune_peak_growth_mb`` is not a measurement once training has set the
  process's high-water mark: ``--memory`` measures time and peak memory per method, each in a fresh process).
Also, once: FFN-neuron pruning at 50% vs dense, weights file size, parameter count and CPU inference speed
side by side, and the packed (``--compact``) size of a 50% unstructured model against the dense file.
Other modes: ``--select-dpruner`` (D-Pruner's ``general_weight`` on dev data only), ``--prepost-only``
(base_interp's alpha rules), ``--memory``; ``--reuse`` keeps a previous run's rows for runs not asked again.

python benchmarks/retain.py --threads 1 --json benchmarks/results/retain.json --markdown benchmarks/results/retain.md
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from adaptforge.backbone import Backbone  # noqa: E402
from adaptforge.evaluate import evaluate  # noqa: E402
from adaptforge.library import Library  # noqa: E402
from adaptforge.pipelines.prune import prune_model  # noqa: E402
from adaptforge.pipelines.train import train_into_library  # noqa: E402
from adaptforge.scorers import make_scorer  # noqa: E402
from adaptforge.tasks import Example, Task, load_task  # noqa: E402
from adaptforge.train.config import TrainConfig  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "tasks"
DOMAINS = "movie_review,tweet_hate,trec_question_type"
GENERAL = "agnews,dbpedia,subjectivity,tweet_emotion,customer_review"
RUNS = ",".join(f"{m}:{p}" for p in ("unstructured", "2:4") for m in ("magnitude", "wanda", "sparsegpt", "dpruner"))


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def general_accuracy(backbone: Backbone, suite: list[Task], limit: int) -> dict[str, float]:
    scorer = make_scorer(backbone)
    return {t.name: evaluate(scorer, t, "dev", None, limit=limit).accuracy for t in suite}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--domains", default=DOMAINS)
    parser.add_argument("--general", default=GENERAL, help="the general suite (dev splits), never a domain")
    parser.add_argument("--runs", default=RUNS, help="method:pattern, comma-separated")
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--max-train", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--test-limit", type=int, default=200)
    parser.add_argument("--dev-limit", type=int, default=150)
    parser.add_argument("--calibration-size", type=int, default=128)
    parser.add_argument("--work", type=Path, default=Path("out/retain"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--markdown", type=Path, default=None)
    parser.add_argument(
        "--prepost-only", action="store_true", help="only the pre/post-tuning merge part (base_interp alpha rules)"
    )
    parser.add_argument(
        "--select-dpruner", default=None, help="only choose D-Pruner's general_weight on dev data: the grid, e.g. 0,1,4"
    )
    parser.add_argument(
        "--reuse", type=Path, default=None, help="a previous --json: keep its rows of runs not in --runs, and its ffn"
    )
    parser.add_argument("--memory", action="store_true", help="only pruning time and peak memory, one process per run")
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)  # method:pattern, run by --memory
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.prepost_only:
        prepost(args)
        return
    if args.select_dpruner:
        select_dpruner(args, [float(v) for v in args.select_dpruner.split(",")])
        return
    if args.memory_child:
        print(json.dumps(memory_child(args, args.memory_child)))
        return
    if args.memory:
        memory_runs(args)
        return
    domains = [load_task(SHARED / n) for n in args.domains.split(",")]
    suite = [load_task(SHARED / n) for n in args.general.split(",")]
    overlap = {t.name for t in domains} & {t.name for t in suite}
    if overlap:
        raise SystemExit(f"the general suite must not hold a domain task: {sorted(overlap)}")
    dense = Backbone.load()
    dense_general = general_accuracy(dense, suite, args.dev_limit)
    cfg = TrainConfig(max_train=args.max_train, epochs=args.epochs, seed=0)
    rows = []
    for domain in domains:
        lib = Library(args.work / "libraries" / domain.name)
        if not lib.exists("dense"):
            train_into_library(domain, dense, lib, "dense", cfg, eval_splits=(), resume=True)
        delta, _ = lib.load("dense", expected_fingerprint=dense.fingerprint)
        dense_domain = evaluate(make_scorer(dense), domain, "test", delta, limit=args.test_limit).accuracy
        rows.append(
            {
                "domain": domain.name,
                "method": "dense",
                "pattern": "-",
                "general_retention": 1.0,
                "domain_dense_adapter": dense_domain,
                "domain_retrained": dense_domain,
            }
        )
        print(f"{domain.name}: dense adapter {dense_domain:.3f}", flush=True)
        for run in args.runs.split(","):
            method, pattern = run.split(":", 1)
            out = args.work / "pruned" / f"{domain.name}-{method}-{pattern.replace(':', 'of')}"
            if not out.exists():
                before = peak_mb()
                start = time.perf_counter()
                prune_model(
                    method,
                    domain,
                    out,
                    params={"sparsity": args.sparsity, "pattern": pattern, "calibration_size": args.calibration_size},
                    backbone=dense,
                )
                seconds, memory = time.perf_counter() - start, peak_mb() - before
                (out / "bench_cost.json").write_text(json.dumps({"seconds": seconds, "peak_growth_mb": memory}))
            cost = json.loads((out / "bench_cost.json").read_text())
            pruned = Backbone.load(str(out))
            general = general_accuracy(pruned, suite, args.dev_limit)
            retention = sum(general[t] / dense_general[t] for t in general) / len(general)
            on_pruned = evaluate(make_scorer(pruned), domain, "test", delta, limit=args.test_limit).accuracy
            name = f"{method}-{pattern.replace(':', 'of')}"
            if not lib.exists(name):
                train_into_library(domain, pruned, lib, name, cfg, eval_splits=(), resume=True)
            retrained_delta, _ = lib.load(name, expected_fingerprint=pruned.fingerprint)
            retrained = evaluate(make_scorer(pruned), domain, "test", retrained_delta, limit=args.test_limit).accuracy
            row = {
                "domain": domain.name,
                "method": method,
                "pattern": pattern,
                "general_retention": retention,
                "general": general,
                "domain_dense_adapter": on_pruned,
                "domain_retrained": retrained,
                "prune_seconds": cost["seconds"],
                "prune_peak_growth_mb": cost["peak_growth_mb"],
            }
            rows.append(row)
            print(
                f"  {method:<10}{pattern:<13} general {retention:.3f}  domain (dense adapter) {on_pruned:.3f}  "
                f"retrained {retrained:.3f}  {cost['seconds']:.1f}s",
                flush=True,
            )
    old = json.loads(args.reuse.read_text()) if args.reuse else None
    if old is not None:  # rows of runs not asked for this time, measured before with the same code and data
        asked = {tuple(r.split(":", 1)) for r in args.runs.split(",")}
        order = [d.name for d in domains]
        reused = [
            {**r, "reused": True}
            for r in old["rows"]
            if r["method"] != "dense" and (r["method"], r["pattern"]) not in asked and r["domain"] in order
        ]
        rows = sorted(rows + reused, key=lambda r: (order.index(r["domain"]), r["method"] != "dense"))
    speed = old["ffn"] if old is not None and "ffn" in old else ffn_speed(dense, domains[0], args)
    first = next(f"{r['method']}:{r['pattern']}" for r in rows if r["pattern"] == "unstructured")
    packed = packed_size(dense, args.work / "pruned" / f"{domains[0].name}-{first.replace(':', '-')}")
    result = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "dense_general": dense_general,
        "rows": rows,
        "ffn": speed,
        "packed": {"run": f"{domains[0].name} {first}", **packed},
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    if args.markdown:
        args.markdown.write_text(markdown(result))
    print(markdown(result))


def prepost(args: argparse.Namespace) -> None:
    """Pre/post-tuning merge (issue 15): ``W_base + alpha * dW`` of each domain's dense adapter, alpha chosen
    (a) without labels, by the general suite's dev inputs: the merged model's expected accuracy under the
    base's probabilities >= 98% of the base's (``retention_rule=expected``, added after (a') had been run), or
    (a') agreement with the base's own predictions >= 98%; (b) with labels: the general suite's dev accuracy
    within 1 point of the base's (mean), and (c) alpha = 1 (the adapter itself, plain task arithmetic).
    Reported: domain test accuracy relative to the adapter's, general retention (accuracy on the suite's test
    split, normalised by the base's) at that alpha."""
    from adaptforge.merge import run
    from adaptforge.merge.interp import scale_delta

    dense = Backbone.load()
    scorer = make_scorer(dense)
    suite = [load_task(SHARED / n) for n in args.general.split(",")]
    # reported on the suite's *test* split: the alpha rules below look at its dev split
    base_general = {t.name: evaluate(scorer, t, "test", None, limit=args.test_limit).accuracy for t in suite}
    rows = []
    for name in args.domains.split(","):
        domain = load_task(SHARED / name)
        lib = Library(args.work / "libraries" / name, create=False)
        delta, _ = lib.load("dense", expected_fingerprint=dense.fingerprint)
        adapter_acc = evaluate(scorer, domain, "test", delta, limit=args.test_limit).accuracy
        retention = [t.name for t in suite]
        common = {"retention": retention, "examples_per_task": 64, "grid": [0.25, 0.5, 0.75, 1.0]}
        rules = {
            "label-free (expected accuracy >= 0.98 of the base's)": {
                **common,
                "retention_rule": "expected",
                "tolerance": 0.02,
            },
            "label-free (agreement >= 0.98)": {**common, "retention_rule": "agreement", "tolerance": 0.02},
            "labelled (mean within 0.01)": {**common, "retention_rule": "mean", "tolerance": 0.01},
        }
        choices = {
            rule: run("base_interp", [delta], params, scorer, [domain, *suite]).info["alpha"]
            for rule, params in rules.items()
        }
        choices["task arithmetic (alpha = 1)"] = 1.0
        for rule, alpha in choices.items():
            merged = scale_delta(delta, alpha)
            domain_acc = evaluate(scorer, domain, "test", merged, limit=args.test_limit).accuracy
            general = {t.name: evaluate(scorer, t, "test", merged, limit=args.test_limit).accuracy for t in suite}
            kept = sum(general[t] / base_general[t] for t in general) / len(general)
            rows.append(
                {
                    "domain": name,
                    "rule": rule,
                    "alpha": alpha,
                    "domain_vs_adapter": domain_acc / adapter_acc,
                    "general_retention": kept,
                }
            )
            print(
                f"{name:<20}{rule:<54} alpha {alpha:.2f}  domain {domain_acc / adapter_acc:.3f} of the adapter's  "
                f"general {kept:.3f} of the base's",
                flush=True,
            )
    lines = ["| domain | alpha rule | alpha | domain acc / adapter's | general retention |", "|---|---|---|---|---|"]
    lines += [
        f"| {r['domain']} | {r['rule']} | {r['alpha']:.2f} | {r['domain_vs_adapter']:.3f} | "
        f"{r['general_retention']:.3f} |"
        for r in rows
    ]
    text = "\n".join(lines) + "\n"
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "base_general": base_general}, indent=1))
    if args.markdown:
        args.markdown.write_text(text)
    print(text)


def reported_dev(task: Task, limit: int) -> tuple[Example, ...]:
    """The dev examples the table reports general accuracy on (``evaluate``'s seeded sample)."""
    return task.sample("dev", limit, seed=0)


def unreported_dev(task: Task, limit: int) -> Task:
    """The task with its dev split cut to the examples the table does *not* report: where D-Pruner's
    ``general_weight`` is chosen."""
    shown = {(e.text, e.label) for e in reported_dev(task, limit)}
    return task.with_splits(dev=[e for e in task.split("dev") if (e.text, e.label) not in shown])


def select_dpruner(args: argparse.Namespace, grid: list[float]) -> None:
    """Choose D-Pruner's ``general_weight`` on dev data only. Per domain, D-Pruner's two scores (domain
    Taylor term, general OBS error) are computed once; for each ``lambda`` of the grid the dense base is pruned
    to ``args.sparsity`` (unstructured) with their combination and scored on (a) the general suite's dev
    examples *outside* the ones the table reports (general retention = pruned / dense accuracy, mean over the
    suite) and (b) the domain's dev split with the dense-trained adapter (pruned / dense accuracy). The chosen
    lambda maximises the mean over domains of (a + b) / 2: D-Pruner's aim is both, so neither alone decides.
    No test example and no reported dev example is read."""
    from adaptforge.prune import PRUNE_METHODS, Pruner, prunable_layers
    from adaptforge.prune.base import unstructured_mask
    from adaptforge.prune.calibration import domain_text, read_general
    from adaptforge.prune.methods import DPruner, DPrunerParams

    dense = Backbone.load()
    suite = [unreported_dev(load_task(SHARED / n), args.dev_limit) for n in args.general.split(",")]
    base_general = general_accuracy(dense, suite, None)
    params = DPrunerParams(sparsity=args.sparsity, calibration_size=args.calibration_size)
    rows = []
    for name in args.domains.split(","):
        domain = load_task(SHARED / name)
        delta, _ = Library(args.work / "libraries" / name, create=False).load(
            "dense", expected_fingerprint=dense.fingerprint
        )
        base_domain = evaluate(make_scorer(dense), domain, "dev", delta).accuracy
        work = Backbone(
            dense.name, dense.path, dense.kind, copy.deepcopy(dense.model), dense.tokenizer, dense.fingerprint
        )
        scorer = make_scorer(work)
        layers = prunable_layers(work)
        impl = PRUNE_METHODS.get("dpruner")()
        assert isinstance(impl, DPruner)
        start = time.perf_counter()
        calibration = Pruner(impl, params).calibrate(
            layers,
            scorer,
            domain,
            read_general((), params.calibration_size, params.seed),
            domain_text(domain, params.gradient_examples, params.seed),
        )
        parts = {n: impl.components(n, layer, calibration, params) for n, layer in layers.items()}
        originals = {n: layer.weight.detach().clone() for n, layer in layers.items()}
        print(f"{name}: D-Pruner scores in {time.perf_counter() - start:.1f}s", flush=True)
        for lam in grid:
            with torch.no_grad():
                for n, layer in layers.items():
                    keep = unstructured_mask(DPruner.combine(*parts[n], lam), args.sparsity, per_row=True)
                    layer.weight.copy_(originals[n] * keep.to(originals[n].dtype))
            general = general_accuracy(work, suite, None)
            retention = sum(general[t] / base_general[t] for t in general) / len(general)
            kept = evaluate(scorer, domain, "dev", delta).accuracy / base_domain
            rows.append(
                {"domain": name, "general_weight": lam, "general_retention": retention, "domain_retention": kept}
            )
            print(f"  lambda {lam:<6g} general {retention:.3f}  domain {kept:.3f}", flush=True)
    table = ["| general_weight | " + " | ".join(args.domains.split(",")) + " | mean (general + domain) / 2 |"]
    table.append("|---" * (len(args.domains.split(",")) + 2) + "|")
    means = {}
    for lam in grid:
        cells = [r for r in rows if r["general_weight"] == lam]
        means[lam] = sum((r["general_retention"] + r["domain_retention"]) / 2 for r in cells) / len(cells)
        table.append(
            f"| {lam:g} | "
            + " | ".join(f"{r['general_retention']:.3f} / {r['domain_retention']:.3f}" for r in cells)
            + f" | {means[lam]:.4f} |"
        )
    chosen = max(grid, key=lambda v: (means[v], -v))
    text = "\n".join(table) + f"\n\nchosen general_weight: {chosen:g}\n"
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"rows": rows, "means": means, "chosen": chosen}, indent=1))
    if args.markdown:
        args.markdown.write_text(text)
    print(text)


def memory_child(args: argparse.Namespace, run: str) -> dict[str, float]:
    """One run's pruning in this (fresh) process: peak resident memory of ``prune_model`` over the process's
    resident size once the model, the domain task and the general calibration texts are loaded (the peak
    reset there, so loading's transient peak does not count). ``prune_model`` works on a copy of the given
    model (about 90 MB for MiniLM), so that copy is in every run's growth."""
    import tempfile

    from adaptforge.prune.calibration import read_general

    method, pattern = run.split(":", 1)
    dense = Backbone.load()
    domain = load_task(SHARED / args.domains.split(",")[0])
    read_general((), args.calibration_size, 0)
    reset_peak()  # loading's own transient peak must not hide the pruning's
    baseline = rss_mb("VmRSS")
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        prune_model(
            method,
            domain,
            Path(tmp) / "out",
            params={"sparsity": args.sparsity, "pattern": pattern, "calibration_size": args.calibration_size},
            backbone=dense,
            limit=16,
        )
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "baseline_mb": baseline, "peak_growth_mb": rss_mb("VmHWM") - baseline}


def reset_peak() -> None:
    """Reset this process's resident high-water mark (Linux: ``5`` to ``/proc/self/clear_refs``)."""
    Path("/proc/self/clear_refs").write_text("5")


def rss_mb(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak since the last reset) of this process, in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise SystemExit(f"/proc/self/status has no {field}")


def memory_runs(args: argparse.Namespace) -> None:
    """Pruning time and peak memory per run, each in its own fresh process (a process's high-water mark
    cannot be reset, and training in the same process would have set it)."""
    import subprocess
    import sys

    rows = []
    for run in args.runs.split(","):
        cmd = [
            sys.executable,
            __file__,
            "--memory-child",
            run,
            "--domains",
            args.domains,
            "--threads",
            str(args.threads),
        ]
        cmd += ["--sparsity", str(args.sparsity), "--calibration-size", str(args.calibration_size)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        rows.append({"run": run, **json.loads(out)})
        print(f"{run:<24} {rows[-1]['seconds']:.1f}s  peak +{rows[-1]['peak_growth_mb']:.0f} MB", flush=True)
    lines = ["| method | pattern | prune s | peak RSS growth MB |", "|---|---|---|---|"]
    lines += [
        f"| {' | '.join(r['run'].split(':', 1))} | {r['seconds']:.1f} | {r['peak_growth_mb']:.0f} |" for r in rows
    ]
    text = "\n".join(lines) + f"\n\n(baseline after loading: {rows[0]['baseline_mb']:.0f} MB)\n"
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    if args.markdown:
        args.markdown.write_text(text)
    print(text)


def packed_size(dense: Backbone, folder: Path) -> dict[str, float]:
    """The ``--compact`` form of a pruned folder against the dense weights file: the whole file, and the
    pruned layers alone (embeddings, norms and the pooler are stored as they are)."""
    import tempfile

    from adaptforge.packed import pack, write_packed

    pruned = Backbone.load(str(folder))
    with tempfile.TemporaryDirectory() as tmp:
        path = write_packed(pruned.model, tmp)
        packed_bytes = path.stat().st_size
    state = {k: v for k, v in pruned.model.state_dict().items() if v.dim() == 2 and ".layer." in k and "weight" in k}
    tensors, _ = pack(state)
    layers_packed = sum(t.numel() * t.element_size() for t in tensors.values())
    layers_dense = sum(t.numel() * t.element_size() for t in state.values())
    dense_bytes = sum(f.stat().st_size for f in Path(dense.path).glob("*.safetensors"))
    return {
        "dense_bytes": dense_bytes,
        "packed_bytes": packed_bytes,
        "file_ratio": packed_bytes / dense_bytes,
        "layers_ratio": layers_packed / layers_dense,
    }


def ffn_speed(dense: Backbone, domain: Task, args: argparse.Namespace) -> dict[str, float]:
    """FFN-neuron pruning at 50%: file size, parameters and encoder throughput vs dense, timed alternately."""
    out = args.work / "pruned" / f"{domain.name}-wanda-ffn"
    if not out.exists():
        prune_model("wanda", domain, out, params={"sparsity": 0.5, "pattern": "ffn"}, backbone=dense)
    small = Backbone.load(str(out))
    texts = [ex.text for ex in domain.sample("test", 256, seed=0)]
    batch = dense.tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
    times: dict[str, list[float]] = {"dense": [], "ffn": []}
    with torch.no_grad():
        for _ in range(3):
            for name, model in (("dense", dense.model), ("ffn", small.model)):
                start = time.perf_counter()
                for i in range(0, len(texts), 32):
                    model(**{k: v[i : i + 32] for k, v in batch.items()})
                times[name].append(time.perf_counter() - start)
    size = lambda folder: sum(f.stat().st_size for f in Path(folder).glob("*.safetensors"))  # noqa: E731
    return {
        "dense_seconds": min(times["dense"]),
        "ffn_seconds": min(times["ffn"]),
        "speedup": min(times["dense"]) / min(times["ffn"]),
        "dense_parameters": sum(p.numel() for p in dense.model.parameters()),
        "ffn_parameters": sum(p.numel() for p in small.model.parameters()),
        "dense_bytes": size(dense.path),
        "ffn_bytes": size(out),
    }


def markdown(result: dict) -> str:
    lines = [
        "| domain | method | pattern | general retention | domain, dense adapter | domain, retrained | prune s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        secs = f"{r['prune_seconds']:.1f}" if "prune_seconds" in r else "-"
        lines.append(
            f"| {r['domain']} | {r['method']} | {r['pattern']} | {r['general_retention']:.3f} | "
            f"{r['domain_dense_adapter']:.3f} | {r['domain_retrained']:.3f} | {secs} |"
        )
    means: dict[tuple[str, str], list[dict]] = {}
    for r in result["rows"]:
        means.setdefault((r["method"], r["pattern"]), []).append(r)
    lines += [
        "",
        "| method | pattern | mean general retention | mean domain, dense adapter | mean domain, retrained |",
        "|---|---|---|---|---|",
    ]
    for (method, pattern), group in means.items():
        avg = lambda k, group=group: sum(g[k] for g in group) / len(group)  # noqa: E731
        lines.append(
            f"| {method} | {pattern} | {avg('general_retention'):.3f} | {avg('domain_dense_adapter'):.3f} | "
            f"{avg('domain_retrained'):.3f} |"
        )
    f = result["ffn"]
    lines += [
        "",
        f"FFN 50% (wanda): parameters {f['ffn_parameters']:,} vs {f['dense_parameters']:,}, weights "
        f"{f['ffn_bytes'] / 1e6:.1f} MB vs {f['dense_bytes'] / 1e6:.1f} MB, CPU inference {f['speedup']:.2f}x "
        f"({f['ffn_seconds']:.2f}s vs {f['dense_seconds']:.2f}s for 256 texts, best of 3)",
    ]
    p = result["packed"]
    lines.append(
        f"\nPacked (--compact) at {p['run']}: {p['packed_bytes'] / 1e6:.1f} MB vs dense "
        f"{p['dense_bytes'] / 1e6:.1f} MB = {p['file_ratio']:.1%} of the whole file; the pruned layers alone "
        f"{p['layers_ratio']:.1%} of their dense size"
    )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
