"""``adaptforge report``: what a library knows, as one self-contained HTML file.

Reads the catalog (records, every metric row, lineage), what only the disk knows (each adapter's files and
sizes) and, optionally, a folder of benchmark results; :mod:`adaptforge.report` turns that into the page.
Nothing is evaluated or recomputed from tensors: the page shows what the catalog recorded, so each number
can name the row it came from. Inputs are checked before any work, and the file is written to a temporary
file beside the target, fsynced and renamed over it, so a reader (or a crash) sees the old report or the
whole new one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from adaptforge.adapters import CONFIG_FILE, WEIGHTS_FILE
from adaptforge.core import AdaptforgeError
from adaptforge.durable import write_file
from adaptforge.evaluate import cvar
from adaptforge.library import CATALOG_FILE, AdapterRecord, Library
from adaptforge.pipelines.common import Notify, reporter
from adaptforge.report import BenchView, FileInfo, ReportInput, read_bench, render
from adaptforge.report.views import ACCURACY, ROUTED_ACCURACY

MAX_BENCH_FILE = 20 * 1024 * 1024  # a results file larger than this is not a table anyone reads in a page


class ReportError(AdaptforgeError):
    """A report that cannot be written as asked; the message names the path."""


@dataclass(frozen=True)
class ReportConfig:
    """Where to read (``library``, optional ``bench`` folder of result files) and the page to write (``out``)."""

    library: Path
    out: Path
    bench: Path | None = None


@dataclass(frozen=True)
class ReportOutcome:
    path: Path
    adapters: int
    metrics: int
    size: int
    notes: tuple[str, ...]


def check_output(out: Path) -> Path:
    """The resolved output path, refused when it is a folder or its folder does not exist."""
    out = Path(out).expanduser()
    if out.is_dir():
        raise ReportError(f"--out {out} is a folder; give a file name such as {out / 'report.html'}")
    parent = out.parent.resolve()
    if not parent.is_dir():
        raise ReportError(f"--out {out}: the folder {parent} does not exist; create it first")
    return parent / out.name


def check_outside_library(out: Path, library: Library) -> None:
    """The page may sit beside the catalog, never replace it or land in a folder the library manages."""
    root = library.root
    managed = out.name.startswith(CATALOG_FILE) and out.parent == root
    if managed or (root in out.parents and out.parent != root):
        raise ReportError(
            f"--out {out} is inside the library's own files ({root}); write the report elsewhere, e.g. {root.parent}"
        )


def write_atomic(path: Path, payload: bytes) -> None:
    """The page, written atomically (:func:`adaptforge.durable.write_file`); an OS error names the path."""
    try:
        write_file(path, payload)
    except OSError as err:
        raise ReportError(f"could not write {path}: {err.strerror or err}; the previous file is unchanged") from None


def adapter_files(record: AdapterRecord) -> tuple[tuple[FileInfo, ...], str | None]:
    """The files in an adapter's folder with their sizes; the PEFT files are always listed (size ``None``
    when missing), and a note when the folder or one of them is gone."""
    found: dict[str, int | None] = {CONFIG_FILE: None, WEIGHTS_FILE: None}
    if record.path.is_dir():
        for entry in sorted(record.path.iterdir()):
            if entry.is_file():
                found[entry.name] = entry.stat().st_size
    missing = [name for name, size in found.items() if size is None]
    note = None
    if missing:
        note = (
            f"adapter {record.name!r} ({record.id}): {', '.join(missing)} missing in {record.path} "
            "(adaptforge library verify)"
        )
    return tuple(FileInfo(name, size) for name, size in sorted(found.items())), note


def read_bench_folder(folder: Path) -> BenchView:
    """Every file directly in ``folder``, read as text (sub-folders, huge and undecodable files become notes)."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ReportError(f"--bench {folder}: not a folder of benchmark results (e.g. benchmarks/results)")
    files: list[tuple[str, str | None]] = []
    skipped = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if not entry.is_file():
            skipped.append(f"{entry.name}: a folder; skipped (only files directly in {folder} are read)")
            continue
        if entry.stat().st_size > MAX_BENCH_FILE:
            skipped.append(f"{entry.name}: larger than {MAX_BENCH_FILE >> 20} MiB; skipped")
            continue
        try:
            files.append((entry.name, entry.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError):
            files.append((entry.name, None))
    view = read_bench(str(folder.resolve()), files)
    return BenchView(view.folder, view.tables, (*skipped, *view.notes))


def gather(library: Library, bench: BenchView | None = None) -> ReportInput:
    """What the page shows, read from the library in one pass (records, metric rows, files, references)."""
    records = library.list()
    metrics = library.metrics()
    notes = []
    files = {}
    for record in records:
        files[record.id], note = adapter_files(record)
        if note:
            notes.append(note)
    references = {}
    for record in records:
        if record.kind != "merge":
            continue
        evaluated = {m.task for m in metrics if m.adapter_id == record.id and m.metric in (ACCURACY, ROUTED_ACCURACY)}
        for task in sorted(evaluated):
            own = library.task_adapter(task, record.base_fingerprint, prefer=record.parents)
            if own is not None:
                references[(record.id, task)] = own.id
    return ReportInput(
        library=str(library.root),
        generated=time.time(),
        adapters=tuple(records),
        metrics=tuple(metrics),
        files=files,
        references=references,
        bench=bench,
        notes=tuple(notes),
    )


def write_report(config: ReportConfig, notify: Notify | None = None) -> ReportOutcome:
    """Check the output and bench paths, open the library (never created), gather, render, write atomically."""
    say = reporter(notify)
    out = check_output(config.out)
    library = Library(config.library, create=False)
    check_outside_library(out, library)
    bench = read_bench_folder(config.bench) if config.bench is not None else None
    say(f"reading {library.root}")
    data = gather(library, bench)
    say(f"rendering {len(data.adapters)} adapter(s), {len(data.metrics)} metric row(s)")
    page = render(data, tail=cvar).encode("utf-8")
    write_atomic(out, page)
    say(f"wrote {out}")
    notes = (*data.notes, *(bench.notes if bench is not None else ()))
    return ReportOutcome(out, len(data.adapters), len(data.metrics), len(page), notes)
