"""Build the structured documents of ``benchmarks/motia_llm.py`` (dev and test, never overlapping) from local
copies of five openly licensed public repositories; see ``benchmarks/data/motia/README.md`` for sources, commits
and licences.

    python scripts/make_motia_documents.py --checkouts DIR --out benchmarks/data/motia

``DIR`` holds one checkout per repository, named ``click`` (pallets/click), ``lnav`` (tstack/lnav), ``co2-ppm``,
``gdp`` and ``population`` (datasets/...). Four kinds of document, each a contiguous piece of one file of about
``CHARS`` characters cut at a line end: source code (click's modules), logs (lnav's test log files), tables
(CSV/TSV, header kept) and templated records (click's changelog, whole release sections). Dev and test take
different files (or different changelog sections), so no line is in both.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

CHARS = 3000  # about 700-1,000 SmolLM2 tokens: the benchmark keeps the first 512

CODE = {"dev": ["formatting.py", "exceptions.py"], "test": ["parser.py", "termui.py", "types.py"]}
LOGS = {  # (repository, path)
    "dev": [("lnav", "test/logfile_haproxy.0"), ("lnav", "test/logfile_uwsgi.0")],
    "test": [
        ("lnav", "test/logfile_partitions.0"),
        ("lnav", "test/logfile_strace_log.2"),
        ("lnav", "test/logfile_caddy_log.0"),
    ],
}
TABLES = {
    "dev": [("population", "data/population.csv"), ("co2-ppm", "data/co2-mm-gl.csv")],
    "test": [("gdp", "data/gdp.csv"), ("co2-ppm", "data/co2-mm-mlo.csv"), ("lnav", "test/logfile_bro_conn.log.0")],
}


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
    ap.add_argument("--checkouts", type=Path, required=True, help="a folder of checkouts named as above")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    click = args.checkouts / "click"
    records = changelog_sections((click / "CHANGES.md").read_text())
    split_records = {"dev": records[3:5], "test": records[0:3]}
    args.out.mkdir(parents=True, exist_ok=True)
    for split in ("dev", "test"):
        docs = []
        for name in CODE[split]:
            docs.append(("code", f"click/src/click/{name}", head((click / "src/click" / name).read_text())))
        for repo, path in LOGS[split]:
            docs.append(("log", f"{repo}/{path}", head((args.checkouts / repo / path).read_text())))
        for repo, path in TABLES[split]:
            docs.append(("table", f"{repo}/{path}", head((args.checkouts / repo / path).read_text(), keep=1)))
        for i, text in enumerate(split_records[split]):
            docs.append(("records", f"click/CHANGES.md#{split}-{i}", text))
        with open(args.out / f"{split}.jsonl", "w") as f:
            for kind, source, text in docs:
                f.write(json.dumps({"text": text, "kind": kind, "source": source}) + "\n")


if __name__ == "__main__":
    main()
