"""The main job: the adapter lifecycle end to end on the embedded model and the shipped tasks.

Zero-shot evaluation, one LoRA adapter per task trained into a fresh library, evaluation of each
adapter on its task, a table and a JSON summary; then the adapters are merged (one model for all
tasks) and a sweep picks the merge's scaling on dev; a task kept out of the library gets an adapter
from 16 shots (the best retrieved adapter plus a LoRA tuned on the shots) and from its description
alone (the generator); the base is pruned for one task and what it kept is shown; finally the library
is used: one server request whose texts each name another adapter, test-time adaptation to
corrupted inputs, and the HTML report.

With a causal LM (``adaptforge demo --model smollm2``, :func:`run_llm_demo`) it is the LLM's lifecycle instead:
supervised fine-tuning on two shipped generation tasks, base vs adapter by exact match and ROUGE-L, the two
adapters merged and scored on both, and greedy answers printed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from adaptforge.backbone import Backbone
from adaptforge.core import AdaptforgeError, LoraDelta
from adaptforge.durable import remove_inside
from adaptforge.evaluate import evaluate
from adaptforge.generation import GenerationResult
from adaptforge.library import Library
from adaptforge.pipelines.common import record_result
from adaptforge.pipelines.train import TrainedAdapter, train_into_library
from adaptforge.scorers import make_scorer
from adaptforge.tasks import Task, load_task
from adaptforge.train.config import TrainConfig

DEMO_TASKS = ("sst2", "agnews", "trec_question_type", "tweet_emotion", "dbpedia", "mnli", "subjectivity", "tweet_hate")
# Shipped but kept out of the demo library: the compose step builds its adapter from a few shots.
DEMO_NEW_TASK = "tweet_offensive"


TrainProgress = Callable[[int, int, float, float], None]  # (done, total, loss, tokens per second)


class DemoView(Protocol):
    """What the demo shows while it runs: progress lines, each step's table data (``step`` is ``accuracy``,
    ``merge``, ``sweep``, ``new_task``, ``prune`` or ``llm``; ``data`` what the table needs) and a training
    progress callback per task (None: the trainer's own progress lines). ``adaptforge demo`` renders it
    (:mod:`adaptforge.cli.demo`)."""

    def say(self, text: str) -> None: ...

    def show(self, step: str, data: Mapping[str, Any]) -> None: ...

    def training(self, task: str) -> AbstractContextManager[TrainProgress | None]: ...


def shipped_tasks_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "data" / "tasks"


def shipped_tasks(names: tuple[str, ...] = DEMO_TASKS) -> list[Task]:
    return [load_task(shipped_tasks_dir() / name) for name in names]


def run_demo(out_dir: Path, view: DemoView, max_train: int | None = None, epochs: int | None = None) -> Path:
    """The encoder demo: zero-shot vs LoRA on :data:`DEMO_TASKS`, then merge, sweep, a new task (compose and
    generate), prune and use (serve, test-time adaptation, the report); shown through ``view``, summarised in
    ``out_dir/summary.json`` (its path is returned)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    tasks = shipped_tasks()
    backbone = Backbone.load()
    scorer = make_scorer(backbone)
    library = Library(out_dir / "library")
    drop_previous_run(library)
    cfg = TrainConfig(epochs=epochs or 3, max_train=max_train)
    view.say(f"adaptforge demo: {len(tasks)} tasks on {backbone.name} ({backbone.fingerprint[:12]})")
    view.say(demo_size_line(tasks, cfg))
    rows = []
    for task in tasks:
        zero = evaluate(scorer, task, "test")
        trained = train_with_bar(task, backbone, library, cfg, view)
        delta, _ = library.load(trained.record.id, expected_fingerprint=backbone.fingerprint)  # the stored copy
        tuned = evaluate(scorer, task, "test", delta, adapter=trained.record.name)
        for res, adapter_id in ((zero, None), (tuned, trained.record.id)):
            record_result(library, adapter_id, backbone.fingerprint, task, res)
        rows.append(
            {
                "task": task.name,
                "n_train": trained.result.n_train,
                "n_test": zero.n,
                "zero_shot_accuracy": zero.accuracy,
                "lora_accuracy": tuned.accuracy,
                "zero_shot_macro_f1": zero.macro_f1,
                "lora_macro_f1": tuned.macro_f1,
                "train_seconds": round(trained.result.seconds, 1),
            }
        )
        view.say(
            f"  {task.name}: zero-shot {zero.accuracy:.3f} -> LoRA {tuned.accuracy:.3f}"
            f"  ({trained.result.seconds:.0f}s training)"
        )
    mean_zero = sum(r["zero_shot_accuracy"] for r in rows) / len(rows)
    mean_lora = sum(r["lora_accuracy"] for r in rows) / len(rows)
    view.show("accuracy", {"rows": rows, "average": {"zero_shot_accuracy": mean_zero, "lora_accuracy": mean_lora}})
    summary = {
        "model": backbone.name,
        "fingerprint": backbone.fingerprint,
        "library": str(library.root),
        "tasks": rows,
        "average": {"zero_shot_accuracy": mean_zero, "lora_accuracy": mean_lora},
        "seconds": round(time.perf_counter() - t0, 1),
    }
    view.say("== merge: the adapters merged by task arithmetic and TIES, each merge scored on every test split")
    summary["merge"] = demo_merge_step(tasks, backbone, library, view)
    view.say("== sweep: task arithmetic's scaling chosen on dev")
    summary["sweep"] = demo_sweep_step(tasks, library, out_dir, view)
    view.say(
        f"== new task {DEMO_NEW_TASK}: from {DEMO_COMPOSE_SHOTS} shots (compose {DEMO_COMPOSE_METHOD}) and from its "
        "description (generate)"
    )
    summary["new_task"] = demo_compose_step(backbone, library, view)
    view.say(
        f"== prune: the base for {DEMO_PRUNE[0]} ({DEMO_PRUNE[1]}, sparsity {DEMO_PRUNE[2]}), dense vs pruned "
        "zero-shot on every task"
    )
    summary["prune"] = demo_prune_step(tasks, backbone, library, out_dir, view)
    view.say("== use: one served request, test-time adaptation, the HTML report")
    summary["use"] = demo_use_step(tasks, backbone, library, out_dir, view)
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    path = out_dir / "summary.json"
    path.write_text(json.dumps(summary, indent=2))
    return path


def demo_size_line(tasks: list[Task], cfg: TrainConfig) -> str:
    """What the run will train, and how long the default size takes (``make demo``, measured on this machine)."""
    per_task = [min(cfg.max_train or len(t.split("train")), len(t.split("train"))) for t in tasks]
    passes = sum(per_task) * cfg.epochs
    return (
        f"training {len(tasks)} adapters on {min(per_task)}-{max(per_task)} examples each x {cfg.epochs} epochs "
        f"({passes:,} example passes), then merge, sweep, compose, generate, prune and serve; the default "
        f"(all 400 examples x 3 epochs, {DEFAULT_DEMO_PASSES:,} passes) takes 7 to 9 minutes on 2 idle CPU cores, "
        "most of it training (--max-train 64 --epochs 1: a quick look)"
    )


DEFAULT_DEMO_PASSES = 400 * 3 * len(DEMO_TASKS)


def train_with_bar(
    task: Task, backbone: Backbone, library: Library, cfg: TrainConfig, view: DemoView
) -> TrainedAdapter:
    """Train ``<task>-lora`` into the library (replacing an earlier one), reporting progress to the view's
    training callback (None: the trainer's own progress lines)."""
    with view.training(task.name) as step:
        return train_into_library(
            task, backbone, library, f"{task.name}-lora", cfg, eval_splits=(), overwrite=True, progress=step
        )


# Merge step (issue 4). Scalings are the dev-tuned values of benchmarks/merge_quality.py on this suite.
DEMO_MERGES: tuple[tuple[str, dict[str, float]], ...] = (
    ("task_arithmetic", {"scaling": 0.35}),
    ("ties", {"density": 0.2, "scaling": 1.0}),
)


def demo_merge_step(
    tasks: list[Task], backbone: Backbone, library: Library, view: DemoView, adapters: list[str] | None = None
) -> list[dict]:
    """Merge the per-task adapters (default ``<task>-lora``) into one with each of :data:`DEMO_MERGES`
    (lineage in the library), evaluate on every task's test split and print normalized accuracy (merged /
    the task's own adapter, whose test accuracy the training step recorded)."""
    from adaptforge.pipelines.merge import MergeRecipe, merge_into_library

    adapters = adapters or [f"{task.name}-lora" for task in tasks]
    rows = []
    for method, params in DEMO_MERGES:
        name = f"demo-{method.replace('_', '-')}"
        recipe = MergeRecipe.from_mapping(
            {"method": method, "adapters": adapters, "params": params, "out": name}, where="demo"
        )
        outcome = merge_into_library(recipe, library, backbone=backbone, eval_tasks=tasks, overwrite=True)
        assert outcome.report is not None
        report = outcome.report.to_json()
        rows.append({"method": method, "adapter": name, "id": outcome.record.id, "params": params, **report})
        view.say(
            f"  merged {len(adapters)} adapters with {method}: average normalized accuracy "
            f"{report['average_normalized_accuracy']:.3f} ({outcome.seconds:.0f}s with evaluation)"
        )
    view.show("merge", {"tasks": [t.name for t in tasks], "rows": rows})
    return rows


# Sweep step (issue 18): task arithmetic's scaling chosen on dev by a grid, each cell a merged adapter in the library.
DEMO_SWEEP_SCALINGS = (0.2, 0.35, 0.5)
DEMO_SWEEP_DEV_LIMIT = 48


def drop_previous_run(library: Library) -> list[str]:
    """Remove what an earlier run of the demo made from its task adapters (merges, sweep cells, the new task's
    adapters: names ``demo-...`` and ``<new task>-...``), newest first; returns their names.
    Why: this run retrains every task adapter under its name with a new id, so those would stay behind made from
    parents that are gone (every overwrite and listing warns about them); the demo makes them again anyway."""
    prefixes = ("demo-", f"{DEMO_NEW_TASK}-")
    made = [r.name for r in reversed(library.list()) if r.name.startswith(prefixes)]
    for name in made:
        library.remove(name)
    return made


def demo_sweep_step(tasks: list[Task], library: Library, out_dir: Path, view: DemoView) -> list[dict]:
    """A sweep spec written to ``out_dir/sweep.yaml`` and run in this process: task arithmetic over the
    per-task adapters at each of :data:`DEMO_SWEEP_SCALINGS`, scored on every task's dev split, so the
    scaling is picked without looking at test."""
    import yaml

    from adaptforge.backends import BACKENDS
    from adaptforge.pipelines.sweep import SweepSpec, run_sweep

    spec = {
        "name": "demo-sweep",
        "merge": {
            "merges": [[f"{task.name}-lora" for task in tasks]],
            "methods": ["task_arithmetic"],
            "params": {"task_arithmetic": {"scaling": list(DEMO_SWEEP_SCALINGS)}},
            "eval": {
                "tasks": [str(shipped_tasks_dir() / task.name) for task in tasks],
                "split": "dev",
                "limit": DEMO_SWEEP_DEV_LIMIT,
            },
        },
    }
    path = out_dir / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    outcome = run_sweep(SweepSpec.from_yaml(path), library, BACKENDS.get("local")({}))
    rows = outcome.to_json()["cells"]
    view.show(
        "sweep", {"rows": rows, "title": f"sweep {path.name}: mean dev accuracy over {len(tasks)} tasks per cell"}
    )
    best = max((r for r in rows if r["accuracy"] is not None), key=lambda r: r["accuracy"])
    view.say(f"  best cell on dev: {best['label'].split()[-1]} -> {best['adapter']}")
    return rows


DEMO_COMPOSE_SHOTS = 16
# Retrieval + a LoRA tuned on the shots on top: the best k=16 method in benchmarks/new_task.py (few-shot
# aTLAS is second; LoraHub often keeps the base model). See BENCHMARKS.md.
DEMO_COMPOSE_METHOD = "tuned"


def demo_compose_step(backbone: Backbone, library: Library, view: DemoView) -> dict:
    """A task the library has never seen (:data:`DEMO_NEW_TASK`): compose its adapter from
    :data:`DEMO_COMPOSE_SHOTS` labelled examples and the library (:data:`DEMO_COMPOSE_METHOD`), and
    generate one from its description alone; print zero-shot vs both on its test split."""
    from adaptforge.pipelines.compose import compose_into_library
    from adaptforge.pipelines.generate import generate_into_library

    task = load_task(shipped_tasks_dir() / DEMO_NEW_TASK)
    composed = compose_into_library(
        task,
        library,
        f"{task.name}-{DEMO_COMPOSE_METHOD}",
        method=DEMO_COMPOSE_METHOD,
        shots=DEMO_COMPOSE_SHOTS,
        backbone=backbone,
        overwrite=True,
    )
    generated = generate_into_library(
        task.description,
        task.labels,
        library,
        f"{task.name}-generated",
        task_name=task.name,
        backbone=backbone,
        eval_task=task,
        overwrite=True,
    )
    zero = composed.evals["zero_shot"]
    table = [
        {"adapter": "zero-shot", "from": None, "accuracy": zero.accuracy, "macro_f1": zero.macro_f1, "seconds": None}
    ]
    rows = {"task": task.name, "zero_shot_accuracy": zero.accuracy}
    for outcome, source in ((composed, f"{DEMO_COMPOSE_SHOTS} shots + library"), (generated, "description only")):
        res = outcome.evals["adapter"]
        table.append(
            {
                "adapter": outcome.record.name,
                "from": source,
                "accuracy": res.accuracy,
                "macro_f1": res.macro_f1,
                "seconds": outcome.seconds,
            }
        )
        rows[f"{outcome.method}_accuracy"] = res.accuracy
        rows[f"{outcome.method}_adapter"] = outcome.record.name
    view.show("new_task", {"task": task.name, "rows": table})
    return rows


DEMO_PRUNE = ("sst2", "wanda", 0.5)  # domain, method, sparsity


def demo_prune_step(tasks: list[Task], backbone: Backbone, library: Library, out_dir: Path, view: DemoView) -> dict:
    """Prune the base for one domain (:data:`DEMO_PRUNE`): zero-shot accuracy dense vs pruned on every task
    (dev, the general ability kept), and the domain's own adapter applied to the pruned base (test)."""
    from adaptforge.pipelines.prune import prune_model

    domain_name, method, sparsity = DEMO_PRUNE
    domain = next(t for t in tasks if t.name == domain_name)
    folder = out_dir / f"pruned-{domain_name}-{method}"
    if folder.exists():
        remove_inside(folder, out_dir)
    outcome = prune_model(
        method,
        domain,
        folder,
        params={"sparsity": sparsity, "calibration_size": 64},
        backbone=backbone,
        eval_tasks=tasks,
        split="dev",
        limit=60,
    )
    pruned = Backbone.load(str(folder))
    delta, _ = library.load(f"{domain_name}-lora", expected_fingerprint=backbone.fingerprint)
    dense_acc = evaluate(make_scorer(backbone), domain, "test", delta).accuracy
    pruned_acc = evaluate(make_scorer(pruned), domain, "test", delta).accuracy
    table = [
        {
            "task": name,
            "dense": pair["dense"].accuracy,
            "pruned": pair["pruned"].accuracy,
            "kept": outcome.retention(name),
        }
        for name, pair in outcome.evals.items()
    ]
    view.show("prune", {"method": method, "sparsity": sparsity, "domain": domain_name, "rows": table})
    view.say(
        f"  {domain_name}-lora on the pruned base: test accuracy {pruned_acc:.3f} (dense base {dense_acc:.3f}); "
        f"sparsity {outcome.report.sparsity:.3f}, pruned in {outcome.seconds:.0f}s -> {folder}"
    )
    retained = [outcome.retention(n) for n in outcome.evals if n != domain_name]
    return {
        "domain": domain_name,
        "method": method,
        "sparsity": outcome.report.sparsity,
        "path": str(folder),
        "general_retention": sum(r for r in retained if r is not None) / max(1, len(retained)),
        "domain_adapter_dense_base": dense_acc,
        "domain_adapter_pruned_base": pruned_acc,
    }


def demo_use_step(tasks: list[Task], backbone: Backbone, library: Library, out_dir: Path, view: DemoView) -> dict:
    """Using the library: a server answering one request whose texts each name another adapter (one mixed
    forward pass), test-time adaptation of the sst2 adapter to word-dropped sst2 inputs, and the HTML report."""
    import random

    import httpx

    from adaptforge.pipelines.report import ReportConfig, write_report
    from adaptforge.pipelines.serve import build_service, start_in_thread
    from adaptforge.pipelines.tta import tta_on_task
    from adaptforge.serve.config import ServeConfig
    from adaptforge.tasks import Example

    picks = [t for t in tasks if t.name in ("sst2", "agnews", "tweet_emotion")]
    texts = [t.split("test")[0].text for t in picks]
    service = build_service(library, ServeConfig(port=0), backbone=backbone)
    with start_in_thread(service) as server:
        body = {"texts": texts, "adapters": [f"{t.name}-lora" for t in picks]}
        answer = httpx.post(f"{server.url}/v1/classify", json=body, timeout=60).json()
    served = [(t.name, r["label"], t.split("test")[0].label) for t, r in zip(picks, answer["results"], strict=True)]
    for name, label, gold in served:
        view.say(f"  served {name}-lora: {label!r} (gold {gold!r})")
    sst2 = next(t for t in tasks if t.name == "sst2")
    dropped = sst2.with_splits(
        test=[
            Example(
                " ".join(w for w in e.text.split() if random.Random(f"0:{i}:{w}").random() >= 0.3) or e.text, e.label
            )
            for i, e in enumerate(sst2.split("test"))
        ]
    )
    tta = tta_on_task(dropped, library, "sst2-lora", method="tent", limit=100, backbone=backbone)
    view.say(
        f"  tent on sst2 with 30% of words dropped: {tta.before.accuracy:.3f} -> {tta.after.accuracy:.3f} "
        f"(n={tta.before.n})"
    )
    report = write_report(ReportConfig(library=library.root, out=out_dir / "report.html"))
    view.say(f"  report of the library: {report.path} ({report.adapters} adapters, opens offline)")
    return {
        "served": [{"adapter": f"{n}-lora", "label": label, "gold": gold} for n, label, gold in served],
        "tta": {"method": "tent", "before": tta.before.accuracy, "after": tta.after.accuracy, "n": tta.before.n},
        "report": str(report.path),
    }


# The LLM demo (issue 29): supervised fine-tuning of the embedded SmolLM2 on two shipped generation tasks. They are
# the two of the three that learn most in little time (dev exact match after 128 examples x 2 epochs: about 0.86
# and 0.82, from 0.06 and 0.00); word_reverse needs more.
LLM_DEMO_TASKS = ("country_capital", "arith_add")
LLM_DEMO_MERGE = ("task_arithmetic", {"scaling": 1.0})  # the sum: the two tasks' inputs barely overlap
# Measured on the project's 2-core machine (SmolLM2-135M, fp32, CPU): SFT tokens per second, greedy tokens per
# second in batches of 8, and fixed costs (loading, scoring the response loss, rouge); the estimate printed first.
LLM_TRAIN_TOKENS_PER_SECOND = 200.0
LLM_GENERATED_TOKENS_PER_SECOND = 40.0
LLM_FIXED_SECONDS = 30.0


@dataclass(frozen=True)
class LlmDemoSizes:
    """How much the LLM demo does. The defaults take about 3 minutes on 2 idle CPU cores (172 s measured); tests
    shrink them."""

    max_train: int = 128  # training examples per task (seeded sample)
    epochs: int = 2
    max_length: int = 96  # tokens of prompt + response, chat template included (about 50 here)
    lr: float = 1e-3
    batch_size: int = 8
    test_limit: int = 24  # test examples per evaluation (seeded sample)
    max_new_tokens: int = 8  # greedy tokens per answer: a capital or a sum
    examples: int = 3  # prompts per task answered in the printout


def estimated_seconds(tasks: list[Task], backbone: Backbone, sizes: LlmDemoSizes) -> float:
    """Wall time the LLM demo should take here, from the training tokens it will see and the tokens it generates
    (three evaluations per task, base and adapter answers to the examples), at the measured rates."""
    from adaptforge.generation import SFTScorer

    scorer = SFTScorer(backbone, max_length=sizes.max_length)
    train_tokens = sum(
        sum(scorer.encode(t, t.sample("train", sizes.max_train)).lengths()) * sizes.epochs for t in tasks
    )
    generated = len(tasks) * (3 * sizes.test_limit + 2 * sizes.examples) * sizes.max_new_tokens
    return LLM_FIXED_SECONDS + train_tokens / LLM_TRAIN_TOKENS_PER_SECOND + generated / LLM_GENERATED_TOKENS_PER_SECOND


def run_llm_demo(out_dir: Path, view: DemoView, model: str = "smollm2", sizes: LlmDemoSizes | None = None) -> Path:
    """SFT of a causal LM (``model``, default the embedded SmolLM2) on :data:`LLM_DEMO_TASKS`: base vs adapter by
    exact match and ROUGE-L on a test sample, the two adapters merged (:data:`LLM_DEMO_MERGE`) and scored on both,
    and greedy answers to a few prompts; writes ``out_dir/summary.json`` and returns its path."""
    from adaptforge.generation import evaluate_generation
    from adaptforge.pipelines.merge import MergeRecipe, merge_into_library

    sizes = sizes or LlmDemoSizes()
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    tasks = shipped_tasks(LLM_DEMO_TASKS)
    backbone = Backbone.load(model)
    if backbone.kind != "causal":
        raise AdaptforgeError(f"the LLM demo needs a causal LM; {backbone.name} is an encoder")
    library = Library(out_dir / "library")
    drop_previous_run(library)  # the merge of an earlier run, made from the adapters this run replaces
    view.say(
        f"adaptforge LLM demo: SFT on {', '.join(LLM_DEMO_TASKS)} with {backbone.name} ({backbone.fingerprint[:12]}); "
        f"expected about {estimated_seconds(tasks, backbone, sizes) / 60:.1f} min on 2 idle CPU cores"
    )
    cfg = TrainConfig(
        epochs=sizes.epochs,
        max_train=sizes.max_train,
        max_length=sizes.max_length,
        lr=sizes.lr,
        batch_size=sizes.batch_size,
    )

    def score(task: Task, delta: LoraDelta | None, adapter: str | None, adapter_id: str | None) -> GenerationResult:
        res = evaluate_generation(
            backbone, task, "test", delta, adapter, sizes.test_limit, sizes.max_new_tokens, sizes.batch_size,
            sizes.max_length,
        )  # fmt: skip
        record_result(library, adapter_id, backbone.fingerprint, task, res)
        return res

    rows: dict[str, dict] = {}
    deltas: dict[str, LoraDelta] = {}
    for task in tasks:
        base = score(task, None, None, None)
        trained = train_with_bar(task, backbone, library, cfg, view)
        deltas[task.name], _ = library.load(trained.record.id, expected_fingerprint=backbone.fingerprint)
        tuned = score(task, deltas[task.name], trained.record.name, trained.record.id)
        rows[task.name] = {
            "n_train": trained.result.n_train,
            "train_seconds": round(trained.result.seconds, 1),
            "train_tokens_per_second": round(trained.result.tokens_per_second, 1),
            "base": base.to_json(),
            "adapter": tuned.to_json(),
        }
        view.say(
            f"  {task.name}: exact match {base.exact_match:.3f} -> {tuned.exact_match:.3f}, ROUGE-L "
            f"{base.rouge_l:.3f} -> {tuned.rouge_l:.3f} ({trained.result.seconds:.0f}s training)"
        )
    method, params = LLM_DEMO_MERGE
    recipe = MergeRecipe.from_mapping(
        {"method": method, "adapters": [f"{t.name}-lora" for t in tasks], "params": params, "out": "demo-merged"},
        where="demo",
    )
    merged = merge_into_library(recipe, library, backbone=backbone, overwrite=True)
    merged_delta, _ = library.load(merged.record.id, expected_fingerprint=backbone.fingerprint)
    for task in tasks:
        rows[task.name]["merged"] = score(task, merged_delta, merged.record.name, merged.record.id).to_json()
    view.show("llm", {"rows": rows, "n": sizes.test_limit, "method": method})
    answers = {task.name: llm_answers(backbone, task, deltas[task.name], sizes, view) for task in tasks}
    summary = {
        "model": backbone.name,
        "fingerprint": backbone.fingerprint,
        "library": str(library.root),
        "sizes": asdict(sizes),
        "tasks": rows,
        "merge": {"method": method, "params": params, "adapter": merged.record.name, "id": merged.record.id},
        "answers": answers,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    path = out_dir / "summary.json"
    path.write_text(json.dumps(summary, indent=2))
    return path


def llm_answers(
    backbone: Backbone, task: Task, delta: LoraDelta, sizes: LlmDemoSizes, view: DemoView
) -> list[dict[str, str]]:
    """Greedy answers of the base and of the task's adapter to the first ``sizes.examples`` test prompts, printed."""
    from adaptforge.generation import context_length, encode_prompts, generate

    examples = task.split("test")[: sizes.examples]
    prompts = encode_prompts(
        backbone.tokenizer, task.description, examples, context_length(backbone) - sizes.max_new_tokens
    )
    answers = {}
    for key, weights in (("base", None), ("adapter", delta)):
        with backbone.applied(weights) as model:
            answers[key] = generate(model, backbone.tokenizer, prompts, sizes.max_new_tokens, sizes.batch_size)
    rows = []
    for i, example in enumerate(examples):
        row = {
            "prompt": example.text,
            "gold": example.label,
            "base": answers["base"][i],
            "adapter": answers["adapter"][i],
        }
        view.say(
            f"  {task.name}-lora  {example.text!r} -> {row['adapter']!r} (gold {example.label!r}; base {row['base']!r})"
        )
        rows.append(row)
    return rows
