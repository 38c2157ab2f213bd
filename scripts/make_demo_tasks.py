"""Make the small task copies shipped in the package for `adaptforge demo`.

Seeded, label-stratified samples of the shared task folders; task.json keeps name, description,
labels, source and license, and records the sizes and how the copy was made.

    python scripts/make_demo_tasks.py [--shared ../shared/data/tasks]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from adaptforge.pipelines.demo import DEMO_NEW_TASK, DEMO_TASKS, shipped_tasks_dir
from adaptforge.tasks import load_task, write_task

SIZES = {"train": 400, "dev": 100, "test": 300}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/tasks")
    args = parser.parse_args()
    for name in (*DEMO_TASKS, DEMO_NEW_TASK):
        task = load_task(args.shared / name)
        small = task.with_splits(**{split: task.sample(split, n, seed=0) for split, n in SIZES.items()})
        folder = write_task(small, shipped_tasks_dir() / name)
        meta = json.loads((folder / "task.json").read_text())
        meta["note"] = f"seeded stratified sample (seed 0) of the shared '{name}' task, sizes {SIZES}"
        (folder / "task.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
        print(folder, {s: len(small.split(s)) for s in SIZES})


if __name__ == "__main__":
    main()
