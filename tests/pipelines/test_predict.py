"""``adaptforge predict``: the same predictions `eval` scores, from tasks, JSONL and plain text."""

from __future__ import annotations

import json

import pytest
from helpers import run_cli

from adaptforge.evaluate import evaluate, predict_logits
from adaptforge.scorers import make_scorer
from adaptforge.tasks import load_task


def test_predictions_are_the_ones_eval_scores(trained_library, minilm, tmp_path):
    lib, dirs = trained_library
    out = tmp_path / "pred.jsonl"
    run_cli("predict", dirs["sst2"], "--library", lib.root, "--adapter", "sst2-a", "--out", out)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    task = load_task(dirs["sst2"])
    assert [r["text"] for r in rows] == [ex.text for ex in task.split("test")]
    delta, _ = lib.load("sst2-a")
    with minilm.applied(delta) as model:
        logits, gold = predict_logits(make_scorer(minilm), task, "test", model)
    assert [r["label"] for r in rows] == [task.labels[i] for i in logits.argmax(-1).tolist()]
    accuracy = sum(r["label"] == r["gold"] for r in rows) / len(rows)
    assert accuracy == pytest.approx(evaluate(make_scorer(minilm), task, "test", delta).accuracy)
    for r in rows:
        assert set(r["scores"]) == set(task.labels) and sum(r["scores"].values()) == pytest.approx(1, abs=1e-5)
    assert not list(tmp_path.glob(".tmp-*"))


def test_plain_inputs_take_labels_from_the_adapter_and_bad_lines_are_named(trained_library, tmp_path):
    lib, dirs = trained_library
    texts = [ex.text for ex in load_task(dirs["sst2"]).split("test")[:5]]
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n")
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    from_txt = run_cli("predict", tmp_path / "in.txt", "--library", lib.root, "--adapter", "sst2-a").stdout
    from_jsonl = run_cli("predict", tmp_path / "in.jsonl", "--library", lib.root, "--adapter", "sst2-a").stdout
    a = [json.loads(line) for line in from_txt.splitlines()]
    b = [json.loads(line) for line in from_jsonl.splitlines()]
    assert a == b and len(a) == 5 and set(a[0]["scores"]) == set(load_task(dirs["sst2"]).labels)
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"txt": "oops"}\n')
    bad = run_cli("predict", tmp_path / "bad.jsonl", "--library", lib.root, "--adapter", "sst2-a", ok=False)
    assert bad.exit_code == 2 and "bad.jsonl:2: expected an object with a string field 'text'" in bad.output
