"""``adaptforge serve`` end to end: a real uvicorn on an ephemeral 127.0.0.1 port, called with httpx.

The servers run in this process on the shared embedded MiniLM (one model, many servers, one at a time) over
private copies of the shared trained library; the shutdown test runs the real CLI in a subprocess. What is
checked is what the issue asks: served predictions equal ``adaptforge eval``'s, a mixed-adapter batch equals
one request at a time, hot-load, eviction with pins, request-time merges equal ``adaptforge merge``, routed
adapters agree with eval, every error code, the API key, concurrent clients and a clean shutdown.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch
from helpers import library_copy, listening_url, random_delta, run_cli

from adaptforge.core import AdaptforgeError
from adaptforge.evaluate import logits_of
from adaptforge.library import Library, TaskEntry
from adaptforge.pipelines.evaluate import evaluate_grid
from adaptforge.pipelines.serve import RunningServer, build_service, start_in_thread
from adaptforge.provenance import read as made_by
from adaptforge.scorers import make_scorer
from adaptforge.serve import ServeConfig, ServeLimits
from adaptforge.serve.schema import FIELDS
from adaptforge.tasks import Example, load_task

TASK_ADAPTERS = ("sst2-a", "sst2-b", "subjectivity-a", "agnews-a")


def start(lib: Library, backbone, limits: ServeLimits | None = None, **config) -> RunningServer:
    settings = {"port": 0, "max_wait_ms": 20.0, **config}
    return start_in_thread(build_service(lib, ServeConfig(**settings), limits, backbone=backbone))


def no_hooks_left(model: torch.nn.Module) -> bool:
    """No adaptforge hook remains on the model (transformers installs its own when hidden states are asked for)."""
    hooks = [h for m in model.modules() for h in m._forward_hooks.values()]
    return not any(getattr(h, "__module__", "").startswith("adaptforge") for h in hooks)


def logits(result: dict) -> torch.Tensor:
    return torch.tensor(list(result["logits"].values()), dtype=torch.float64)


def classify(client: httpx.Client, body: dict, status: int = 200) -> dict:
    response = client.post("/v1/classify", json=body)
    assert response.status_code == status, response.text
    return response.json()


@pytest.fixture(scope="module")
def serve_lib(trained_library, tmp_path_factory) -> Library:
    return library_copy(trained_library, tmp_path_factory.mktemp("serve") / "lib")


@pytest.fixture(scope="module")
def trained_tasks(trained_library):
    return {name: load_task(folder) for name, folder in trained_library[1].items()}


@pytest.fixture(scope="module")
def encoder_server(serve_lib, minilm):
    running = start(serve_lib, minilm, max_loaded=8, max_batch=32)
    yield running
    running.stop()
    assert no_hooks_left(minilm.model) and not running.thread.is_alive()


@pytest.fixture(scope="module")
def encoder_client(encoder_server):
    with httpx.Client(base_url=encoder_server.url, timeout=120) as c:
        yield c


def accuracy(results: list[dict], task) -> float:
    gold = [e.label for e in task.split("test")]
    return sum(r["label"] == g for r, g in zip(results, gold, strict=True)) / len(gold)


# ---------------------------------------------------------------------------------------------- predictions


def test_served_predictions_equal_eval(encoder_client, serve_lib, trained_tasks, minilm):
    task = trained_tasks["sst2"]
    texts = [e.text for e in task.split("test")]
    served = classify(encoder_client, {"texts": texts, "adapter": "sst2-a"})["results"]
    (evaluated,) = evaluate_grid([task], minilm, serve_lib, ["sst2-a"], zero_shot=False, record=False)
    assert accuracy(served, task) == evaluated.accuracy
    assert served[0]["adapter"] == "sst2-a" and list(served[0]["scores"]) == list(task.labels)
    delta, _ = serve_lib.load("sst2-a")
    with minilm.applied(delta) as model:  # eval merges dW into the weights; serving adds B(Ax): same numbers
        expected = logits_of(make_scorer(minilm), task, list(task.split("test")), model)
    assert torch.allclose(torch.stack([logits(r) for r in served]), expected.double(), atol=1e-3)
    # zero-shot: the base model on the task the catalog knows, as `adaptforge eval --zero-shot`
    base = classify(encoder_client, {"texts": texts, "task": "sst2"})["results"]
    (zero,) = evaluate_grid([task], minilm, serve_lib, [], zero_shot=True, record=False)
    assert accuracy(base, task) == zero.accuracy and base[0]["adapter"] == minilm.name


def test_mixed_batch_equals_one_at_a_time(encoder_client, encoder_server, trained_tasks):
    texts = [
        trained_tasks[t].split("test")[i].text
        for t, i in (("sst2", 0), ("subjectivity", 1), ("agnews", 2), ("sst2", 3))
    ]
    adapters = ["sst2-a", "subjectivity-a", "agnews-a", "sst2-b"]
    metrics = encoder_server.service.metrics
    batches = metrics.value("adaptforge_batch_rows")
    mixed = classify(encoder_client, {"texts": texts, "adapters": adapters})["results"]
    assert metrics.value("adaptforge_batch_rows") == batches + 1  # one batch, one forward of the texts
    for text, adapter, got in zip(texts, adapters, mixed, strict=True):
        alone = classify(encoder_client, {"texts": [text], "adapter": adapter})["results"][0]
        assert got["adapter"] == adapter and got["label"] == alone["label"]
        assert torch.allclose(logits(got), logits(alone), atol=1e-5)
    assert [list(r["scores"]) for r in mixed][2] == list(trained_tasks["agnews"].labels)  # each row its own task
    # base rows mix with adapter rows when a task gives every row its labels
    rows = classify(encoder_client, {"texts": texts, "adapters": [None, "sst2-a", None, "agnews-a"], "task": "sst2"})
    for text, adapter, got in zip(texts, [None, "sst2-a", None, "agnews-a"], rows["results"], strict=True):
        body = {"texts": [text], "task": "sst2", **({"adapter": adapter} if adapter else {})}
        assert torch.allclose(logits(got), logits(classify(encoder_client, body)["results"][0]), atol=1e-5)


def test_concurrent_clients_get_their_own_answers(encoder_client, encoder_server, trained_tasks):
    texts = [e.text for e in trained_tasks["sst2"].split("test")[:6]]
    jobs = [(texts[i % 6], TASK_ADAPTERS[i % 4]) for i in range(24)]
    expected = {
        job: classify(encoder_client, {"texts": [job[0]], "adapter": job[1]})["results"][0] for job in set(jobs)
    }
    metrics = encoder_server.service.metrics
    batches = metrics.value("adaptforge_batch_rows")
    answers: dict[int, dict] = {}

    def worker(k: int) -> None:
        with httpx.Client(base_url=encoder_server.url, timeout=120) as own:
            for i in range(k, len(jobs), 8):
                text, adapter = jobs[i]
                answers[i] = own.post("/v1/classify", json={"texts": [text], "adapter": adapter}).json()

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, (text, adapter) in enumerate(jobs):
        got = answers[i]["results"][0]
        assert got["adapter"] == adapter and torch.allclose(logits(got), logits(expected[(text, adapter)]), atol=1e-5)
    assert metrics.value("adaptforge_batch_rows") - batches < len(jobs)  # requests shared forward passes


def test_free_labels_description_and_task(encoder_client, trained_tasks):
    text = trained_tasks["sst2"].split("test")[0].text
    free = classify(encoder_client, {"texts": [text], "adapter": "sst2-a", "labels": ["great", "awful", "meh"]})
    assert list(free["results"][0]["scores"]) == ["great", "awful", "meh"]
    assert abs(sum(free["results"][0]["scores"].values()) - 1) < 1e-9
    own = classify(encoder_client, {"texts": [text], "adapter": "sst2-a"})["results"][0]
    by_task = classify(encoder_client, {"texts": [text], "adapter": "sst2-a", "task": "sst2"})["results"][0]
    assert own["logits"] == by_task["logits"]  # the adapter's own task is the task the catalog knows
    other = classify(encoder_client, {"texts": [text], "adapter": "sst2-a", "description": "Is this about sports?"})
    assert list(other["results"][0]["scores"]) == list(trained_tasks["sst2"].labels) and other["results"][0] != own


# ---------------------------------------------------------------------------------------------- library


def test_hot_load_and_overwrite_while_serving(encoder_client, serve_lib, minilm, trained_tasks):
    text = [trained_tasks["sst2"].split("test")[1].text]
    sst2 = trained_tasks["sst2"]
    for source in ("sst2-a", "sst2-b"):  # add, then overwrite under the same name: the new tensors are used
        delta, _ = serve_lib.load(source)
        serve_lib.add(
            delta,
            name="hot",
            base=minilm,
            task=TaskEntry("sst2", description=sst2.description),
            provenance=made_by("train", {"tasks": [{"name": "sst2"}]}, {"labels": {"sst2": list(sst2.labels)}}),
            overwrite=source == "sst2-b",
        )
        got = classify(encoder_client, {"texts": text, "adapter": "hot"})["results"][0]
        want = classify(encoder_client, {"texts": text, "adapter": source})["results"][0]
        assert torch.allclose(logits(got), logits(want), atol=1e-6)
    assert "hot" in [m["id"] for m in encoder_client.get("/v1/models").json()["data"]]


def test_lru_eviction_keeps_pins(serve_lib, minilm, trained_tasks):
    text = [trained_tasks["sst2"].split("test")[0].text]
    with start(serve_lib, minilm, max_loaded=2, pins=("sst2-a",)) as running, httpx.Client(base_url=running.url) as c:
        cache, metrics = running.service.cache, running.service.metrics
        assert cache.loaded() == ["sst2-a"] and cache.pinned() == ["sst2-a"]
        for name in ("subjectivity-a", "agnews-a", "sst2-b", "sst2-a"):
            classify(c, {"texts": text, "adapter": name, "task": "sst2"})
            assert len(cache) <= 2 and "sst2-a" in cache.loaded()
        assert metrics.value("adaptforge_cache_evictions_total") == 2
        misses = metrics.value("adaptforge_cache_misses_total")
        classify(c, {"texts": text, "adapter": "subjectivity-a", "task": "sst2"})  # evicted: loaded again
        assert metrics.value("adaptforge_cache_misses_total") == misses + 1
        models = {m["id"]: m for m in c.get("/v1/models").json()["data"]}
        assert models["sst2-a"]["pinned"] and models["sst2-a"]["loaded"] and not models["agnews-a"]["loaded"]


def test_request_merge_equals_adaptforge_merge(encoder_client, encoder_server, serve_lib, trained_tasks, minilm):
    texts = [e.text for e in trained_tasks["sst2"].split("test")]
    recipes = {
        "ta": (["--method", "task_arithmetic", "--weights", "0.7,0.3"], {"weights": [0.7, 0.3]}),
        "ties": (["--method", "ties", "--density", "0.5"], {"method": "ties", "params": {"density": 0.5}}),
    }
    metrics = encoder_server.service.metrics
    for out, (flags, spec) in recipes.items():
        run_cli("merge", "sst2-a", "sst2-b", *flags, "--library", serve_lib.root, "--out", out)
        stored = classify(encoder_client, {"texts": texts, "adapter": out})["results"]
        hits = metrics.value("adaptforge_merge_cache_hits_total")
        for _ in range(2):  # the second request finds the merge ready
            merged = classify(encoder_client, {"texts": texts, "merge": {"adapters": ["sst2-a", "sst2-b"], **spec}})
        assert metrics.value("adaptforge_merge_cache_hits_total") == hits + 1
        for a, b in zip(stored, merged["results"], strict=True):
            assert a["label"] == b["label"] and torch.allclose(logits(a), logits(b), atol=1e-5)
        if out == "ta":  # and scores what eval scores for the stored merge
            (evaluated,) = evaluate_grid(
                [trained_tasks["sst2"]], minilm, serve_lib, [out], zero_shot=False, record=False
            )
            assert accuracy(merged["results"], trained_tasks["sst2"]) == evaluated.accuracy
    names = {m["id"]: m for m in encoder_client.get("/v1/models").json()["data"]}
    assert names["ta"]["parents"] == ["sst2-a", "sst2-b"] and names["ta"]["kind"] == "merge"


def test_routed_adapters_agree_with_eval(encoder_client, serve_lib, trained_tasks, trained_library, minilm):
    from adaptforge.pipelines.compose import compose_into_library
    from adaptforge.pipelines.merge import MergeRecipe, merge_into_library

    task = trained_tasks["sst2"]
    sample = task.sample("test", 12)  # the examples eval scores with limit=12
    texts = [e.text for e in sample]
    compose_into_library(task, serve_lib, "arrow-c", method="arrow", shots=0, backbone=minilm, eval_split=None)
    recipe = MergeRecipe.from_flags(
        adapters=["sst2-a", "subjectivity-a"],
        out="dawin-m",
        method="dawin",
        data=[trained_library[1]["sst2"]],
        params={"examples_per_task": 8},
    )
    merge_into_library(recipe, serve_lib, backbone=minilm)
    for name in ("arrow-c", "dawin-m"):
        served = classify(encoder_client, {"texts": texts, "adapter": name, "task": "sst2"})["results"]
        (evaluated,) = evaluate_grid([task], minilm, serve_lib, [name], zero_shot=False, limit=12, record=False)
        assert accuracy(served, task.with_splits(test=sample)) == evaluated.accuracy and served[0]["adapter"] == name
        assert next(m for m in encoder_client.get("/v1/models").json()["data"] if m["id"] == name)["routed"]
    # the same router asked for at request time gives the stored composition's numbers
    ids = serve_lib.get("arrow-c").recipe["router"]["adapter_ids"]
    names = [serve_lib.get(i).name for i in ids]
    stored = classify(encoder_client, {"texts": texts[:6], "adapter": "arrow-c"})["results"]
    asked = classify(
        encoder_client, {"texts": texts[:6], "route": {"method": "arrow", "adapters": names}, "task": "sst2"}
    )
    for a, b in zip(stored, asked["results"], strict=True):
        assert torch.allclose(logits(a), logits(b), atol=1e-6) and b["adapter"] == "route:arrow"
    dawin = classify(
        encoder_client, {"texts": texts[:3], "route": {"method": "dawin", "adapters": ["sst2-a", "sst2-b"]}}
    )
    assert len(dawin["results"]) == 3
    mixed_tasks = {"texts": texts[:3], "route": {"method": "dawin", "adapters": ["sst2-a", "agnews-a"]}}
    assert "labels" in classify(encoder_client, mixed_tasks, 422)["error"]["field"]


def test_retrieval_route_picks_an_adapter_per_text(encoder_client, trained_tasks):
    texts = [trained_tasks["sst2"].split("test")[0].text, trained_tasks["agnews"].split("test")[0].text]
    results = classify(encoder_client, {"texts": texts, "route": "retrieval"})["results"]
    for r in results:  # candidates are the tasks' own adapters with a description embedding; each its own labels
        assert r["adapter"] in TASK_ADAPTERS
        assert list(r["scores"]) == list(trained_tasks[r["adapter"].rsplit("-", 1)[0]].labels)


def test_embeddings_are_openai_shaped_and_match_the_model(encoder_client, serve_lib, minilm):
    texts = ["a quiet, moving film", "shares of the bank fell"]
    base = encoder_client.post("/v1/embeddings", json={"model": "base", "input": texts}).json()
    assert (
        base["object"] == "list" and [d["index"] for d in base["data"]] == [0, 1] and base["usage"]["total_tokens"] > 0
    )
    scorer = make_scorer(minilm)
    assert torch.allclose(torch.tensor([d["embedding"] for d in base["data"]]), scorer.embed_texts(texts), atol=1e-5)
    one = encoder_client.post("/v1/embeddings", json={"model": "sst2-a", "input": texts[0]}).json()
    delta, _ = serve_lib.load("sst2-a")
    with minilm.applied(delta):
        expected = scorer.embed_texts(texts[:1])[0]
    assert one["model"] == "sst2-a" and torch.allclose(torch.tensor(one["data"][0]["embedding"]), expected, atol=1e-4)
    assert encoder_client.post("/v1/embeddings", json={"model": "nope", "input": "x"}).status_code == 404
    bad = encoder_client.post("/v1/embeddings", json={"model": "base", "input": "x", "dimensions": 3})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "dimensions"


def test_models_health_and_metrics(encoder_client, minilm):
    models = encoder_client.get("/v1/models").json()["data"]
    assert models[0] == {**models[0], "id": minilm.name, "kind": "base"}
    sst2 = next(m for m in models if m["id"] == "sst2-a")
    assert sst2["base"] == minilm.name and sst2["kind"] == "train" and sst2["parents"] == [] and not sst2["routed"]
    assert encoder_client.get("/health").json()["status"] == "ok"
    text = encoder_client.get("/metrics").text
    for family in ("requests_total", "request_seconds_bucket", "batch_rows_count", "cache_hits_total", "adapter_load"):
        assert f"adaptforge_{family}" in text
    assert re.search(r'adaptforge_requests_total\{route="/v1/classify",status="200"\} [1-9]', text)


# ---------------------------------------------------------------------------------------------- bad input


LIMITS = ServeLimits(max_texts=4, max_text_chars=200, max_body_bytes=4096, max_queue=4, max_merge_adapters=2)

BAD: list[tuple[int, object, str]] = [  # status, body, field the error names
    (422, {"texts": "one text"}, "texts"),
    (422, {}, "texts"),
    (422, {"texts": []}, "texts"),
    (422, {"texts": [1, 2]}, "texts[0]"),
    (422, {"texts": ["x"], "adaptor": "sst2-a"}, "adaptor"),
    (422, {"texts": ["x"], "adapter": "sst2-a", "merge": {"adapters": ["sst2-b"]}}, "merge"),
    (422, {"texts": ["x", "y"], "adapters": ["sst2-a"]}, "adapters"),
    (422, {"texts": ["x"], "labels": ["only"]}, "labels"),
    (422, {"texts": ["x"], "labels": ["a", "a"]}, "labels"),
    (422, {"texts": ["x"]}, "labels"),
    (422, {"texts": ["x"], "merge": {"method": "tiez", "adapters": ["sst2-a"]}}, "merge.method"),
    (422, {"texts": ["x"], "merge": {"method": "dawin", "adapters": ["sst2-a"]}}, "merge.method"),
    (422, {"texts": ["x"], "merge": {"adapters": ["sst2-a", "sst2-a"]}}, "merge.adapters"),
    (422, {"texts": ["x"], "merge": {"adapters": ["sst2-a", "sst2-b"], "weights": [1]}}, "merge.weights"),
    (422, {"texts": ["x"], "merge": {"adapters": ["sst2-a"], "params": {"densty": 0.5}}}, "merge.params"),
    (422, {"texts": ["x"], "merge": {"adapters": ["sst2-a"], "weights": ["0.5"]}}, "merge.weights[0]"),
    (422, {"texts": ["x"], "route": "arow"}, "route"),
    (422, {"texts": ["x"], "route": {"method": "arrow", "params": {"top_k": 0}}, "task": "sst2"}, "route.params"),
    (422, {"texts": ["x"], "merge": {"adapters": ["sst2-a", "agnews-a"]}}, "labels"),
    (404, {"texts": ["x"], "adapter": "sst2-aa"}, "adapter"),
    (404, {"texts": ["x"], "adapter": "../../../etc/passwd"}, "adapter"),
    (404, {"texts": ["x"], "task": "sst3"}, "task"),
    (404, {"texts": ["x"], "merge": {"adapters": ["sst2-a", "nope"]}}, "merge.adapters[1]"),
    (413, {"texts": ["x"] * 5, "adapter": "sst2-a"}, "texts"),
    (413, {"texts": ["x" * 201], "adapter": "sst2-a"}, "texts[0]"),
    (413, {"texts": ["x"], "merge": {"adapters": ["sst2-a", "sst2-b", "agnews-a"]}}, "merge.adapters"),
]


@pytest.fixture(scope="module")
def limited(trained_library, tmp_path_factory, minilm):
    running = start(library_copy(trained_library, tmp_path_factory.mktemp("limited") / "lib"), minilm, LIMITS)
    yield running
    running.stop()


def test_every_client_error_has_its_code_and_names_the_field(limited):
    with httpx.Client(base_url=limited.url, timeout=60) as c:
        for status, body, field in BAD:
            response = c.post("/v1/classify", json=body)
            error = response.json()["error"]
            assert (response.status_code, error["field"]) == (status, field), (body, response.text)
            assert error["message"].startswith(field.split("[")[0]) or field in error["message"], error
        assert "Did you mean 'sst2-a'" in c.post("/v1/classify", json=BAD[19][1]).json()["error"]["message"]
        assert "Did you mean 'adapter'" in c.post("/v1/classify", json=BAD[4][1]).json()["error"]["message"]
        broken = c.post("/v1/classify", content=b'{"texts": [', headers={"content-type": "application/json"})
        assert broken.status_code == 422 and broken.json()["error"]["field"] == "body"
        assert c.post("/v1/classify", content=b"x" * 5000).status_code == 413  # declared length
        chunked = c.post("/v1/classify", content=iter([b"x" * 3000, b"x" * 3000]))  # no length: counted
        assert chunked.status_code == 413 and chunked.json()["error"]["field"] == "body"
        assert c.get("/v1/classify").status_code == 405
        missing = c.get("/v2/anything")
        assert missing.status_code == 404 and missing.json()["error"]["field"] == "path"


def test_full_queue_answers_429_then_recovers(trained_library, tmp_path_factory, minilm):
    lib = library_copy(trained_library, tmp_path_factory.mktemp("queue") / "lib")
    with start(lib, minilm, LIMITS, max_wait_ms=2500.0) as running, httpx.Client(base_url=running.url) as c:
        first: dict = {}
        body = {"texts": ["a", "b", "c"], "adapter": "sst2-a"}
        waiting = threading.Thread(target=lambda: first.update(r=c.post("/v1/classify", json=body, timeout=60)))
        waiting.start()
        deadline = time.monotonic() + 10
        while running.service.batcher.queued_rows < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        refused = c.post("/v1/classify", json=body)  # 3 + 3 texts > max_queue 4: refused, not queued
        assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["type"] == "busy"
        waiting.join()
        assert first["r"].status_code == 200
        assert running.service.metrics.value("adaptforge_rejected_total", {"reason": "queue_full"}) == 1
        running.service.batcher.stop()  # draining: new work is refused with 503, health says so
        assert c.post("/v1/classify", json=body).status_code == 503
        assert c.get("/health").status_code == 503


def test_a_corrupted_adapter_is_a_server_error_and_the_server_stays_up(trained_library, tmp_path_factory, minilm):
    lib = library_copy(trained_library, tmp_path_factory.mktemp("corrupt") / "lib")
    weights = lib.get("agnews-a").path / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    with start(lib, minilm) as running, httpx.Client(base_url=running.url) as c:
        response = c.post("/v1/classify", json={"texts": ["x"], "adapter": "agnews-a"})
        assert response.status_code == 500 and response.json()["error"]["type"] == "corrupt_adapter"
        assert "sha256" in response.json()["error"]["message"]
        assert str(lib.root) not in response.text and "<library>" in response.text  # the client gets no server path
        assert c.post("/v1/classify", json={"texts": ["x"], "adapter": "sst2-a"}).status_code == 200


def test_a_422_lists_at_most_twenty_problems(limited):
    body = {"texts": ["x"], **{f"u{i}": 1 for i in range(60)}}  # small enough for this server's 4 KB body limit
    with httpx.Client(base_url=limited.url, timeout=60) as c:
        answer = c.post("/v1/classify", json=body)
        error = answer.json()["error"]
        assert answer.status_code == 422, answer.text
        assert len(error["problems"]) == 20 and error["problems_not_listed"] == 40
        assert error["field"] == "u0" and "unknown field" in error["message"]
        assert "/v1/classify" in c.get("/openapi.json").json()["paths"]


def test_docs_page_is_self_contained_and_names_every_route_and_field(limited):
    """``/docs`` over real HTTP: HTML that references no other origin (no script, stylesheet, font or image URL;
    a content security policy that forbids any request), with every route and every classify field; FastAPI's
    CDN pages stay off (``/redoc`` is a 404)."""
    from html.parser import HTMLParser

    with httpx.Client(base_url=limited.url, timeout=60) as c:
        page = c.get("/docs")
        assert c.get("/redoc").status_code == 404
        schema = c.get("/openapi.json").json()
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["content-security-policy"].startswith("default-src 'none'")
    refs: list[tuple[str, str, str]] = []

    class Links(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            refs.extend((tag, k, v or "") for k, v in attrs if k in ("src", "href", "action", "srcset", "data"))
            assert tag not in ("script", "link", "iframe", "img", "object", "embed", "base"), tag

    Links().feed(page.text)
    assert {v for _, _, v in refs if not v.startswith("#")} == {"openapi.json"}  # relative: this server
    lowered = page.text.lower()
    assert "http://" not in lowered and "https://" not in lowered and "//" not in lowered.replace("<!doctype", "")
    assert "@import" not in lowered and "url(" not in lowered
    for route in schema["paths"]:
        assert f"<code>{route}</code>" in page.text
    for name in FIELDS["classify"]:
        assert f"<code>{name}</code>" in page.text


def test_access_log_has_one_line_per_request_naming_the_adapter(limited, caplog):
    """Method, path, the adapter or model the body names (never its texts), status and latency, one line per
    request, also for a refused one."""
    caplog.set_level("INFO", logger="adaptforge.serve.access")
    with httpx.Client(base_url=limited.url, timeout=60) as c:
        assert c.post("/v1/classify", json={"texts": ["secret words"], "adapter": "sst2-a"}).status_code == 200
        assert c.post("/v1/classify", json={"texts": ["x"], "adapter": "nope"}).status_code == 404
        assert c.post("/v1/embeddings", json={"model": "sst2-a", "input": "x"}).status_code == 200
        assert c.get("/health").status_code == 200

    def logged() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "adaptforge.serve.access"]

    deadline = time.monotonic() + 10  # a line is written once its response is sent: the last may trail the client
    while len(logged()) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    lines = logged()
    pattern = r'^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ 127\.0\.0\.1:\d+ "(\S+) (\S+)" (\d{3}) (\S+) \d+\.\dms$'
    parsed = [re.match(pattern, line).groups() for line in lines]  # type: ignore[union-attr]
    assert parsed == [
        ("POST", "/v1/classify", "200", "adapter=sst2-a"),
        ("POST", "/v1/classify", "404", "adapter=nope"),
        ("POST", "/v1/embeddings", "200", "model=sst2-a"),
        ("GET", "/health", "200", "-"),
    ]
    assert not any("secret" in line for line in lines)


def test_thousands_of_bad_requests_leave_the_server_answering(limited):
    statuses: dict[int, int] = {}
    with httpx.Client(base_url=limited.url, timeout=60) as c:
        for i in range(2000):
            status, body, _ = BAD[i % len(BAD)]
            if i % 7 == 0:
                response = c.post("/v1/classify", content=os.urandom(64), headers={"content-type": "application/json"})
            else:
                response = c.post("/v1/classify", json=body)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        assert set(statuses) <= {404, 413, 422} and sum(statuses.values()) == 2000
        assert c.get("/health").json()["status"] == "ok"
        assert c.post("/v1/classify", json={"texts": ["fine"], "adapter": "sst2-a"}).status_code == 200


def test_api_key_is_required_on_every_call(serve_lib, minilm):
    with start(serve_lib, minilm, api_key="s3cret") as running, httpx.Client(base_url=running.url) as c:
        body = {"texts": ["x"], "adapter": "sst2-a"}
        for path in ("/health", "/metrics", "/v1/models"):
            assert c.get(path).status_code == 401
        refused = c.post("/v1/classify", json=body, headers={"Authorization": "Bearer wrong"})
        assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
        assert "wrong API key" in refused.json()["error"]["message"]
        assert c.post("/v1/classify", json=body, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.post("/v1/classify", json=body, headers={"X-API-Key": "s3cret"}).status_code == 200
        assert running.service.metrics.value("adaptforge_requests_total", {"route": "/health", "status": "401"}) == 1


def test_config_is_checked_before_anything_runs(serve_lib):
    with pytest.raises(AdaptforgeError, match="'pins'"):
        ServeConfig(max_loaded=1, pins=("sst2-a", "sst2-b"))
    with pytest.raises(AdaptforgeError, match="'port'"):
        ServeConfig(port=70000)
    with pytest.raises(AdaptforgeError, match="'max_queue'"):
        ServeLimits(max_texts=10, max_queue=5)
    assert "api_key" not in repr(ServeConfig(api_key="s3cret"))
    result = run_cli(
        "serve", "--library", serve_lib.root, "--pin", "sst2-x", ok=False
    )  # refused before the model loads
    assert result.exit_code == 2 and "Did you mean" in result.output
    assert "max_wait_ms" in run_cli("serve", "--list").output
    with socket.socket() as taken:  # a port in use is refused at once, before the model loads
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = run_cli("serve", "--library", serve_lib.root, "--port", taken.getsockname()[1], ok=False)
    assert result.exit_code == 2 and "cannot listen on 127.0.0.1" in result.output


# ---------------------------------------------------------------------------------------------- causal LM


def test_causal_lm_mixed_batch_equals_one_at_a_time_and_eval(tiny_llama, tmp_path):
    lib = Library(tmp_path / "lib")
    model = tiny_llama.model
    shapes = {n: tuple(m.weight.shape) for n, m in model.named_modules() if n.endswith(("q_proj", "v_proj"))}
    labels = {"t": ["yes", "no", "maybe"]}
    for i in range(2):
        delta = random_delta(shapes, rank=2 + 2 * i, scale=1.0, seed=i, std=0.05)  # two ranks: two slot tables
        made = made_by("train", {"tasks": [{"name": "t"}]}, {"labels": labels})
        lib.add(delta, name=f"c{i}", base=tiny_llama, task=TaskEntry("t", description="Answer."), provenance=made)
    texts = ["is it raining", "the cat sat", "a long day at work"]
    with start(lib, tiny_llama) as running, httpx.Client(base_url=running.url, timeout=60) as c:
        mixed = classify(c, {"texts": texts, "adapters": ["c0", "c1", None], "task": "t"})["results"]
        task = running.service.resolver.task_head("t").task
        for text, name, got in zip(texts, ["c0", "c1", None], mixed, strict=True):
            alone = classify(c, {"texts": [text], "task": "t", **({"adapter": name} if name else {})})["results"][0]
            assert torch.allclose(logits(got), logits(alone), atol=1e-5)
        # the causal scorer tokenizes with and without truncation: concurrent requests must not share a tokenizer
        statuses: list[int] = []

        def hammer(k: int) -> None:
            with httpx.Client(base_url=running.url, timeout=60) as own:
                for i in range(4):
                    if (i + k) % 2:
                        r = own.post("/v1/embeddings", json={"model": "c1", "input": texts})
                    else:
                        r = own.post("/v1/classify", json={"texts": texts, "adapters": ["c0", "c1", None], "task": "t"})
                    statuses.append(r.status_code)

        threads = [threading.Thread(target=hammer, args=(k,)) for k in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert statuses == [200] * 24
    assert no_hooks_left(model)
    # The reference forward runs after the server stopped: while it serves, its worker owns the model (its
    # batch hooks stay installed until the batch's futures are answered), so a forward from this thread could
    # overlap them.
    scorer = make_scorer(tiny_llama)
    for text, name, got in zip(texts, ["c0", "c1", None], mixed, strict=True):
        delta = lib.load(name)[0] if name else None
        with tiny_llama.applied(delta) as m:
            expected = logits_of(scorer, task, [Example(text, "yes")], m)[0]
        assert torch.allclose(logits(got), expected.double(), atol=1e-4)


# ---------------------------------------------------------------------------------------------- shutdown


def test_stopping_answers_the_request_in_flight_then_releases_everything(serve_lib, minilm):
    running = start(serve_lib, minilm, max_wait_ms=800.0)
    answer: dict = {}
    with httpx.Client(base_url=running.url, timeout=60) as c:
        body = {"texts": ["a fine film"], "adapter": "sst2-b"}
        inflight = threading.Thread(target=lambda: answer.update(r=c.post("/v1/classify", json=body)))
        inflight.start()
        deadline = time.monotonic() + 10
        while running.service.batcher.queued_rows == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        running.stop()  # while the request waits in the batcher
        inflight.join(60)
    assert answer["r"].status_code == 200 and answer["r"].json()["results"][0]["adapter"] == "sst2-b"
    assert not running.thread.is_alive() and not running.service.batcher.running and no_hooks_left(minilm.model)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{running.url}/health")


@pytest.mark.slow  # a fresh process loads torch and the model: ~10-20 s on the shared 2-core machine
def test_cli_serves_and_shuts_down_cleanly_on_sigterm(trained_library, tmp_path):
    lib = library_copy(trained_library, tmp_path / "lib")
    before = sorted(p.name for p in lib.root.rglob("*") if not p.name.startswith("catalog.sqlite"))
    command = [sys.executable, "-m", "adaptforge.cli", "serve", "--library", str(lib.root), "--port", "0"]
    command += ["--max-wait-ms", "800", "--threads", "1"]
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
    try:
        url = listening_url(proc)
        with httpx.Client(base_url=url, timeout=60) as c:
            assert c.get("/health").json()["status"] == "ok"
            answer: dict = {}
            body = {"texts": ["a fine film"], "adapter": "sst2-a"}
            inflight = threading.Thread(target=lambda: answer.update(r=c.post("/v1/classify", json=body)))
            inflight.start()
            deadline = time.monotonic() + 10
            while c.get("/health").json()["queue_rows"] == 0 and time.monotonic() < deadline:
                time.sleep(0.02)
            proc.send_signal(signal.SIGTERM)  # while a request waits in the batcher
            inflight.join(60)
            assert answer["r"].status_code == 200 and answer["r"].json()["results"][0]["adapter"] == "sst2-a"
        assert proc.wait(60) == 0
        stderr = proc.stderr.read()  # type: ignore[union-attr]
        assert "stopped" in stderr
        # the access log is on by default: one line per request, on stderr
        assert re.search(r'"POST /v1/classify" 200 adapter=sst2-a \d+\.\dms', stderr), stderr
        assert re.search(r'"GET /health" 200 - \d+\.\dms', stderr), stderr
    finally:
        if proc.poll() is None:
            proc.kill()
    assert sorted(p.name for p in Path(lib.root).rglob("*") if not p.name.startswith("catalog.sqlite")) == before
