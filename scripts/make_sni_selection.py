"""Rebuild the capped Super-NaturalInstructions selection under ``benchmarks/data/sni/`` from SNI task files.

Give it a folder holding ``taskNNN_*.json`` files from allenai/natural-instructions (``tasks/``); it writes one
generation task folder per selected task (``task.json`` + ``train/dev/test.jsonl``, ``{"prompt", "response"}``):

    python scripts/make_sni_selection.py SNI_TASKS_DIR [--commit [STEM=]SHA ...] [--cap 300]

Rule (benchmarks/data/sni/README.md): per task, instances in file order, keep those whose input has at most
``MAX_INPUT_WORDS`` words and whose first output at most ``MAX_OUTPUT_WORDS`` words, drop repeated inputs, keep the
first ``cap``, shuffle them with seed 0 and split 2/3 train, 1/6 dev, 1/6 test. The prompt is the instance input,
the response its first listed output, the description the task's Definition.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from adaptforge.tasks import Example, Task, write_task

OUT = Path(__file__).resolve().parents[1] / "benchmarks" / "data" / "sni"
REPO = "https://github.com/allenai/natural-instructions"
LICENSE = "Apache-2.0"
MAX_INPUT_WORDS = 150
MAX_OUTPUT_WORDS = 12
SEED = 0
# The selection (the rule in the README says why these): SNI task file stems.
TASKS = (
    "task1146_country_capital",
    "task1147_country_currency",
    "task1152_bard_analogical_reasoning_causation",
    "task1153_bard_analogical_reasoning_affordance",
    "task1154_bard_analogical_reasoning_travel",
    "task1156_bard_analogical_reasoning_tools",
    "task1158_bard_analogical_reasoning_manipulating_items",
    "task1159_bard_analogical_reasoning_containers",
    "task1317_country_calling_code",
    "task1320_country_domain_tld",
    "task1447_drug_extraction_ade",
    "task1448_disease_entity_extraction_ncbi_dataset",
    "task1483_chemical_extraction_chemprot_dataset",
    "task1506_celebrity_minimal_dob_span",
    "task1509_evalution_antonyms",
    "task1510_evalution_relation_extraction",
    "task1585_root09_hypernym_generation",
)


def _definition(data: dict, path: Path) -> str:
    definition = data.get("Definition")
    if isinstance(definition, list):
        definition = "\n".join(str(x).strip() for x in definition)
    if not isinstance(definition, str) or not definition.strip():
        raise SystemExit(f"error: {path}: field Definition: expected a non-empty string")
    return definition.strip()


def select(path: Path, cap: int) -> list[Example]:
    """The capped, filtered, de-duplicated instances of one SNI task file, in file order."""
    data = json.loads(path.read_text(encoding="utf-8"))
    seen: set[str] = set()
    kept: list[Example] = []
    for i, inst in enumerate(data.get("Instances") or []):
        text, outputs = inst.get("input"), inst.get("output")
        if not isinstance(text, str) or not isinstance(outputs, list) or not outputs:
            raise SystemExit(f"error: {path}: field Instances[{i}]: expected input string and output list")
        text, answer = text.strip(), str(outputs[0]).strip()
        if not text or not answer or text in seen:
            continue
        if len(text.split()) > MAX_INPUT_WORDS or len(answer.split()) > MAX_OUTPUT_WORDS:
            continue
        seen.add(text)
        kept.append(Example(text, answer))
        if len(kept) == cap:
            break
    return kept


def build(path: Path, cap: int, commit: str) -> Task:
    data = json.loads(path.read_text(encoding="utf-8"))
    examples = select(path, cap)
    random.Random(SEED).shuffle(examples)
    n_dev = n_test = len(examples) // 6
    splits = {
        "train": tuple(examples[: len(examples) - n_dev - n_test]),
        "dev": tuple(examples[len(examples) - n_dev - n_test : len(examples) - n_test]),
        "test": tuple(examples[len(examples) - n_test :]),
    }
    origin = ", ".join(data.get("Source") or [])
    source = f"Super-NaturalInstructions {path.stem} ({REPO}, commit {commit}); original data: {origin}"
    return Task(path.stem, _definition(data, path), (), splits, source, LICENSE, "1", task_type="generation")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sni_dir", type=Path, help="folder with the SNI taskNNN_*.json files")
    parser.add_argument(
        "--commit",
        action="append",
        default=[],
        help="the natural-instructions commit the files come from: SHA for all, or STEM=SHA for one task (repeatable)",
    )
    parser.add_argument("--cap", type=int, default=300)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    commits = dict(c.split("=", 1) if "=" in c else ("", c) for c in args.commit)
    for stem in TASKS:
        path = args.sni_dir / f"{stem}.json"
        if not path.is_file():
            print(f"skipped {stem}: no {path.name} in {args.sni_dir}")
            continue
        task = build(path, args.cap, commits.get(stem, commits.get("", "unknown")))
        write_task(task, args.out / stem)
        sizes = {s: len(e) for s, e in task.splits.items()}
        print(f"{stem}: {sizes}")


if __name__ == "__main__":
    main()
