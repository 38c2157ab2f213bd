"""The main job end to end, with little training so it stays a test (the real run is `make demo`)."""

from __future__ import annotations

import io
import json

import pytest
from helpers import random_delta
from rich.console import Console

from adaptforge.cli.demo import RichView
from adaptforge.library import BaseRef, Library
from adaptforge.pipelines.demo import DEMO_COMPOSE_METHOD, DEMO_NEW_TASK, DEMO_TASKS, drop_previous_run, run_demo


def test_a_rerun_first_drops_what_the_earlier_run_made_from_its_task_adapters(tmp_path):
    lib = Library(tmp_path / "lib")

    def add(name: str, parents: tuple[str, ...] = ()) -> None:
        lib.add(random_delta(["m"]), name=name, base=BaseRef("b", "fp"), parents=list(parents))

    add("sst2-lora"), add("agnews-lora"), add("demo-ties", ("sst2-lora", "agnews-lora"))
    add("demo-sweep-ta-1", ("sst2-lora", "agnews-lora")), add("mine", ("sst2-lora",))
    add(f"{DEMO_NEW_TASK}-retrieval", ("agnews-lora",)), add(f"{DEMO_NEW_TASK}-tuned", (f"{DEMO_NEW_TASK}-retrieval",))
    made = ["demo-ties", "demo-sweep-ta-1", f"{DEMO_NEW_TASK}-retrieval", f"{DEMO_NEW_TASK}-tuned"]
    assert sorted(drop_previous_run(lib)) == sorted(made)  # a child before its parent, or remove would refuse
    assert [r.name for r in lib.list()] == ["sst2-lora", "agnews-lora", "mine"]  # not the demo's: kept
    assert drop_previous_run(lib) == []


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path):
    console = Console(file=io.StringIO(), record=True, width=160)
    path = run_demo(tmp_path / "demo", RichView(console), max_train=24, epochs=1)
    summary = json.loads(path.read_text())
    assert [r["task"] for r in summary["tasks"]] == list(DEMO_TASKS)
    for row in summary["tasks"]:
        assert 0 <= row["zero_shot_accuracy"] <= 1 and 0 <= row["lora_accuracy"] <= 1 and row["n_test"] == 300
    library = Library(tmp_path / "demo" / "library", create=False)
    names = {r.name for r in library.list()}
    assert {f"{t}-lora" for t in DEMO_TASKS} <= names
    merged = [r for r in library.list() if r.recipe.get("kind") == "merge"]
    assert merged and all(len(library.lineage(r.name)) == len(DEMO_TASKS) for r in merged)
    sweep = summary["sweep"]
    assert [r["status"] for r in sweep] == ["ran"] * 3 and all(0 <= r["accuracy"] <= 1 for r in sweep)
    assert all(len(library.lineage(r["adapter"])) == len(DEMO_TASKS) for r in sweep)
    new = summary["new_task"]
    assert new["task"] == DEMO_NEW_TASK and DEMO_NEW_TASK not in DEMO_TASKS
    for key in (DEMO_COMPOSE_METHOD, "generate"):
        record = library.get(new[f"{key}_adapter"])
        assert record.task == DEMO_NEW_TASK and 0 <= new[f"{key}_accuracy"] <= 1
        assert {p.task for p in library.lineage(record.name)} <= set(DEMO_TASKS)
    text = console.export_text()
    assert "zero-shot vs LoRA" in text and f"new task {DEMO_NEW_TASK}" in text
    assert summary["prune"]["sparsity"] > 0.49 and 0 <= summary["prune"]["domain_adapter_pruned_base"] <= 1
    assert [s["adapter"] for s in summary["use"]["served"]] == ["sst2-lora", "agnews-lora", "tweet_emotion-lora"]
    assert (tmp_path / "demo" / "report.html").is_file() and summary["use"]["tta"]["n"] == 100
    assert "pruned for sst2" in text and "served sst2-lora" in text and "tent on sst2" in text
    assert "best cell on dev" in text


def test_llm_demo_on_a_tiny_llama_through_the_cli(tmp_path, tiny_llama_dir, one_torch_thread):
    """``adaptforge demo --model <causal LM>``: SFT on the two shipped generation tasks, base vs adapter vs merge
    by exact match and ROUGE-L, greedy answers, the summary; every number traced to the library's catalog. A second
    run replaces the first's adapters and merge (the real run is ``make demo-llm``)."""
    from helpers import run_cli

    from adaptforge.pipelines.demo import LLM_DEMO_TASKS

    out = tmp_path / "demo-llm"
    for _ in range(2):
        result = run_cli("demo", "--model", tiny_llama_dir, "--out", out, "--max-train", 8, "--epochs", 1)
    assert "expected about" in result.output and "demo-llm" in result.output
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["tasks"]) == list(LLM_DEMO_TASKS) and summary["merge"]["method"] == "task_arithmetic"
    library = Library(out / "library", create=False)
    assert sorted(r.name for r in library.list()) == sorted([*(f"{t}-lora" for t in LLM_DEMO_TASKS), "demo-merged"])
    merged = library.get("demo-merged")
    assert set(merged.parents) == {library.get(f"{t}-lora").id for t in LLM_DEMO_TASKS}
    for name, row in summary["tasks"].items():
        assert row["n_train"] == 8
        for column, adapter in (("base", None), ("adapter", f"{name}-lora"), ("merged", "demo-merged")):
            cell = row[column]
            assert cell["task"] == name and cell["adapter"] == adapter and cell["n"] == 24
            rows = library.metrics(adapter, task=name, split="test", zero_shot=adapter is None, subset=cell["subset"])
            stored = {m.metric: m.value for m in rows}
            assert stored["exact_match"] == cell["exact_match"] and stored["rouge_l"] == cell["rouge_l"]
        answers = summary["answers"][name]
        assert len(answers) == 3 and all(set(a) == {"prompt", "gold", "base", "adapter"} for a in answers)
        assert all(f"{a['prompt']!r}" in result.output for a in answers)
