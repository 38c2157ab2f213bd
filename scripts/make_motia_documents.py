"""Build the structured documents of ``benchmarks/motia_llm.py`` (dev and test, never overlapping) from local
copies of three public repositories; see ``benchmarks/data/motia/README.md`` for sources and licences.

    python scripts/make_motia_documents.py --click CLICK_CHECKOUT --loghub LOGHUB_CHECKOUT --out benchmarks/data/motia

Four kinds of document, each a contiguous piece of one file of about ``CHARS`` characters cut at a line end:
source code (click's modules), system logs (loghub's 2k samples), tables (loghub's structured CSVs of other
systems than the logs, header kept) and templated records (click's changelog, whole release sections). Dev
and test take different files (or different changelog sections), so no line is in both.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

CHARS = 3000  # about 700-1,000 SmolLM2 tokens: the benchmark keeps the first 512

CODE = {"dev": ["formatting.py", "exceptions.py"], "test": ["parser.py", "termui.py", "types.py"]}
LOGS = {"dev": ["Apache", "HDFS"], "test": ["OpenSSH", "Zookeeper", "Linux"]}
TABLES = {"dev": ["HealthApp", "Proxifier"], "test": ["Mac", "Thunderbird", "Windows"]}


def head(text: str, chars: int = CHARS, keep: int = 0) -> str:
    """The first lines of ``text`` up to ``chars`` characters (at least ``keep`` + 1 lines)."""
    lines, size = [], 0
    for line in text.splitlines():
        if size >= chars and len(lines) > keep:
            break
        lines.append(line)
        size += len(line) + 1
    return "\n".join(lines)


def changelog_sections(text: str) -> list[str]:
    """Release sections (``## Version ...``) grouped in order into pieces of at least ``CHARS`` characters."""
    sections = [s.strip() for s in re.split(r"(?m)^(?=## Version )", text) if s.startswith("## Version ")]
    pieces, current = [], ""
    for section in sections:
        current = f"{current}\n\n{section}".strip()
        if len(current) >= CHARS:
            pieces.append(head(current))
            current = ""
    return pieces


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--click", type=Path, required=True, help="a checkout of pallets/click")
    ap.add_argument("--loghub", type=Path, required=True, help="a checkout of logpai/loghub")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    records = changelog_sections((args.click / "CHANGES.md").read_text())
    split_records = {"dev": records[3:5], "test": records[0:3]}
    args.out.mkdir(parents=True, exist_ok=True)
    for split in ("dev", "test"):
        docs = []
        for name in CODE[split]:
            docs.append(("code", f"click/src/click/{name}", head((args.click / "src/click" / name).read_text())))
        for name in LOGS[split]:
            path = args.loghub / name / f"{name}_2k.log"
            docs.append(("log", f"loghub/{name}/{name}_2k.log", head(path.read_text())))
        for name in TABLES[split]:
            path = args.loghub / name / f"{name}_2k.log_structured.csv"
            docs.append(("table", f"loghub/{name}/{name}_2k.log_structured.csv", head(path.read_text(), keep=1)))
        for i, text in enumerate(split_records[split]):
            docs.append(("records", f"click/CHANGES.md#{split}-{i}", text))
        with open(args.out / f"{split}.jsonl", "w") as f:
            for kind, source, text in docs:
                f.write(json.dumps({"text": text, "kind": kind, "source": source}) + "\n")


if __name__ == "__main__":
    main()
