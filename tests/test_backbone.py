"""Default LoRA targets per model family (issue 19: no LoRA on the BERT pooler the scorer never runs)."""

from __future__ import annotations

import json

from helpers import random_delta, task_dir
from helpers import run_cli as run

from adaptforge.adapters import matches_target, write_adapter


def test_minilm_default_targets_cover_every_projection_but_the_pooler(minilm):
    targets = minilm.default_targets()
    assert targets == ("query", "key", "value", "output.dense", "intermediate.dense")
    hit = [n for n, _ in minilm.model.named_modules() if any(matches_target(n, t) for t in targets)]
    assert len(hit) == 6 * 6 and "pooler.dense" not in hit
    assert {n.split(".")[-1] for n in hit} == {"query", "key", "value", "dense"}


def test_an_adapter_made_before_with_the_pooler_still_imports_and_evaluates(minilm, tmp_path):
    """Adapters trained with the old default (a bare ``dense`` also hit ``pooler.dense``) keep working."""
    shapes = {
        n: tuple(m.weight.shape)
        for n, m in minilm.model.named_modules()
        if n.endswith(("query", "key", "value", "dense"))
    }
    assert "pooler.dense" in shapes
    delta = random_delta(shapes, rank=2, std=0.01)
    write_adapter(delta, tmp_path / "old", "all-MiniLM-L6-v2")
    lib = tmp_path / "lib"
    run("library", "import", tmp_path / "old", "--library", lib, "--name", "old", "--task", task_dir("sst2"))
    shown = json.loads(run("library", "show", "old", "--library", lib, "--json").stdout)
    assert "pooler.dense" in shown["targets"]
    result = json.loads(run("eval", task_dir("sst2"), "--library", lib, "-a", "old", "--limit", 8, "--json").stdout)
    assert result["results"][0]["n"] == 8
