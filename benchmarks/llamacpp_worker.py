"""The llama.cpp side of ``benchmarks/llm_serve_llamacpp.py``, run by that script in a Python that has the
``llama-cpp-python`` package (its own virtual environment; nothing of adaptforge is imported here).

Reads one JSON job on stdin: ``{"model": GGUF, "lora": GGUF or null, "threads": n, "n_ctx": n, "runs": [{"name",
"prompts": [[token ids], ...], "max_tokens": n, "min_tokens": bool}]}``; writes one JSON object on stdout: per run,
per prompt, the generated token count, the text and the seconds. Prompts are given as token ids (the chat template
already applied by the caller), so both sides start from the same tokens. Greedy: temperature 0, no repetition
penalty; with ``min_tokens`` the end of sequence is banned, so every answer is exactly ``max_tokens`` long.
"""

from __future__ import annotations

import json
import sys
import time


def main() -> None:
    import llama_cpp

    job = json.load(sys.stdin)
    start = time.perf_counter()
    llm = llama_cpp.Llama(
        model_path=job["model"],
        lora_path=job.get("lora"),
        n_ctx=job["n_ctx"],
        n_threads=job["threads"],
        n_threads_batch=job["threads"],
        verbose=False,
        seed=0,
    )
    out = {"version": llama_cpp.__version__, "load_s": time.perf_counter() - start, "runs": {}}
    eos = llm.token_eos()
    for run in job["runs"]:
        answers = []
        for ids in run["prompts"]:
            llm.reset()
            begin = time.perf_counter()
            answer = llm.create_completion(
                prompt=ids,
                max_tokens=run["max_tokens"],
                temperature=0.0,
                repeat_penalty=1.0,
                logit_bias={eos: -1e9} if run["min_tokens"] else None,
            )
            seconds = time.perf_counter() - begin
            answers.append(
                {
                    "tokens": answer["usage"]["completion_tokens"],
                    "text": answer["choices"][0]["text"],
                    "seconds": seconds,
                }
            )
        out["runs"][run["name"]] = answers
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
