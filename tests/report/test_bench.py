"""Benchmark result files as tables: the two layouts the benchmarks write, and a note for anything else."""

from __future__ import annotations

import json

from adaptforge.report.bench import read_bench


def test_rows_and_results_layouts_become_tables_with_pointers():
    rows = {"setting": "3 adapters", "rows": [{"task": "a/b", "acc": 0.5, "trained": {"rank": 8}, "curve": [1, 2]}]}
    results = {
        "config": {"test_limit": 200},
        "results": {
            "zero-shot": {"test": {"t1": 0.5, "t2": 0.4}},
            "ties": {"params": {"density": 0.2}, "test": {"t1": 0.6, "t2": 0.55}, "retention": {"base": 1.0}},
        },
    }
    view = read_bench("res", [("a.json", json.dumps(rows)), ("b.json", json.dumps(results))])
    assert not view.notes
    first, second = view.tables
    assert first.title == "3 adapters" and first.columns == ("task", "acc", "trained.rank")  # lists are left out
    assert [c.pointer for c in first.rows[0] if c] == ["/rows/0/task", "/rows/0/acc", "/rows/0/trained/rank"]
    assert first.rows[0][0].text == "a/b" and first.rows[0][1].value == 0.5
    assert second.columns == ("method", "scores", "t1", "t2", "params") and second.title == "test_limit: 200"
    assert [r[0].text for r in second.rows] == ["zero-shot", "ties"]  # "retention" holds other keys: left out
    assert second.rows[1][2].pointer == "/results/ties/test/t1" and second.rows[1][-1].text == "density=0.2"


def test_unknown_files_are_skipped_with_a_note():
    files = [
        ("bad.json", "{oops"),
        ("list.json", "[1, 2]"),
        ("other.json", json.dumps({"x": 1})),
        ("empty-rows.json", json.dumps({"rows": []})),
        ("run.log", "text"),
        ("binary.json", None),
    ]
    view = read_bench("res", files)
    assert not view.tables
    notes = "\n".join(view.notes)
    assert "bad.json: line 1: invalid JSON (" in notes and "list.json: layout not recognised (top level: list)" in notes
    assert "other.json: layout not recognised (top level: x)" in notes and "empty-rows.json: layout" in notes
    assert "run.log: not a JSON result file" in notes and "binary.json: could not be read" in notes
