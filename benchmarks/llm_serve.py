"""Serving the embedded LLM's adapters over OpenAI's API: correctness against ``predict``, speed against PEFT's
adapter switching and against a merged adapter, time to first token. The plan (written before the first run) and
the record: docs/experiments/llm_serve.md.

python benchmarks/llm_serve.py [--prompts 100] [--max-tokens 24] [--speed-tokens 48] [--reps 3] [--threads 2]
    [--json FILE]

1. Served == predict: ``--prompts`` prompts from the three shipped generation tasks, request ``i`` for SFT adapter
   ``i % 3`` (trained in this run), all sent at once (16 client threads), greedy; ``predict`` per adapter on the
   same prompts. Every served answer must equal predict's.
2. 8 concurrent requests for 8 adapters (3 trained + 5 random ones, which also adapt the MLP) vs PEFT: one
   ``PeftModel`` with the 8 adapters, ``set_adapter`` + ``generate`` per request, one after another. Both sides
   generate exactly ``--speed-tokens`` tokens per request (end of sequence held off). Bar: >= 3x tokens/s.
3. Unmerged per-row LoRA vs the adapter merged into the weights, same server, same 8 prompts: 8 adapters per row,
   one adapter per row, and the merged base. Bar: 8 adapters within 15% of merged.
4. Time to first token with streaming, alone and among 8 streams.
Run it alone on the machine: every side shares the cores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import httpx  # noqa: E402
import torch  # noqa: E402

from adaptforge.backbone import Backbone  # noqa: E402
from adaptforge.core import LoraDelta, LoraModule  # noqa: E402
from adaptforge.generation import user_turn  # noqa: E402
from adaptforge.library import (
    Library,  # noqa: E402
    TaskEntry,
)
from adaptforge.pipelines.predict import predict  # noqa: E402
from adaptforge.pipelines.serve import build_service, start_in_thread  # noqa: E402
from adaptforge.serve import ServeConfig  # noqa: E402
from adaptforge.tasks import load_task  # noqa: E402
from adaptforge.train.config import TrainConfig  # noqa: E402
from adaptforge.train.trainer import train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TASKS = ROOT / "src" / "adaptforge" / "data" / "tasks"
TRAINED = ("country_capital", "arith_add", "word_reverse")
STORIES = [
    "Write a short story about a lighthouse keeper.",
    "Write a short story about a lost dog.",
    "Describe a walk through a forest in autumn.",
    "Write a short story about a robot learning to paint.",
    "Describe a busy market in the morning.",
    "Write a short story about two friends on a boat.",
    "Describe a city at night in the rain.",
    "Write a short story about a baker and a dragon.",
]


def build_library(backbone: Backbone, root: Path, max_train: int) -> tuple[Library, list[str], dict[str, list[str]]]:
    """Three SFT adapters (and the user turns of their test prompts) and five random ones."""
    lib = Library(root)
    names, turns = [], {}
    cfg = TrainConfig(max_train=max_train, epochs=1, batch_size=8, lr=1e-3, max_length=256, checkpoint_every=0, seed=0)
    for task_name in TRAINED:
        task = load_task(TASKS / task_name)
        start = time.perf_counter()
        result = train(task, backbone, cfg)
        print(f"trained {task_name} in {time.perf_counter() - start:.0f} s", flush=True)
        lib.add(result.delta, name=task_name, base=backbone, task=TaskEntry(task.name, description=task.description))
        names.append(task_name)
        turns[task_name] = [user_turn(task.description, e.text) for e in task.split("test")]
    shapes = backbone.target_shapes()
    for seed in range(1, 6):
        gen = torch.Generator().manual_seed(seed)
        modules = {}
        for name, (out_dim, in_dim) in shapes.items():
            A = torch.randn(8, in_dim, generator=gen) / in_dim**0.5
            B = torch.randn(out_dim, 8, generator=gen) * 0.02
            modules[name] = LoraModule(A=A, B=B, scale=2.0)
        lib.add(LoraDelta(modules), name=f"random{seed}", base=backbone)
        names.append(f"random{seed}")
    return lib, names, turns


def chat_body(model: str, prompt: str, max_tokens: int, min_tokens: int = 0, stream: bool = False) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens}
    body.update(temperature=0, min_tokens=min_tokens, stream=stream)
    return body


def concurrently(url: str, bodies: list[dict], threads: int) -> tuple[list[dict], float]:
    """Send ``bodies`` from ``threads`` client threads at once; the answers in order and the wall time."""
    answers: list[dict] = [{}] * len(bodies)

    def worker(k: int) -> None:
        with httpx.Client(base_url=url, timeout=600) as client:
            for i in range(k, len(bodies), threads):
                response = client.post("/v1/chat/completions", json=bodies[i])
                response.raise_for_status()
                answers[i] = response.json()

    pool = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    start = time.perf_counter()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return answers, time.perf_counter() - start


def streamed(url: str, body: dict) -> dict:
    """Time to the first content chunk and to ``[DONE]`` of one streamed request."""
    start = time.perf_counter()
    first = None
    pieces = []
    with (
        httpx.Client(base_url=url, timeout=600) as client,
        client.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            content = json.loads(line[6:])["choices"][0]["delta"].get("content")
            if content:
                first = first if first is not None else time.perf_counter() - start
                pieces.append(content)
    return {"first_token_s": first, "total_s": time.perf_counter() - start, "text": "".join(pieces)}


def check_equal_to_predict(backbone: Backbone, lib: Library, turns: dict, args: argparse.Namespace, tmp: Path) -> dict:
    per = [args.prompts // 3 + (1 if i < args.prompts % 3 else 0) for i in range(3)]
    # interleaved: adapter i % 3 for request i, so the queue (and every batch) mixes the three
    requests = [(name, turns[name][j]) for j in range(max(per)) for name, n in zip(TRAINED, per, strict=True) if j < n]
    with start_in_thread(build_service(lib, ServeConfig(port=0, max_batch=32), backbone=backbone)) as running:
        bodies = [chat_body(name, p, args.max_tokens) for name, p in requests]
        answers, seconds = concurrently(running.url, bodies, 16)
        metrics = running.service.metrics
        steps = metrics.value("adaptforge_decode_batch_rows")
    served = [a["choices"][0]["message"]["content"].strip() for a in answers]
    expected = [""] * len(requests)
    start = time.perf_counter()
    for name in TRAINED:
        mine = [i for i, (n, _) in enumerate(requests) if n == name]
        file = tmp / f"{name}.jsonl"
        file.write_text("".join(json.dumps({"prompt": requests[i][1]}) + "\n" for i in mine))
        outputs = [a.output for a in predict(file, lib, name, model="smollm2", max_new_tokens=args.max_tokens)]
        for i, output in zip(mine, outputs, strict=True):
            expected[i] = output
    predict_s = time.perf_counter() - start
    mismatches = [
        {"adapter": requests[i][0], "prompt": requests[i][1], "served": served[i], "predict": expected[i]}
        for i in range(len(requests))
        if served[i] != expected[i]
    ]
    tokens = sum(a["usage"]["completion_tokens"] for a in answers)
    return {
        "prompts": len(requests),
        "adapters": list(TRAINED),
        "equal": len(requests) - len(mismatches),
        "distinct_answers": len(set(served)),
        "mismatches": mismatches[:5],
        "served_seconds": seconds,
        "served_tokens": tokens,
        "decode_steps": steps,
        "predict_seconds": predict_s,
    }


def peft_switching(backbone: Backbone, lib: Library, names: list[str], args: argparse.Namespace) -> list[float]:
    import copy

    from peft import PeftModel

    model = PeftModel.from_pretrained(copy.deepcopy(backbone.model), str(lib.get(names[0]).path), adapter_name=names[0])
    for name in names[1:]:
        model.load_adapter(str(lib.get(name).path), adapter_name=name)
    model.eval()
    tok = backbone.tokenizer
    from adaptforge.generation import prompt_text

    ids = [
        tok(prompt_text(tok, [{"role": "user", "content": p}]), add_special_tokens=False, return_tensors="pt")
        for p in STORIES
    ]
    times = []
    for rep in range(args.reps + 1):
        start = time.perf_counter()
        with torch.no_grad():
            for name, x in zip(names, ids, strict=True):
                model.set_adapter(name)
                out = model.generate(
                    **x,
                    max_new_tokens=args.speed_tokens,
                    min_new_tokens=args.speed_tokens,
                    do_sample=False,
                    temperature=None,
                    top_p=None,
                    top_k=None,
                    pad_token_id=tok.pad_token_id,
                    eos_token_id=tok.eos_token_id,
                )
                assert out.shape[1] - x["input_ids"].shape[1] == args.speed_tokens
        if rep:  # the first is a warm-up
            times.append(time.perf_counter() - start)
    return times


def timed_runs(url: str, bodies: list[dict], reps: int) -> tuple[list[float], int]:
    concurrently(url, bodies, len(bodies))  # warm-up
    times, tokens = [], 0
    for _ in range(reps):
        answers, seconds = concurrently(url, bodies, len(bodies))
        times.append(seconds)
        tokens = sum(a["usage"]["completion_tokens"] for a in answers)
    return times, tokens


def speed(backbone: Backbone, lib: Library, names: list[str], args: argparse.Namespace) -> dict:
    n = args.speed_tokens
    mixed = [chat_body(name, p, n, n) for name, p in zip(names, STORIES, strict=True)]
    single = [chat_body(names[0], p, n, n) for p in STORIES]
    out: dict = {}
    with start_in_thread(build_service(lib, ServeConfig(port=0, max_batch=8, max_wait_ms=20), backbone=backbone)) as r:
        out["ours_8_adapters"], tokens = timed_runs(r.url, mixed, args.reps)
        out["ours_1_adapter"], _ = timed_runs(r.url, single, args.reps)
        whole = concurrently(r.url, mixed[:1], 1)[0][0]["choices"][0]["message"]["content"]
        alone = streamed(r.url, {**mixed[0], "stream": True})
        many: list[dict] = [{}] * 8

        def one(i: int) -> None:
            many[i] = streamed(r.url, {**mixed[i], "stream": True})

        pool = [threading.Thread(target=one, args=(i,)) for i in range(8)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        out["streaming"] = {
            "alone": {"first_token_s": alone["first_token_s"], "total_s": alone["total_s"]},
            "among_8": {
                "first_token_s_median": statistics.median(m["first_token_s"] for m in many),
                "total_s_median": statistics.median(m["total_s"] for m in many),
            },
            "streamed_text_equals_whole": alone["text"] == whole,
        }
        metrics = r.service.metrics_text()
    out["tokens_per_run"] = tokens
    out["metrics_ttft_lines"] = [line for line in metrics.splitlines() if "first_token_seconds_sum" in line]
    delta, _ = lib.load(names[0])
    with backbone.applied(delta):
        merged_base = [chat_body("base", p, n, n) for p in STORIES]
        with start_in_thread(
            build_service(
                Library(Path(tempfile.mkdtemp()) / "empty"),
                ServeConfig(port=0, max_batch=8, max_wait_ms=20),
                backbone=backbone,
            )
        ) as r:
            out["merged"], _ = timed_runs(r.url, merged_base, args.reps)
    out["peft_switching"] = peft_switching(backbone, lib, names, args)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=100)
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--speed-tokens", type=int, default=48)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--max-train", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    backbone = Backbone.load("smollm2")
    with tempfile.TemporaryDirectory() as tmp:
        lib, names, turns = build_library(backbone, Path(tmp) / "lib", args.max_train)
        equality = check_equal_to_predict(backbone, lib, turns, args, Path(tmp))
        print(f"served == predict: {equality['equal']}/{equality['prompts']}", flush=True)
        runs = speed(backbone, lib, names, args)
    med = {k: statistics.median(runs[k]) for k in ("ours_8_adapters", "ours_1_adapter", "merged", "peft_switching")}
    tokens = 8 * args.speed_tokens
    result = {
        "setup": {"model": "smollm2", "threads": args.threads, **vars(args), "json": None},
        "equality": equality,
        "speed_seconds_median": med,
        "tokens_per_second": {k: tokens / v for k, v in med.items()},
        "runs": runs,
        "ratios": {
            "ours_vs_peft_switching": med["peft_switching"] / med["ours_8_adapters"],
            "unmerged_8_adapters_over_merged": med["ours_8_adapters"] / med["merged"],
            "unmerged_1_adapter_over_merged": med["ours_1_adapter"] / med["merged"],
        },
    }
    print(json.dumps({k: result[k] for k in ("speed_seconds_median", "tokens_per_second", "ratios")}, indent=2))
    print(json.dumps(runs["streaming"], indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
