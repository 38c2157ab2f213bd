"""``adaptforge serve`` for a causal base: OpenAI's chat and completions on a real uvicorn at 127.0.0.1, over a tiny
random LLaMA and two tiny adapters (one on the attention projections, one on attention and MLP).

Checked: greedy served answers equal ``adaptforge predict``'s; requests for different adapters decoding in one
batch (also joining a running batch) equal each alone; streamed chunks concatenate to the whole answer; stop
strings, seeds and usage; every bad input is a 422/404 naming its field and the server stays up; a client that
leaves (mid-stream, or waiting for a whole answer) frees its slot; ``/metrics`` counts tokens and time to first
token; an adapter added while serving is listed and answers; request-time merges answer as the stored merge;
Arrow routing (request-time and stored) generates what the base with Arrow's hooks generates.
"""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
from helpers import random_delta

from adaptforge.backbone import Backbone
from adaptforge.library import Library, TaskEntry
from adaptforge.pipelines.predict import predict
from adaptforge.pipelines.serve import build_service, start_in_thread
from adaptforge.provenance import read as made_by
from adaptforge.serve import ServeConfig
from adaptforge.serve.batcher import Job
from adaptforge.serve.cache import AdapterCache
from adaptforge.serve.decode import Decoder, GenerateWork, Sampling
from adaptforge.serve.metrics import Metrics

PROMPTS = ["is it raining", "the cat sat on the", "a long day at work", "what is the capital of france"]
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")


@pytest.fixture(scope="module")
def lib(tiny_llama, tmp_path_factory) -> Library:
    lib = Library(tmp_path_factory.mktemp("serve-llm") / "lib")
    named = dict(tiny_llama.model.named_modules())
    for i, targets in enumerate((ATTENTION, ATTENTION + MLP)):
        shapes = {n: tuple(m.weight.shape) for n, m in named.items() if n.endswith(targets)}
        delta = random_delta(shapes, rank=2 + 2 * i, scale=1.0, seed=i, std=0.3)  # two ranks: two slot tables
        lib.add(delta, name=f"g{i}", base=tiny_llama, task=TaskEntry("t"))
    return lib


@pytest.fixture(scope="module")
def server(lib, tiny_llama):
    config = ServeConfig(port=0, max_wait_ms=30.0, max_batch=8)
    running = start_in_thread(build_service(lib, config, backbone=tiny_llama))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def chat(client: httpx.Client, model: str, prompt: str, status: int = 200, **extra) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "temperature": 0, **extra}
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == status, response.text
    return response.json()


def text_of(answer: dict) -> str:
    choice = answer["choices"][0]
    return choice["message"]["content"] if "message" in choice else choice["text"]


def events(client: httpx.Client, path: str, body: dict) -> list:
    """The parsed ``data:`` events of a streamed answer (``[DONE]`` kept as a string)."""
    out = []
    with client.stream("POST", path, json={**body, "stream": True}) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                data = line.removeprefix("data: ")
                out.append(data if data == "[DONE]" else json.loads(data))
    return out


def test_greedy_served_answers_equal_predict(client, lib, tiny_llama_dir, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    for name in ("g0", "g1"):
        expected = [a.output for a in predict(prompts, lib, name, model=str(tiny_llama_dir), max_new_tokens=12)]
        served = [chat(client, name, p, max_tokens=12) for p in PROMPTS]
        assert [text_of(s).strip() for s in served] == expected  # predict strips the answer's ends
        assert all(s["model"] == name and s["object"] == "chat.completion" for s in served)
        usage = served[0]["usage"]
        assert (
            usage["completion_tokens"] <= 12
            and usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        )
    assert len(set(expected)) > 1 and expected != [text_of(chat(client, "base", p, max_tokens=12)) for p in PROMPTS]


def test_mixed_adapters_in_one_batch_equal_each_alone(client, server):
    jobs = [(m, p) for p in PROMPTS[:3] for m in ("g0", "g1", "base")]
    alone = {job: text_of(chat(client, job[0], job[1], max_tokens=10)) for job in jobs}
    assert len({alone[(m, PROMPTS[0])] for m in ("g0", "g1", "base")}) == 3  # the adapters change the answer
    metrics = server.service.metrics
    steps = metrics.value("adaptforge_decode_batch_rows")
    answers: dict = {}

    def ask(job: tuple[str, str]) -> None:
        with httpx.Client(base_url=server.url, timeout=60) as own:
            answers[job] = text_of(chat(own, job[0], job[1], max_tokens=10))

    threads = [threading.Thread(target=ask, args=(job,)) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert answers == alone
    assert metrics.value("adaptforge_decode_batch_rows") - steps < 9 * 9  # sequences shared decode steps


def test_sequences_joining_a_running_batch_decode_as_alone(server, tiny_llama_dir):
    """The decoder directly, on its own copy of the model (the server's worker owns the shared one): two sequences
    start, a third (another adapter) joins after a few steps."""
    backbone = Backbone.load(str(tiny_llama_dir))
    decoder = Decoder(backbone.model, backbone.tokenizer, AdapterCache(backbone.model, 4, Metrics()), Metrics(), 8)
    ids = [tuple(backbone.tokenizer(p)["input_ids"]) for p in PROMPTS[:3]]
    refs = [server.service.chat_planner._model(m)[0] for m in ("g0", "base", "g1")]

    def run(indices: list[int], late: list[int], after: int) -> dict[int, str]:
        texts: dict[int, str] = {}

        def job(i: int) -> Job:
            def emit(event: tuple) -> None:
                if event[0] == "done":
                    texts[i] = event[1].text

            return Job(GenerateWork(ids[i], refs[i], Sampling(max_tokens=12), emit), 1)

        calls = [0]

        def take(n: int) -> list[Job]:
            calls[0] += 1
            return [job(i) for i in late] if calls[0] == after else []

        decoder.run([job(i) for i in indices], take)
        return texts

    alone = {i: run([i], [], 0)[i] for i in range(3)}
    joined = run([0, 1], [2], after=4)
    assert joined == alone and len(set(alone.values())) == 3


def test_streamed_chunks_concatenate_to_the_whole_answer(client):
    for path, body, key in (
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": PROMPTS[1]}]}, "content"),
        ("/v1/completions", {"prompt": PROMPTS[1]}, "text"),
    ):
        body = {"model": "g1", "max_tokens": 14, "temperature": 0, **body}
        whole = client.post(path, json=body).json()
        got = events(client, path, {**body, "stream_options": {"include_usage": True}})
        assert got[-1] == "[DONE]" and got[-2]["usage"] == whole["usage"] and got[-2]["choices"] == []
        chunks = got[:-2]
        if key == "content":
            assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
            pieces = [c["choices"][0]["delta"].get("content", "") for c in chunks]
            assert all(c["object"] == "chat.completion.chunk" for c in chunks)
        else:
            pieces = [c["choices"][0]["text"] for c in chunks]
        assert "".join(pieces) == text_of(whole) and sum(bool(p) for p in pieces) > 1
        assert chunks[-1]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]
        assert all(c["id"] == chunks[0]["id"] for c in chunks)


def test_stop_strings_seeds_and_finish_reasons(client):
    full = chat(client, "g0", PROMPTS[2], max_tokens=16)
    text = text_of(full)
    assert full["choices"][0]["finish_reason"] == "length" and full["usage"]["completion_tokens"] == 16
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    cut = chat(client, "g0", PROMPTS[2], max_tokens=16, stop=[stop, "zzzz"])
    assert text_of(cut) == text[: text.index(stop)] and cut["choices"][0]["finish_reason"] == "stop"
    body = {"model": "g0", "messages": [{"role": "user", "content": PROMPTS[2]}], "max_tokens": 16, "stop": stop}
    streamed = events(client, "/v1/chat/completions", {**body, "temperature": 0})
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in streamed[:-1]) == text_of(cut)
    sampled = [text_of(chat(client, "g1", PROMPTS[0], max_tokens=12, temperature=1.5, seed=s)) for s in (1, 1, 2)]
    assert sampled[0] == sampled[1] != sampled[2]  # a seed fixes a sampled answer
    narrow = chat(client, "g1", PROMPTS[0], max_tokens=12, temperature=1.5, top_p=1e-6, seed=3)
    assert text_of(narrow) == text_of(chat(client, "g1", PROMPTS[0], max_tokens=12))  # top_p -> 0 is greedy


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"stop": 3}, 422, "stop"),
        ({"stop": ["a", 1]}, 422, "stop"),
        ({"max_tokens": 0}, 422, "max_tokens"),
        ({"max_tokens": 10_000}, 422, "max_tokens"),
        ({"temperature": -0.5}, 422, "temperature"),
        ({"temperature": float("nan")}, 422, "temperature"),
        ({"top_p": 0}, 422, "top_p"),
        ({"n": 2}, 422, "n"),
        ({"model": "g0x"}, 404, "model"),
        ({"messages": [{"role": "system", "content": "be brief"}]}, 422, "messages"),
        ({"messages": [{"role": "user", "content": "word " * 2000}]}, 422, "messages"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, 422, "messages[0].role"),
        ({"stream_options": {"include_usage": True}}, 422, "stream_options"),
        ({"logit_bias": {}}, 422, "logit_bias"),
        ({"min_tokens": 5}, 422, "min_tokens"),
    ],
)
def test_bad_input_names_the_field_and_the_server_stays_up(client, body, status, field):
    request = {"model": "g0", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **body}
    response = client.post(
        "/v1/chat/completions", content=json.dumps(request), headers={"content-type": "application/json"}
    )
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["field"] == field and field.split("[")[0] in error["message"]
    if status == 404:
        assert "Did you mean" in error["message"]
    assert chat(client, "g0", "hi", max_tokens=2)["usage"]["completion_tokens"] == 2


def test_completions_bad_prompt_and_an_encoder_base(client, lib, minilm):
    response = client.post("/v1/completions", json={"model": "g0", "prompt": ["a", "b"]})
    assert response.status_code == 422 and response.json()["error"]["field"] == "prompt"
    response = client.post("/v1/completions", json={"model": "g0", "prompt": "word " * 2000, "max_tokens": 4})
    assert response.status_code == 422 and response.json()["error"]["field"] == "prompt"
    with start_in_thread(build_service(lib, ServeConfig(port=0), backbone=minilm)) as running:
        body = {"model": "base", "messages": [{"role": "user", "content": "hi"}]}
        response = httpx.post(f"{running.url}/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 422 and "causal LM" in response.json()["error"]["message"]


def test_a_client_leaving_mid_stream_frees_its_slot(client, server):
    metrics = server.service.metrics
    tokens = metrics.value("adaptforge_generated_tokens_total")
    body = {"model": "g1", "prompt": PROMPTS[0], "max_tokens": 400, "temperature": 0, "stream": True}
    with httpx.Client(base_url=server.url, timeout=60) as own, own.stream("POST", "/v1/completions", json=body) as r:
        first = next(line for line in r.iter_lines() if line.startswith("data: "))
        assert json.loads(first.removeprefix("data: "))["object"] == "text_completion"
    deadline = time.monotonic() + 30
    while metrics.value("adaptforge_rejected_total", {"reason": "cancelled"}) < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert metrics.value("adaptforge_rejected_total", {"reason": "cancelled"}) == 1
    assert metrics.value("adaptforge_generated_tokens_total") == tokens  # the sequence never finished
    assert chat(client, "g1", "hi", max_tokens=3)["usage"]["completion_tokens"] == 3


def test_models_and_metrics(client, tiny_llama):
    models = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    assert models["g0"]["base"] == tiny_llama.name
    assert models[tiny_llama.name]["kind"] == "base"
    chat(client, tiny_llama.name, "hi", max_tokens=2)  # the base by its own name
    text = client.get("/metrics").text
    for family in (
        "adaptforge_generated_tokens_total",
        "adaptforge_time_to_first_token_seconds_count",
        "adaptforge_generation_tokens_per_second_count",
        'adaptforge_requests_total{route="/v1/chat/completions",status="200"}',
    ):
        assert family in text


def test_a_client_leaving_before_a_whole_answer_frees_its_slot(client, server):
    """A non-streamed request: the server polls for the disconnect while it waits, and the sequence leaves."""
    metrics = server.service.metrics
    gone, cancelled = (metrics.value("adaptforge_rejected_total", {"reason": r}) for r in ("client_gone", "cancelled"))
    tokens = metrics.value("adaptforge_generated_tokens_total")
    body = {"model": "g1", "prompt": PROMPTS[0], "max_tokens": 480, "min_tokens": 480, "temperature": 0}
    with httpx.Client(base_url=server.url, timeout=0.3) as own, pytest.raises(httpx.ReadTimeout):
        own.post("/v1/completions", json=body)  # gives up and closes the connection long before 480 tokens
    deadline = time.monotonic() + 30
    while (
        metrics.value("adaptforge_rejected_total", {"reason": "cancelled"}) == cancelled and time.monotonic() < deadline
    ):
        time.sleep(0.02)
    assert metrics.value("adaptforge_rejected_total", {"reason": "client_gone"}) == gone + 1
    assert metrics.value("adaptforge_rejected_total", {"reason": "cancelled"}) == cancelled + 1
    assert metrics.value("adaptforge_generated_tokens_total") == tokens  # the sequence never finished
    assert chat(client, "g1", "hi", max_tokens=3)["usage"]["completion_tokens"] == 3


def test_an_adapter_added_while_serving_is_listed_and_answers(client, lib, tiny_llama):
    named = dict(tiny_llama.model.named_modules())
    shapes = {n: tuple(m.weight.shape) for n, m in named.items() if n.endswith(ATTENTION)}
    assert "late" not in {m["id"] for m in client.get("/v1/models").json()["data"]}
    lib.add(
        random_delta(shapes, rank=3, scale=1.0, seed=7, std=0.3),
        name="late",
        base=tiny_llama,
        task=TaskEntry("t"),
    )
    models = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    assert models["late"]["base"] == tiny_llama.name and models["late"]["rank"] == 3
    answer = chat(client, "late", PROMPTS[1], max_tokens=10)
    assert answer["model"] == "late" and answer["usage"]["completion_tokens"] > 0
    assert text_of(answer) != text_of(chat(client, "base", PROMPTS[1], max_tokens=10))


def test_request_time_merge_answers_as_the_stored_merge(client, server, lib, tiny_llama):
    from adaptforge.pipelines.merge import MergeRecipe, merge_into_library

    named = dict(tiny_llama.model.named_modules())
    shapes = {n: tuple(m.weight.shape) for n, m in named.items() if n.endswith(ATTENTION)}
    delta = random_delta(shapes, rank=2, scale=1.0, seed=9, std=0.3)  # g0's modules: a merge needs the same ones
    lib.add(delta, name="ma", base=tiny_llama, task=TaskEntry("t"))
    recipe = MergeRecipe("task_arithmetic", ("g0", "ma"), "m01", {"weights": [0.7, 0.6]})
    merge_into_library(recipe, lib, backbone=tiny_llama)
    spec = {"adapters": ["g0", "ma"], "weights": [0.7, 0.6]}
    metrics = server.service.metrics
    hits = metrics.value("adaptforge_merge_cache_hits_total")
    for path, body in (
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": PROMPTS[3]}]}),
        ("/v1/completions", {"prompt": PROMPTS[3]}),
    ):
        body = {"max_tokens": 12, "temperature": 0, **body}
        stored = client.post(path, json={"model": "m01", **body}).json()
        merged = client.post(path, json={"model": "base", "merge": spec, **body}).json()
        assert text_of(merged) == text_of(stored) and merged["model"] == "task_arithmetic(g0,ma)"
        streamed = events(client, path, {"model": tiny_llama.name, "merge": spec, **body})
        pieces = [
            c["choices"][0].get("delta", {}).get("content") or c["choices"][0].get("text", "") for c in streamed[:-1]
        ]
        assert "".join(pieces) == text_of(stored)
        alone = {text_of(client.post(path, json={"model": m, **body}).json()) for m in ("g0", "ma")}
        assert text_of(stored) not in alone  # the merge is neither of its parts
    assert metrics.value("adaptforge_merge_cache_hits_total") == hits + 3  # computed once, then found ready


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"model": "g0", "merge": {"adapters": ["g0", "g1"]}}, 422, "model"),
        ({"merge": {"adapters": ["g0", "nope"]}}, 404, "merge.adapters[1]"),
        ({"merge": {"adapters": ["g0", "g0"]}}, 422, "merge.adapters"),
        ({"merge": {"adapters": ["g0", "g1"], "weights": [1.0]}}, 422, "merge.weights"),
        ({"merge": {"method": "atlas", "adapters": ["g0", "g1"]}}, 422, "merge.method"),
        ({"merge": {"method": "tiez", "adapters": ["g0", "g1"]}}, 422, "merge.method"),
        ({"merge": {"adapters": ["g0", "g1"], "params": {"densty": 0.5}}}, 422, "merge.params"),
        ({"merge": {"adapters": []}}, 422, "merge.adapters"),
        ({"merge": {"adapters": ["g0", "g1"]}, "route": "arrow"}, 422, "route"),
        ({"model": "g0", "route": "arrow"}, 422, "model"),
        ({"route": {"method": "arrow", "adapters": ["g0", "g1"]}}, 422, "route.adapters"),
    ],
)
def test_bad_request_time_merges_and_routes_name_the_field(client, body, status, field):
    request = {"model": "base", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **body}
    response = client.post("/v1/chat/completions", json=request)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["field"] == field and field.split("[")[0] in error["message"]
    assert chat(client, "g0", "hi", max_tokens=2)["usage"]["completion_tokens"] == 2


def test_arrow_routes_every_generated_token(client, lib, tiny_llama, tiny_llama_dir):
    """A request-time Arrow router and a stored Arrow composition generate what the base model with Arrow's
    per-token hooks generates (``generate``, on a copy of the model), and differ from either adapter alone."""
    from adaptforge.compose.arrow import ArrowRouter
    from adaptforge.generation import generate, prompt_text
    from adaptforge.routing import routed_settings

    named = dict(tiny_llama.model.named_modules())
    shapes = {n: tuple(m.weight.shape) for n, m in named.items() if n.endswith(ATTENTION)}
    deltas = [random_delta(shapes, rank=2, scale=1.0, seed=20 + i, std=0.4) for i in range(2)]
    ids = []
    for i, delta in enumerate(deltas):
        record = lib.add(delta, name=f"r{i}", base=tiny_llama, task=TaskEntry(f"t{i}"))
        ids.append(record.id)
    router = ArrowRouter(deltas, top_k=1)
    lib.add(
        deltas[0],  # the static fallback; serving must route instead
        name="arrow-r",
        base=tiny_llama,
        provenance=made_by(
            "compose",
            {
                "method": "arrow",
                "task": {"name": "t"},
                "shots": {"k": 0, "seed": 0},
                "router": routed_settings(router, ids),
            },
            {},
        ),
        parents=ids,
    )
    copy = Backbone.load(str(tiny_llama_dir))
    tok = copy.tokenizer
    prompt = [
        tok(prompt_text(tok, [{"role": "user", "content": p}]), add_special_tokens=False).input_ids for p in PROMPTS
    ]
    with router.applied(copy.model):
        expected = generate(copy.model, tok, prompt, max_new_tokens=10, batch_size=1)
    route = {"method": "arrow", "adapters": ["r0", "r1"], "params": {"top_k": 1}}
    served = [chat(client, "base", p, max_tokens=10, route=route) for p in PROMPTS]
    assert [text_of(s).strip() for s in served] == expected
    assert served[0]["model"] == "route:arrow(r0,r1)"
    assert [text_of(chat(client, "arrow-r", p, max_tokens=10)).strip() for p in PROMPTS] == expected
    alone = [[text_of(chat(client, f"r{i}", p, max_tokens=10)).strip() for p in PROMPTS] for i in range(2)]
    assert expected not in alone
    response = client.post(
        "/v1/chat/completions",
        json={"model": "base", "messages": [{"role": "user", "content": "hi"}], "route": "dawin"},
    )
    assert response.status_code == 422 and response.json()["error"]["field"] == "route"
