"""Every verb that resolves a registry entry, run as the installed ``adaptforge`` script in a fresh process.

In-process CLI tests cannot see a registry that is filled only as a side effect of some earlier import: the
test session has imported everything by then. Each call here starts from nothing, as a user's shell does.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from helpers import library_copy, listening_url

SCRIPT = Path(sys.executable).with_name("adaptforge")


def adaptforge(*args: object) -> subprocess.CompletedProcess:
    """The console script in a fresh process; a non-zero exit fails with what it printed."""
    env = {**os.environ, "COLUMNS": "200"}
    done = subprocess.run([str(SCRIPT), *map(str, args)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


@pytest.fixture(scope="module")
def routed_library(trained_library, tmp_path_factory, minilm):
    """The shared library plus a stored DaWin merge (``dw``) and a stored Arrow composition (``ar``)."""
    from adaptforge.pipelines.compose import compose_into_library
    from adaptforge.pipelines.merge import MergeRecipe, merge_into_library

    lib = library_copy(trained_library, tmp_path_factory.mktemp("fresh") / "lib")
    dirs = trained_library[1]
    recipe = MergeRecipe.from_flags(
        adapters=["sst2-a", "subjectivity-a"],
        out="dw",
        method="dawin",
        data=[dirs["sst2"]],
        params={"examples_per_task": 4},
    )
    merge_into_library(recipe, lib, backbone=minilm)
    from adaptforge.tasks import load_task

    sst2 = load_task(dirs["sst2"])
    compose_into_library(sst2, lib, "ar", method="arrow", shots=0, backbone=minilm, eval_split=None)
    return lib, dirs


@pytest.mark.parametrize("adapter", ["dw", "ar"])
def test_predict_with_a_stored_router(routed_library, tmp_path, adapter: str) -> None:
    lib, _ = routed_library
    inputs = tmp_path / "in.txt"
    inputs.write_text("a wonderful, moving film\na dull mess\n")
    out = adaptforge("predict", inputs, "--library", lib.root, "--adapter", adapter, "--labels", "positive,negative")
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(rows) == 2 and all(r["label"] in {"positive", "negative"} for r in rows)


def test_eval_of_routed_adapters(routed_library) -> None:
    lib, dirs = routed_library
    out = adaptforge(
        "eval", dirs["sst2"], "--library", lib.root, "--adapter", "dw", "--adapter", "ar", "--limit", "6", "--json"
    )
    rows = json.loads(out.stdout)["results"]
    assert {r["adapter"] for r in rows} == {"dw", "ar"} and all(r["n"] == 6 for r in rows)


def test_merge_and_compose_list_every_method() -> None:
    from adaptforge.compose.base import COMPOSERS
    from adaptforge.merge.base import MERGE_METHODS

    for verb, registry in (("merge", MERGE_METHODS), ("compose", COMPOSERS)):
        listed = adaptforge(verb, "--list").stdout
        assert all(re.search(rf"\b{re.escape(name)}\b", listed) for name in registry.names()), listed


def test_serve_routes_and_serves_a_stored_router(routed_library) -> None:
    lib, _ = routed_library
    command = [str(SCRIPT), "serve", "--library", str(lib.root), "--port", "0", "--threads", "1"]
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "200"})
    try:
        url = listening_url(proc)
        with httpx.Client(base_url=url, timeout=120) as c:
            for body in (
                {"texts": ["a fine film"], "route": {"method": "dawin", "adapters": ["sst2-a", "sst2-b"]}},
                {"texts": ["a fine film"], "route": {"method": "arrow", "adapters": ["sst2-a", "sst2-b"]}},
                {"texts": ["a fine film"], "adapter": "dw", "task": "sst2"},
            ):
                answer = c.post("/v1/classify", json=body)
                assert answer.status_code == 200, answer.text
                assert len(answer.json()["results"]) == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
