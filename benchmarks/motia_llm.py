"""MOTIA on text (issue 31 part 3): suffix perplexity of structured documents on SmolLM2, unadapted vs input-specific
LoRA (constant and position-dependent strength) vs dynamic evaluation, with cost as a multiple of one plain pass.

Documents: ``benchmarks/data/motia/{dev,test}.jsonl`` (code, logs, tables, changelog records), each cut to its first
512 tokens, the first 256 known (the prefix), the last 256 scored (the suffix). Phases, each one short locked run
writing ``benchmarks/results/motia_llm/<phase>.json``:

    python benchmarks/motia_llm.py dev-lora      # input-lora grid on dev, seed 0
    python benchmarks/motia_llm.py dev-dynamic   # dynamic-evaluation grid on dev, seed 0
    python benchmarks/motia_llm.py test --seed S # the chosen settings on test (S = 0, 1, 2)
    python benchmarks/motia_llm.py summary       # the table of BENCHMARKS.md from the test files
    python benchmarks/motia_llm.py dev-lora --save-as recheck-dev-lora   # a dev re-run the test phase never reads

Selection rule (fixed before any run; docs/experiments/motia_llm.md): for each method, among the dev settings whose
mean cost is at most 10 plain passes, the one with the lowest mean relative change of suffix perplexity (ties: the
cheaper). Input-lora's strength is chosen the same way between constant and MOTIA's decay (k = 1) at the chosen
steps / lr; both strengths are then reported on test.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
DATA = ROOT / "data" / "motia"
OUT = ROOT / "results" / "motia_llm"
PREFIX, MAX_TOKENS, MAX_COST = 0.5, 512, 10.0

LORA_GRID = [  # rank 8 throughout (no time for a rank axis: one training step of SmolLM2 here is ~1 s)
    {"steps": 5, "lr": 1e-3},
    {"steps": 5, "lr": 3e-3},
    {"steps": 10, "lr": 1e-3, "blocks": 8},
]
DYNAMIC_GRID = [
    {"update": "lora", "lr": 1e-3, "chunk": 64},
    {"update": "full", "lr": 3e-5, "chunk": 64},
]
STRENGTHS = [{"strength": "decay", "decay_k": 1.0}]


def run(backbone: Any, split: str, method: str, params: dict[str, Any]) -> dict[str, Any]:
    from adaptforge.pipelines.tta_documents import tta_on_documents

    t0 = time.perf_counter()
    outcome = tta_on_documents(
        DATA / f"{split}.jsonl", method=method, params=params, prefix_fraction=PREFIX, max_tokens=MAX_TOKENS,
        backbone=backbone,
    )  # fmt: skip
    row = outcome.to_json()
    row["corpus"] = (DATA / f"{split}.jsonl").relative_to(ROOT.parent).as_posix()  # no machine path in results
    row["split"], row["wall_seconds"] = split, round(time.perf_counter() - t0, 1)
    change, cost = row["mean_change"], row["mean_cost_ratio"]
    print(f"{split} {method} {params}: change {change:+.2%}, cost x{cost:.1f}", flush=True)
    return row


def choose(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The selection rule: lowest mean change among settings of mean cost <= MAX_COST (ties: cheaper)."""
    within = [r for r in rows if r["mean_cost_ratio"] <= MAX_COST]
    if not within:
        raise SystemExit(f"no dev setting of {rows[0]['method']} costs <= {MAX_COST}x a plain pass")
    return min(within, key=lambda r: (round(r["mean_change"], 4), r["mean_cost_ratio"]))


def load(name: str) -> dict[str, Any]:
    return json.loads((OUT / f"{name}.json").read_text())


def save(name: str, value: dict[str, Any]) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{name}.json").write_text(json.dumps(value, indent=1) + "\n")


def strip(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if k != "seed"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("phase", choices=["dev-lora", "dev-dynamic", "test", "summary"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save-as", help="write a dev phase to this name instead (a re-check that the test never reads)")
    args = ap.parse_args()
    if args.phase == "summary":
        summary()
        return
    from adaptforge.backbone import Backbone

    backbone = Backbone.load("smollm2")
    if args.phase == "dev-lora":
        rows = [run(backbone, "dev", "input-lora", p) for p in LORA_GRID]
        best = strip(choose(rows)["params"])
        rows += [run(backbone, "dev", "input-lora", {**best, **s}) for s in STRENGTHS]
        save(args.save_as or "dev-lora", {"rows": rows})
    elif args.phase == "dev-dynamic":
        rows = [run(backbone, "dev", "dynamic-eval", p) for p in DYNAMIC_GRID]
        save(args.save_as or "dev-dynamic", {"rows": rows})
    else:
        lora_rows = load("dev-lora")["rows"]
        lora = strip(choose(lora_rows[: len(LORA_GRID)])["params"])
        decay = strip(choose(lora_rows[len(LORA_GRID) :])["params"])
        dynamic = strip(choose(load("dev-dynamic")["rows"])["params"])
        seed = {"seed": args.seed}
        rows = [
            run(backbone, "test", "input-lora", {**lora, **seed}),
            run(backbone, "test", "input-lora", {**decay, **seed}),
            run(backbone, "test", "dynamic-eval", {**dynamic, **seed}),
        ]
        save(f"test-seed{args.seed}", {"rows": rows})


def summary() -> None:
    """Mean and spread over the test seeds per method, decay minus constant per seed, and the mean per kind."""
    seeds = [s for s in (0, 1, 2) if (OUT / f"test-seed{s}.json").exists()]
    runs = [load(f"test-seed{s}")["rows"] for s in seeds]
    kinds = [json.loads(line)["kind"] for line in (DATA / "test.jsonl").read_text().splitlines() if line.strip()]
    print(f"seeds {seeds}")
    print("| method | strength | suffix ppl (plain -> adapted) | change: mean (sd) [per seed] | cost x plain pass |")
    print("|---|---|---|---|---|")
    for i in range(len(runs[0])):
        rows = [r[i] for r in runs]
        p = rows[0]["params"]
        label = rows[0]["method"] + (f" ({p.get('update')})" if "update" in p else "")
        strength = p.get("strength", "-") + (f" k={p['decay_k']:g}" if p.get("strength") == "decay" else "")
        changes = [r["mean_change"] for r in rows]
        sd = statistics.stdev(changes) if len(changes) > 1 else 0.0
        print(
            f"| {label} | {strength} | {rows[0]['mean_plain_perplexity']:.2f} -> "
            f"{statistics.mean(r['mean_perplexity'] for r in rows):.2f} | {statistics.mean(changes):+.2%} "
            f"({sd:.2%}) [{', '.join(f'{c:+.2%}' for c in changes)}] | "
            f"{statistics.mean(r['mean_cost_ratio'] for r in rows):.1f} |"
        )
    gaps = [r[1]["mean_change"] - r[0]["mean_change"] for r in runs]
    print(f"decay minus constant, per seed: {', '.join(f'{g:+.2%}' for g in gaps)}")
    for i in range(len(runs[0])):
        per_kind = {}
        for rows in runs:
            for doc in rows[i]["documents"]:
                per_kind.setdefault(kinds[doc["line"] - 1], []).append(doc["change"])
        cells = ", ".join(f"{k} {statistics.mean(v):+.1%}" for k, v in per_kind.items())
        print(f"{runs[0][i]['method']} {runs[0][i]['params'].get('strength', '')}: {cells}")


if __name__ == "__main__":
    main()
