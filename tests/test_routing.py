"""The Router contract, for every registered router: describe -> store -> rebuild -> evaluate is exact.

A routed adapter's stored tensors are only its static fallback; ``adaptforge eval`` (and later ``serve``)
must rebuild its router from the recipe and measure what its maker measured.
"""

from __future__ import annotations

import json
import sqlite3

import pytest
import torch
from helpers import minilm_delta, small_task

from adaptforge.library import Library
from adaptforge.lora.factors import fold
from adaptforge.pipelines.evaluate import evaluate_grid
from adaptforge.provenance import read as made_by
from adaptforge.routing import RECIPE_KEY, ROUTERS, routed_settings, stored_router, stored_settings
from adaptforge.scorers import make_scorer


def test_every_known_router_is_registered() -> None:
    assert set(ROUTERS.names()) >= {"arrow", "entropy"}


@pytest.mark.parametrize("name", ROUTERS.names())
def test_a_stored_routed_adapter_evaluates_as_it_did_when_made(minilm, tmp_path, name: str) -> None:
    lib = Library(tmp_path / "lib")
    deltas = [minilm_delta(seed) for seed in range(3)]
    ids = [lib.add(d, name=f"a{i}", base=minilm).id for i, d in enumerate(deltas)]
    router = ROUTERS.get(name)(deltas)
    assert router.describe()["router"] == name
    task = small_task("sst2", n_train=8, n_test=12)
    scorer = make_scorer(minilm)
    made = router.evaluate(scorer, task, "test", limit=12, adapter="routed")

    static = fold(deltas, torch.full((len(deltas[0]), 3), 1 / 3))
    routed = made_by("merge", {"method": "dawin", RECIPE_KEY: routed_settings(router, ids)}, {})
    lib.add(static, name="routed", base=minilm, provenance=routed, parents=ids)
    record = lib.get("routed")
    assert stored_settings(record.recipe)["router"] == name
    rebuilt = stored_router(lib, record, minilm.fingerprint)
    assert type(rebuilt) is type(router) and rebuilt.describe() == router.describe()
    (again,) = evaluate_grid([task], minilm, lib, ["routed"], zero_shot=False, split="test", limit=12)
    assert (again.accuracy, again.macro_f1, again.n) == (made.accuracy, made.macro_f1, made.n)
    assert again.loss == pytest.approx(made.loss, rel=1e-6)
    # per-text logits (what predict and serve score) are the ones evaluate reduced to metrics
    examples = task.sample("test", 12, seed=0)
    logits = rebuilt.logits(scorer, task, examples)
    gold = torch.tensor([task.labels.index(ex.label) for ex in examples])
    assert logits.shape == (12, len(task.labels))
    assert float((logits.argmax(-1) == gold).float().mean()) == pytest.approx(made.accuracy)
    loss = float(torch.nn.functional.cross_entropy(logits.double(), gold))
    assert loss == pytest.approx(made.loss, rel=1e-5)


def test_old_arrow_recipes_still_route(minilm, tmp_path) -> None:
    """Compositions stored before the unified key kept their settings under 'routing' and named candidates."""
    lib = Library(tmp_path / "lib")
    deltas = [minilm_delta(seed) for seed in range(2)]
    for i, d in enumerate(deltas):
        lib.add(d, name=f"c{i}", base=minilm)
    legacy = {
        "routing": {"router": "arrow", "top_k": 2, "temperature": 1.0, "adapters": 2},
        "candidates": [{"name": "c0"}, {"name": "c1"}],
    }
    composed = made_by("compose", {"method": "arrow", "task": {"name": "t"}, "shots": {"k": 0, "seed": 0}}, {})
    lib.add(deltas[0], name="old", base=minilm, provenance=composed)
    with sqlite3.connect(lib.root / "catalog.sqlite") as conn:  # the recipe as that version wrote it
        conn.execute("UPDATE adapters SET recipe = ? WHERE name = 'old'", (json.dumps({"kind": "compose", **legacy}),))
    conn.close()
    router = stored_router(lib, lib.get("old"), minilm.fingerprint)
    assert router is not None and router.name == "arrow" and len(router.deltas) == 2
