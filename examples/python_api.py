"""The Python API end to end on the embedded MiniLM and two shipped tasks: train two adapters, load one and score
texts with it, merge the two, evaluate the merge. ``python examples/python_api.py LIBRARY [MAX_TRAIN]``."""

from __future__ import annotations

import sys

from adaptforge import api


def main(library: str, max_train: int = 64) -> dict:
    model = api.load_model()  # the embedded all-MiniLM-L6-v2; api.load_model("smollm2") for the LLM
    lib = api.open_library(library)
    config = api.TrainConfig(epochs=1, max_train=max_train)
    tasks = {name: api.shipped_task(name) for name in ("sst2", "subjectivity")}
    for name, task in tasks.items():
        record = api.train(task, lib, f"{name}-lora", model, config, overwrite=True)
        print(f"trained {record.name} ({record.id})")

    adapter = api.load_adapter(lib, "sst2-lora", model)
    texts = ["a gripping, beautifully acted film", "a dull, lifeless mess"]
    scored = api.score(model, tasks["sst2"], texts, adapter)
    print(dict(zip(texts, scored.predictions, strict=True)))

    merged = api.merge(lib, ["sst2-lora", "subjectivity-lora"], "reviews", params={"scaling": 0.5}, overwrite=True)
    result = api.evaluate(model, tasks["sst2"], api.load_adapter(lib, merged.name, model), limit=64)
    print(f"{merged.name} (made from {len(merged.parents)} adapters): sst2 test accuracy {result.accuracy:.3f}")
    return {"predictions": scored.predictions, "merged": merged.name, "accuracy": result.accuracy}


if __name__ == "__main__":
    main(sys.argv[1], *(int(a) for a in sys.argv[2:3]))
