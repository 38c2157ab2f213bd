"""Domain pruning on the LLM by perplexity (issue 31, part 1): D-Pruner against magnitude, Wanda and SparseGPT
calibrated on general text and on domain text, on SmolLM2-135M-Instruct, 50% unstructured and 2:4.

Corpora (``benchmarks/data/prune_llm``, see its README): open-domain (WikiText-2), legal (US Supreme Court
opinions) and medical (MedQuAD answers), each a calibration part and an evaluation part sharing no document.
Every run prunes in a fresh process (so its peak memory is its own) and then measures perplexity on the general
evaluation corpus and on the evaluation corpus of its domain(s) with ``adaptforge eval --metric perplexity``'s
function (windows of 256 tokens, stride 192). A run is ``method:calibration:pattern``:

- ``magnitude:none``; ``wanda:general`` and ``sparsegpt:general`` (calibrated on the general corpus): evaluated on
  all three corpora;
- ``wanda:DOMAIN``, ``sparsegpt:DOMAIN``, ``dpruner:DOMAIN`` (general OBS importance on the general corpus, domain
  gradients on DOMAIN's), ``DOMAIN`` = legal or medical: evaluated on general and on DOMAIN.

Several locked invocations write one JSON file per run into ``--results``; ``--table`` reads them all and writes
the table and the bars (the rules are in ``docs/experiments/dpruner_llm.md``, written before the first run):

    python benchmarks/prune_llm.py --runs dense,magnitude:none:unstructured --results benchmarks/results/prune_llm
    python benchmarks/prune_llm.py --table --results benchmarks/results/prune_llm
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

DATA = Path(__file__).resolve().parent / "data" / "prune_llm"
DOMAINS = ("legal", "medical")
PATTERNS = ("unstructured", "2:4")
GENERAL_CALIBRATED = ("magnitude:none", "wanda:general", "sparsegpt:general")
DOMAIN_METHODS = ("wanda", "sparsegpt", "dpruner")
CALIBRATION = 64  # calibration texts (each its first 256 tokens): the brief's 64 x 256
MAX_LENGTH = 256
CONTEXT, STRIDE = 256, 192  # every scored token sees >= 64 tokens of its text; 1.33 forwards per token
DPRUNER_LAMBDA = 0.1  # the authors' lambda_weight (code/src/lomo.py); see the experiment record for its units


def all_runs() -> list[str]:
    runs = ["dense"]
    for pattern in PATTERNS:
        runs += [f"{m}:{pattern}" for m in GENERAL_CALIBRATED]
        runs += [f"{m}:{d}:{pattern}" for d in DOMAINS for m in DOMAIN_METHODS]
    return runs


def eval_corpora(calibration: str) -> list[str]:
    """The evaluation corpora of a run: general plus its domain, or all three for a domain-free run."""
    return ["general", calibration] if calibration in DOMAINS else ["general", *DOMAINS]


def rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise SystemExit(f"/proc/self/status has no {field}")


def variant(method: str, lam: float, lr: float, epochs: int) -> str | None:
    """D-Pruner's setting as a label (``None`` for the other methods): lambda, and the LOMO training if any."""
    if method != "dpruner":
        return None
    return f"lambda {lam:g}" + (f", LOMO lr {lr:g} x {epochs} epochs" if lr > 0 else "")


def run_one(run: str, threads: int, dpruner_lambda: float, lr: float = 0.0, epochs: int = 1) -> dict:
    """One run in this (fresh) process: prune (time and peak resident memory over the loaded baseline), then
    perplexity of the pruned model on its evaluation corpora."""
    import torch

    from adaptforge.backbone import Backbone
    from adaptforge.evaluate import corpus_perplexity
    from adaptforge.pipelines.prune import prune_model
    from adaptforge.prune.calibration import read_corpus_text
    from adaptforge.tasks import read_corpus

    torch.set_num_threads(threads)
    dense = Backbone.load("smollm2")
    if run == "dense":
        model, seconds, prune_seconds, peak, corpora = dense, 0.0, 0.0, 0.0, ["general", *DOMAINS]
        method, calibration, pattern = "dense", "none", "-"
    else:
        method, calibration, pattern = run.split(":", 2)
        corpora = eval_corpora(calibration)
        domain = read_corpus_text(DATA / f"{'general' if calibration == 'none' else calibration}_calib.jsonl")
        params: dict[str, object] = {
            "sparsity": 0.5,
            "pattern": pattern,
            "calibration_size": CALIBRATION,
            "max_length": MAX_LENGTH,
        }
        if method == "dpruner":
            params |= {"general_weight": dpruner_lambda, "gradient_examples": CALIBRATION, "batch_size": 8}
            params |= {"train_lr": lr, "train_epochs": epochs}
        general = [DATA / "general_calib.jsonl"]
        Path("/proc/self/clear_refs").write_text("5")  # the peak from here on is the pruning's
        baseline = rss_mb("VmRSS")
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            outcome = prune_model(
                method, domain, Path(tmp) / "out", params=params, general=general, backbone=dense, limit=4
            )
            seconds = time.perf_counter() - start
            peak = rss_mb("VmHWM") - baseline
            prune_seconds = outcome.prune_seconds
            model = Backbone.load(str(outcome.path))
            sparsity = outcome.report.sparsity
    eval_start = time.perf_counter()
    ppl = {
        c: corpus_perplexity(
            model.model, model.tokenizer, read_corpus(DATA / f"{c}_eval.jsonl"), context=CONTEXT, stride=STRIDE
        ).to_json()
        for c in corpora
    }
    return {
        "run": run,
        "method": method,
        "calibration": calibration,
        "pattern": pattern,
        "sparsity": 0.0 if run == "dense" else sparsity,
        "variant": variant(method, dpruner_lambda, lr, epochs),
        "prune_seconds": round(prune_seconds, 2),
        "total_prune_seconds": round(seconds, 2),
        "peak_growth_mb": round(peak, 1),
        "eval_seconds": round(time.perf_counter() - eval_start, 2),
        "perplexity": ppl,
        "threads": threads,
    }


def file_name(run: str, dpruner_lambda: float, lr: float, epochs: int) -> str:
    name = run.replace(":", "_")
    if not run.startswith("dpruner"):
        return f"{name}.json"
    return f"{name}_l{dpruner_lambda:g}" + (f"_lomo{lr:g}x{epochs}" if lr > 0 else "") + ".json"


def table(results: Path) -> str:
    rows = [json.loads(p.read_text()) for p in sorted(results.glob("*.json"))]
    by = {(r["run"], r["variant"]): r for r in rows}
    dense = by[("dense", None)]["perplexity"]
    lines = [
        "| pattern | method | calibration | general ppl | legal ppl | medical ppl | prune s | peak MB |",
        "|---|---|---|---|---|---|---|---|",
        f"| - | dense | - | {dense['general']['value']:.2f} | {dense['legal']['value']:.2f} | "
        f"{dense['medical']['value']:.2f} | - | - |",
    ]
    for r in sorted((r for r in rows if r["run"] != "dense"), key=lambda r: (r["pattern"] != "unstructured", r["run"])):
        cells = [f"{r['perplexity'][c]['value']:.2f}" if c in r["perplexity"] else "" for c in ("general", *DOMAINS)]
        name = r["method"] + (f" ({r['variant']})" if r["variant"] is not None else "")
        lines.append(
            f"| {r['pattern']} | {name} | {r['calibration']} | {' | '.join(cells)} | {r['prune_seconds']:.1f} | "
            f"{r['peak_growth_mb']:.0f} |"
        )
    lines += ["", *bars(by)]
    return "\n".join(lines)


def bars(by: dict) -> list[str]:
    """The two bars of the issue, per domain and pattern, for every D-Pruner setting that was run (the bar is
    judged on lambda 0.1 without training; the others are for information)."""
    out = []
    for setting in sorted({k[1] for k in by if k[1] is not None}):
        for pattern in PATTERNS:
            for d in DOMAINS:
                dp = by.get((f"dpruner:{d}:{pattern}", setting))
                if dp is None:
                    continue
                g, m = dp["perplexity"]["general"]["value"], dp["perplexity"][d]["value"]
                general = [f"{b}:{pattern}" for b in GENERAL_CALIBRATED]
                baselines = general + [f"{b}:{d}:{pattern}" for b in ("wanda", "sparsegpt")]
                ppl = {b: by[(b, None)]["perplexity"] for b in baselines if (b, None) in by}
                beaten_by = [b for b, v in ppl.items() if v["general"]["value"] < g and v[d]["value"] < m]
                ratios = {b.split(":")[0]: m / ppl[b][d]["value"] for b in general if b in ppl}
                five = all(v <= 0.95 for v in ratios.values())
                shown = ", ".join(f"{b} {v:.3f}" for b, v in ratios.items())
                out.append(
                    f"- {setting}, {d}, {pattern}: not beaten on both by any of {len(ppl)} baselines: "
                    + ("MET" if not beaten_by else f"MISSED ({', '.join(beaten_by)})")
                    + f"; domain ppl / general-calibrated: {shown} -> >= 5% lower: {'MET' if five else 'MISSED'}"
                    + ("" if pattern == "unstructured" else " (the 5% bar is judged at 50% unstructured)")
                )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", default=None, help="comma-separated runs (default: all not yet in --results)")
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results/prune_llm"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dpruner-lambda", type=float, default=DPRUNER_LAMBDA)
    parser.add_argument("--dpruner-lr", type=float, default=0.0, help="D-Pruner's LOMO variant: SGD step size")
    parser.add_argument("--dpruner-epochs", type=int, default=1, help="D-Pruner's LOMO variant: passes")
    parser.add_argument("--table", action="store_true", help="only write the table from the results so far")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_one(args.child, args.threads, args.dpruner_lambda, args.dpruner_lr, args.dpruner_epochs)))
        return
    args.results.mkdir(parents=True, exist_ok=True)
    if args.table:
        text = table(args.results)
        (args.results.parent / f"{args.results.name}.md").write_text(text + "\n")
        print(text)
        return
    runs = args.runs.split(",") if args.runs else all_runs()
    for run in runs:
        target = args.results / file_name(run, args.dpruner_lambda, args.dpruner_lr, args.dpruner_epochs)
        if target.exists() and not args.runs:
            continue
        cmd = [sys.executable, __file__, "--child", run, "--threads", str(args.threads)]
        cmd += ["--dpruner-lambda", str(args.dpruner_lambda), "--dpruner-lr", str(args.dpruner_lr)]
        cmd += ["--dpruner-epochs", str(args.dpruner_epochs)]
        done = subprocess.run(cmd, check=True, capture_output=True, text=True)
        row = json.loads(done.stdout.strip().splitlines()[-1])
        target.write_text(json.dumps(row, indent=1) + "\n")
        ppl = ", ".join(f"{k} {v['value']:.2f}" for k, v in row["perplexity"].items())
        print(f"{run}: {ppl}; prune {row['prune_seconds']:.1f}s, peak +{row['peak_growth_mb']:.0f} MB", flush=True)


if __name__ == "__main__":
    main()
