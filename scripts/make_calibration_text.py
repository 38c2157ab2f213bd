"""Make the open-domain calibration text shipped in the package for `adaptforge prune`.

A seeded sample of the train texts of four open-domain sources in the shared tasks (labels dropped):
DBpedia abstracts (encyclopedic), AG News (news), BoolQ passages with their questions (Wikipedia), and
TREC questions. 64 texts each, 256 in all: a small stand-in for the C4 slices the pruning papers calibrate on.

    python scripts/make_calibration_text.py [--shared ../shared/data/tasks]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from adaptforge.prune.calibration import GENERAL_SOURCES, shipped_general_path
from adaptforge.tasks import load_task

PER_SOURCE = 64


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/tasks")
    args = parser.parse_args()
    path = shipped_general_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for name in GENERAL_SOURCES:
        for example in load_task(args.shared / name).sample("train", PER_SOURCE, seed=0):
            lines.append(json.dumps({"text": example.text, "source": name}, ensure_ascii=False))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(path, len(lines))


if __name__ == "__main__":
    main()
