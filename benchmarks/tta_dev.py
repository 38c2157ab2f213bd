"""Choosing em-prior's defaults on dev splits, never on the test inputs benchmarks/tta.py reports (issue 16).

For every shift pair of benchmarks/tta.py (same source adapters, from --work/library), the whole *dev* split of
the target in its order is adapted on with em-prior in each candidate setting (granularity stream or batch of
--batch-size, source prior from the adapter task's train split or uniform); accuracy before and after, and
resets, per pair and mean. The chosen defaults are the setting with the best mean change on these dev splits.

python benchmarks/tta_dev.py --threads 1 --json benchmarks/results/tta_dev.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from tta import SHARED, SHIFT, parse_pair  # noqa: E402

from adaptforge.backbone import Backbone  # noqa: E402
from adaptforge.library import Library  # noqa: E402
from adaptforge.pipelines.tta import tta_on_task  # noqa: E402
from adaptforge.tasks import load_task  # noqa: E402

SETTINGS = {
    "stream/train": ("stream", {"source_prior": "train"}),
    "stream/uniform": ("stream", {"source_prior": "uniform"}),
    "batch/train": ("batch", {"source_prior": "train"}),
    "batch/uniform": ("batch", {"source_prior": "uniform"}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", default=SHIFT)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--work", type=Path, default=Path("out/tta"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    backbone = Backbone.load()
    lib = Library(args.work / "library", create=False)
    pairs = [p for p in args.pairs.split(",") if p]
    pool = [load_task(SHARED / s) for s in sorted({parse_pair(p)[1] for p in pairs})]
    rows = []
    for pair in pairs:
        _, source, target = parse_pair(pair)
        task = load_task(SHARED / target)
        for label, (granularity, params) in SETTINGS.items():
            o = tta_on_task(
                task, lib, source, method="em-prior", params=params, granularity=granularity,
                batch_size=args.batch_size, split="dev", pool=pool, backbone=backbone,
            )  # fmt: skip
            rows.append(
                {"pair": pair, "setting": label, "n": o.n, "before": o.before.accuracy, "after": o.after.accuracy,
                 "resets": o.run.resets}
            )  # fmt: skip
            print(f"{pair} {label}: {o.before.accuracy:.3f} -> {o.after.accuracy:.3f}, resets {o.run.resets}")
    print("\n| setting | mean Δ dev acc (pts) | worst pair Δ | resets |\n|---|---|---|---|")
    for label in SETTINGS:
        mine = [r for r in rows if r["setting"] == label]
        deltas = [100 * (r["after"] - r["before"]) for r in mine]
        print(f"| {label} | {statistics.mean(deltas):+.1f} | {min(deltas):+.1f} | {sum(r['resets'] for r in mine)} |")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"config": {**vars(args), "work": str(args.work), "json": str(args.json)},
                                         "rows": rows}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
