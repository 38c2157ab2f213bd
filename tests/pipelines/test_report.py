"""``adaptforge report`` end to end: a real library (trained, evaluated, merged, composed, generated, one
multi-task run with dev curves) rendered to one HTML file, then read back as a browser would see it.

The page must fetch nothing, name every adapter and task, trace every number to a catalog row (or a recipe
field, a file, a benchmark file), replace its file atomically, and render in headless Chromium (slow test).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path

import pytest
from helpers import library_copy, small_task, snapshot
from helpers import run_cli as run

from adaptforge.evaluate import cvar
from adaptforge.library import Library

LIMIT = 12


class Page(HTMLParser):
    """Every element's tag and attributes, the text inside each ``num`` element, and the raw text."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.nums: list[tuple[dict[str, str], str]] = []
        self._open: list[tuple[int, dict[str, str], list[str]]] = []
        self._depth = 0
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        self.elements.append((tag, values))
        if tag in ("meta", "rect", "path", "use", "br", "img", "input", "link"):
            return
        self._depth += 1
        if "num" in values.get("class", "").split():
            self._open.append((self._depth, values, []))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, {k: v or "" for k, v in attrs}))

    def handle_endtag(self, tag: str) -> None:
        if tag in ("meta", "rect", "path", "use", "br", "img", "input", "link"):
            return
        if self._open and self._open[-1][0] == self._depth:
            _, values, text = self._open.pop()
            self.nums.append((values, "".join(text).strip()))
        self._depth -= 1

    def handle_data(self, data: str) -> None:
        for _, _, text in self._open:
            text.append(data)

    def with_attr(self, name: str, value: str | None = None) -> list[dict[str, str]]:
        return [a for _, a in self.elements if name in a and (value is None or a[name] == value)]


@pytest.fixture(scope="module")
def made(trained_library, tmp_path_factory, minilm):
    """A copy of the shared library with what every section shows: a TIES merge evaluated against each task's
    own adapter, zero-shot and an off-task adapter on every task, a retrieval composition and a generated adapter for
    a task the library lacks (movie_review), and a two-task run with dev curves; then its report."""
    from adaptforge.pipelines.evaluate import evaluate_grid
    from adaptforge.pipelines.train import train_into_library
    from adaptforge.tasks import load_task, write_task
    from adaptforge.train.config import TrainConfig

    root = tmp_path_factory.mktemp("report")
    lib = library_copy(trained_library, root / "lib")
    dirs = trained_library[1]
    tasks = [load_task(d) for d in dirs.values()]
    evals = [x for d in dirs.values() for x in ("--eval", d)]
    at = ["--library", lib.root, "--limit", LIMIT]
    # the merge's evaluation records each task's own adapter too; the grid adds zero-shot and one off-task adapter
    run("merge", "sst2-a", "subjectivity-a", "agnews-a", "--method", "ties", "--out", "m-ties", *evals, *at)
    evaluate_grid(tasks, minilm, lib, ["sst2-b"], zero_shot=True, split="test", limit=LIMIT)
    new_task = write_task(small_task("movie_review", n_train=16, n_test=LIMIT), root / "movie_review")
    run("compose", new_task, "--shots", "0", "--method", "retrieval", "--out", "mr-r", *at)
    description = "Is the sentiment of this movie review positive?"
    run(
        "generate",
        "--description",
        description,
        "--labels",
        "negative,positive",
        "--out",
        "gen-1",
        "--eval",
        new_task,
        *at,
    )
    cfg = TrainConfig(max_train=16, epochs=1, batch_size=8, rank=4, targets=("query", "value"), eval_every=2)
    train_into_library([tasks[0], tasks[2]], minilm, lib, "multi", replace(cfg, eval_examples=8), eval_limit=8)
    out = root / "site" / "report.html"
    out.parent.mkdir()
    run("report", "--library", lib.root, "--out", out)
    text = out.read_text(encoding="utf-8")
    return lib, out, text, Page(text)


def resolve(document: object, pointer: str) -> object:
    for part in pointer.split("/")[1:]:
        key = part.replace("~1", "/").replace("~0", "~")
        document = document[int(key)] if isinstance(document, list) else document[key]  # type: ignore[index]
    return document


def test_page_is_offline_and_names_every_adapter_and_task(made):
    lib, _, text, page = made
    for tag, values in page.elements:
        assert tag not in ("link", "iframe", "img", "object", "embed", "base"), f"<{tag}> could fetch"
        for name in ("src", "href", "xlink:href", "action", "poster", "srcset", "data"):
            assert not values.get(name, "#").strip() or values.get(name, "#").startswith("#"), (tag, name, values)
    lowered = text.lower()
    assert re.findall(r"url\(\s*['\"]?([^#'\")\s])", lowered) == []  # only url(#id): SVG clip paths on the page
    assert "@import" not in lowered and "fetch(" not in lowered and "xmlhttprequest" not in lowered
    assert "http://" not in lowered and "https://" not in lowered  # allow none, not even in a comment or xmlns
    assert page.with_attr("http-equiv", "Content-Security-Policy")[0]["content"].startswith("default-src 'none'")
    records = lib.list()
    assert {r.name for r in records} >= {"sst2-a", "sst2-b", "subjectivity-a", "agnews-a", "m-ties", "mr-r", "multi"}
    rows = {a["data-adapter-id"] for a in page.with_attr("data-adapter-id") if a.get("scope") == "row"}
    assert {r.id for r in records} <= rows  # a row of its own in the adapters table, at least
    for record in records:
        assert f">{record.name}<" in text
    tasks = {t for r in records for t in (r.task or "").split("+")} | {m.task for m in lib.metrics()}
    assert {a["data-task"] for a in page.with_attr("class", "task")} == tasks
    assert {"sst2", "subjectivity", "agnews", "movie_review"} <= tasks


def test_every_number_traces_to_the_catalog(made):
    lib, _, _, page = made
    rows = lib.metrics()
    records = {r.id: r for r in lib.list()}

    def row(adapter: str, base: str, task: str, split: str, metric: str, n: str):
        found = [
            m
            for m in rows
            if (m.adapter_id or "") == adapter
            and (m.base_fingerprint, m.task, m.split, m.metric, m.n) == (base, task, split, metric, int(n))
        ]
        assert found, (adapter, task, split, metric, n)
        return found

    sources: dict[str, int] = {}
    for values, shown in page.nums:
        source = values["data-source"]
        sources[source] = sources.get(source, 0) + 1
        value = float(values["data-value"])
        if source in ("metric", "delta", "ratio"):
            key = [values[k] for k in ("data-adapter-id", "data-base", "data-task", "data-split", "data-metric")]
            own = [m.value for m in row(*key, values["data-n"])]
            if source == "metric":
                assert value in own and shown == f"{value:.3f}"
            elif source == "delta":
                zero = [m.value for m in row("", *key[1:], values["data-zero-n"])]
                assert float(values["data-zero-value"]) in zero
                assert any(value == pytest.approx(a - float(values["data-zero-value"])) for a in own)
                assert shown == f"{value:+.3f}"
            else:
                ref = [m.value for m in row(values["data-ref-id"], *key[1:], values["data-n"])]
                assert any(value == pytest.approx(a / r) for a in own for r in ref)
        elif source in ("recipe", "derived"):
            recipe = records[values["data-adapter-id"]].recipe
            found = resolve(recipe, values["data-pointer"])
            if source == "recipe":
                assert float(found) == pytest.approx(value)  # type: ignore[arg-type]
        elif source == "file":
            path = records[values["data-adapter-id"]].path / values["data-file"]
            assert path.stat().st_size == int(value)
        elif source in ("mean", "min"):
            assert values["data-adapter-id"] == "" or values["data-adapter-id"] in records
        else:
            raise AssertionError(f"unknown data-source {source!r}: {values}")
        assert "title" in values and values["title"]
    assert sources.get("metric", 0) > 30 and sources.get("delta", 0) > 10 and sources.get("file", 0) > 10
    # every heatmap cell is a traced number, and every recorded test accuracy has its cell
    heat = [v for v, _ in page.nums if "cell" in v.get("class", "").split()]
    accuracy = {(m.adapter_id or "", m.task) for m in rows if m.split == "test" and m.metric == "accuracy"}
    shown = {(v["data-adapter-id"], v["data-task"]) for v in heat if v["data-split"] == "test"}
    assert accuracy <= shown | {(a, t) for a, t in accuracy if a == ""} and shown


def test_means_in_the_heatmap_are_of_their_row(made):
    _, _, text, _ = made
    table = text[text.index('id="heatmap-test"') : text.index("</table>", text.index('id="heatmap-test"'))]
    for line in table.split("<tr>")[1:]:
        cells = Page(line).nums
        accs = [float(v["data-value"]) for v, _ in cells if v["data-source"] == "metric"]
        if not accs:
            continue  # the header row
        means = [float(v["data-value"]) for v, _ in cells if v["data-source"] == "mean"]
        assert means == [pytest.approx(sum(accs) / len(accs))]


def test_merges_compositions_and_generated_adapters_show_up(made):
    lib, _, text, page = made
    merged, composed, generated = lib.get("m-ties"), lib.get("mr-r"), lib.get("gen-1")
    normalized = [v for v, _ in page.nums if v.get("data-metric") == "normalized_accuracy"]
    assert {v["data-task"] for v in normalized} == {"sst2", "subjectivity", "agnews"}
    assert all(v["data-adapter-id"] == merged.id for v in normalized)
    section = text[text.index('id="merges-table"') : text.index('id="merge-chart"')]
    assert ">m-ties<" in section and ">ties<" in section and "sst2-a, subjectivity-a, agnews-a" in section
    assert '<svg role="img" aria-label="normalized accuracy of merged adapters per task"' in text
    new = text[text.index('id="new-tasks-table"') : text.index('id="new-task-chart"')]
    for record in (composed, generated):
        assert f'data-adapter-id="{record.id}"' in new and f">{record.kind}<" in new
    deltas = [v for v, _ in page.nums if v["data-source"] == "delta" and v["data-task"] == "movie_review"]
    assert {v["data-adapter-id"] for v in deltas} >= {composed.id, generated.id}
    # the lineage graph: one edge per parent, named by the child's method
    edges = {(e["data-parent-id"], e["data-child-id"], e["data-method"]) for e in page.with_attr("data-child-id")}
    for record in (merged, composed, generated):
        assert {(p, record.id, record.method) for p in record.parents} <= edges
    drawn = {a["data-adapter-id"] for t, a in page.elements if t == "g" and "data-adapter-id" in a}
    assert {merged.id, composed.id, generated.id, *merged.parents} <= drawn


def test_training_curves_draws_and_cvar(made):
    lib, _, text, page = made
    multi = lib.get("multi")
    runs = {a["data-adapter-id"] for t, a in page.elements if t == "details" and "training-run" in a.get("class", "")}
    assert runs == {r.id for r in lib.list() if r.kind == "train"}
    block = text[re.search(f'<details[^>]*data-adapter-id="{multi.id}"', text).start() :]  # type: ignore[union-attr]
    block = block[: block.index("</details>")]
    for title in ("training loss", "dev accuracy", "batches drawn per task", "tail of dev accuracy over tasks"):
        assert f">{title}<" in block
    draws = {v["data-pointer"]: float(v["data-value"]) for v, _ in Page(block).nums if "/draws/" in v["data-pointer"]}
    assert draws == {f"/draws/{t}": float(n) for t, n in multi.recipe["draws"].items()}
    tail = [v for v, _ in Page(block).nums if v["data-source"] == "derived"]
    last = [curve[-1][2] for curve in multi.recipe["curves"].values()]
    assert len(tail) == 1 and float(tail[0]["data-value"]) == pytest.approx(cvar(last))


def test_report_replaces_its_file_atomically(tmp_path, monkeypatch):
    from adaptforge import durable
    from adaptforge.pipelines import report as pipeline

    lib = Library(tmp_path / "lib")
    out = tmp_path / "report.html"
    out.write_text("old report")
    fsynced = []
    real_fsync = os.fsync
    monkeypatch.setattr(durable.os, "fsync", lambda fd: fsynced.append(fd) or real_fsync(fd))
    outcome = pipeline.write_report(pipeline.ReportConfig(library=lib.root, out=out))
    assert outcome.path == out and out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>") and fsynced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lib", "report.html"]
    new = out.read_bytes()

    def crash(src, dst):  # the rename never happens: a crash between writing and publishing
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(durable.os, "replace", crash)
    with pytest.raises(pipeline.ReportError, match=r"could not write .*report\.html.*unchanged"):
        pipeline.write_report(pipeline.ReportConfig(library=lib.root, out=out))
    assert out.read_bytes() == new and sorted(p.name for p in tmp_path.iterdir()) == ["lib", "report.html"]
    monkeypatch.undo()

    def broken(data, tail):
        raise RuntimeError("renderer died")

    monkeypatch.setattr(pipeline, "render", broken)
    with pytest.raises(RuntimeError):
        pipeline.write_report(pipeline.ReportConfig(library=lib.root, out=out))
    assert out.read_bytes() == new and sorted(p.name for p in tmp_path.iterdir()) == ["lib", "report.html"]


def test_empty_library_gives_a_page_that_says_so(tmp_path):
    Library(tmp_path / "empty")
    out = tmp_path / "empty.html"
    result = run("report", "--library", tmp_path / "empty", "--out", out, "--json")
    assert json.loads(result.stdout)["adapters"] == 0
    text = out.read_text(encoding="utf-8")
    assert 'id="empty-library"' in text and "holds no adapters yet" in text and 'id="heatmap-' not in text


def test_bench_folder_is_shown_and_unknown_files_are_notes(tmp_path):
    lib = Library(tmp_path / "lib")
    bench = tmp_path / "bench"
    shutil.copytree(Path(__file__).resolve().parents[2] / "benchmarks" / "results", bench)
    (bench / "broken.json").write_text("{not json")
    (bench / "odd.json").write_text(json.dumps({"something": [1, 2]}))
    (bench / "sub").mkdir()
    out = tmp_path / "r.html"
    result = json.loads(run("report", "--library", lib.root, "--bench", bench, "--out", out, "--json").stdout)
    notes = "\n".join(result["notes"])
    assert (
        "broken.json: line 1: invalid JSON" in notes
        and "odd.json: layout not recognised" in notes
        and "sub: a folder" in notes
    )
    page = Page(out.read_text(encoding="utf-8"))
    cells = [v for v, _ in page.nums if v["data-source"] == "bench"]
    assert {v["data-file"] for v in cells} >= {"lora_quality.json", "merge_quality.json"}
    for values in cells[:50]:
        data = json.loads((bench / values["data-file"]).read_text())
        assert float(resolve(data, values["data-pointer"])) == pytest.approx(float(values["data-value"]))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--library", "{tmp}/nowhere", "--out", "{tmp}/r.html"], "no adapter library"),
        (["--library", "{lib}", "--out", "{tmp}/missing/r.html"], "does not exist"),
        (["--library", "{lib}", "--out", "{tmp}"], "is a folder"),
        (["--library", "{lib}", "--out", "{tmp}/r.html", "--bench", "{tmp}/no-bench"], "not a folder"),
        (["--library", "{lib}", "--out", "{lib}/catalog.sqlite"], "inside the library's own files"),
        (["--library", "{lib}", "--out", "{lib}/adapters/r.html"], "inside the library's own files"),
    ],
)
def test_bad_inputs_are_named_and_write_nothing(made, tmp_path, args, message):
    lib = made[0]
    before = sorted(tmp_path.iterdir()), snapshot(lib.root)
    filled = [a.format(tmp=tmp_path, lib=lib.root) for a in args]
    result = run("report", *filled, ok=False)
    assert result.exit_code == 2 and message in " ".join(result.output.split())
    assert (sorted(tmp_path.iterdir()), snapshot(lib.root)) == before


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("headless Chromium is needed for this test: apt-get install -y chromium (make test-all installs it)")


@pytest.mark.slow
def test_page_renders_in_headless_chromium(made, tmp_path):
    """A real browser opens the file offline: the script runs (sortable tables ready), the heatmap is in the
    DOM, and the screenshot is not blank and shows the heatmap's colours."""
    from PIL import Image

    _, out, _, _ = made
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run"]
    base = [chromium(), *flags, f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,1400"]
    dom = subprocess.run([*base, "--dump-dom", out.as_uri()], capture_output=True, text=True, timeout=180)
    assert 'data-report-ready="1"' in dom.stdout, dom.stderr[-2000:]
    assert 'id="heatmap-test"' in dom.stdout and "sortable sort-ready" in dom.stdout
    shot = tmp_path / "shot.png"
    subprocess.run([*base, f"--screenshot={shot}", out.as_uri()], capture_output=True, timeout=180, check=True)
    image = Image.open(shot).convert("RGB")
    assert image.size == (1280, 1400)
    pixels = list(image.getdata())
    grey = [sum(p) / 3 for p in pixels]
    mean = sum(grey) / len(grey)
    variance = sum((g - mean) ** 2 for g in grey) / len(grey)
    assert variance > 100, f"the screenshot looks blank (variance {variance:.1f})"
    # the heatmap is the first colourful thing on the page: viridis cells are strongly saturated
    saturated = sum(1 for r, g, b in pixels if max(r, g, b) - min(r, g, b) > 60)
    colours = {(r // 16, g // 16, b // 16) for r, g, b in pixels if max(r, g, b) - min(r, g, b) > 60}
    assert saturated > 5000 and len(colours) >= 5, (saturated, len(colours))
    assert not math.isnan(mean)
    # every chart's legend sits outside its plotting areas, in text a person can read: measured by the browser
    # on a copy of the page with a script that writes what it found into the DOM
    checked = tmp_path / "checked.html"
    checked.write_text(out.read_text(encoding="utf-8").replace("</body>", LEGEND_CHECK + "</body>"), encoding="utf-8")
    dom = subprocess.run([*base, "--dump-dom", checked.as_uri()], capture_output=True, text=True, timeout=180).stdout
    found = re.search(r'data-legend-check="([^"]*)"', dom)
    assert found is not None, dom[-2000:]
    legends, problems = found.group(1).split(";", 1)
    assert int(legends) >= 3 and problems == "", problems  # the merge, new-task and training charts


LEGEND_CHECK = """<script>
(function () {
  var legends = 0, problems = [];
  document.querySelectorAll("svg").forEach(function (svg) {
    var plots = [];
    svg.querySelectorAll('g[id^="axes_"]').forEach(function (axes) {
      var patch = axes.querySelector('g[id^="patch_"] path');
      if (patch) { plots.push(patch.getBoundingClientRect()); }
    });
    svg.querySelectorAll('g[id^="legend_"]').forEach(function (legend) {
      legends += 1;
      var box = legend.getBoundingClientRect();
      plots.forEach(function (p) {
        if (box.left < p.right && p.left < box.right && box.top < p.bottom && p.top < box.bottom) {
          problems.push(svg.getAttribute("aria-label") + ": legend over the data");
        }
      });
      legend.querySelectorAll("text").forEach(function (t) {
        var height = t.getBoundingClientRect().height;
        if (height < 9) { problems.push(svg.getAttribute("aria-label") + ": legend text " + height + "px high"); }
      });
    });
  });
  document.body.setAttribute("data-legend-check", legends + ";" + problems.join(" | "));
})();
</script>"""
