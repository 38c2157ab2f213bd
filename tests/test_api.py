"""The Python API (``adaptforge.api``) through its shipped example: train, load, score, merge, evaluate on the real
MiniLM; what ``score`` predicts is what ``evaluate`` counts."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from adaptforge import api

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "python_api.py"


@pytest.mark.slow
def test_the_python_api_example_runs_and_score_agrees_with_evaluate(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("python_api_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    got = example.main(str(tmp_path / "lib"), max_train=16)
    printed = capsys.readouterr().out
    assert "trained sst2-lora" in printed and "reviews (made from 2 adapters)" in printed

    lib = api.open_library(tmp_path / "lib", create=False)
    assert sorted(r.name for r in lib.list()) == ["reviews", "sst2-lora", "subjectivity-lora"]
    assert [p.name for p in lib.lineage("reviews")] == ["sst2-lora", "subjectivity-lora"]
    task = api.shipped_task("sst2")
    assert set(got["predictions"]) <= set(task.labels)

    model = api.load_model()
    merged = api.load_adapter(lib, "reviews", model)
    examples = task.sample("test", 64, seed=0)  # the sample evaluate(limit=64) scores
    scored = api.score(model, task, [e.text for e in examples], merged)
    hits = sum(p == e.label for p, e in zip(scored.predictions, examples, strict=True))
    assert hits / len(examples) == pytest.approx(got["accuracy"])
    assert scored.probabilities.sum(-1).allclose(scored.probabilities.new_ones(len(examples)))


def test_api_refusals_are_one_clear_error():
    with pytest.raises(api.AdaptforgeError, match="no shipped task 'nope'; shipped: .*sst2"):
        api.shipped_task("nope")
