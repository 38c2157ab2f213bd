"""``adaptforge eval``: every (adapter or zero-shot) x task cell on one split, recorded in the catalog; with
``--metric perplexity``, a causal model's perplexity on plain-text corpora."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from adaptforge.backbone import Backbone
from adaptforge.backends import Backend, JobOutcome, Worker, WorkerSetup
from adaptforge.core import AdaptforgeError, LoraDelta
from adaptforge.evaluate import EvalResult, Perplexity, check_request, corpus_perplexity, evaluate_task
from adaptforge.library import AdapterRecord, Library
from adaptforge.pipelines.common import Notify, load_base, record_result, reporter
from adaptforge.routing import Router, stored_router
from adaptforge.scorers import Scorer, make_scorer
from adaptforge.tasks import Task, read_corpus


def evaluate_grid(
    tasks: Sequence[Task],
    backbone: Backbone,
    library: Library | None,
    adapters: Sequence[str],
    *,
    zero_shot: bool,
    split: str = "test",
    limit: int | None = None,
    record: bool = True,
    on_cell: Callable[[str, str | None], None] | None = None,
    scorer: Scorer | None = None,
    backend: Backend | None = None,
    max_new_tokens: int = 64,
) -> list[EvalResult]:
    """Every (adapter or zero-shot) x task cell; metrics are written to the library when given. A stored
    routed adapter (DaWin merge, Arrow composition) is evaluated through its router, exactly as when it was
    made (:func:`~adaptforge.routing.stored_router`). ``backend`` (e.g. Ray) runs the cells as its jobs, with
    the same results in the same order; ``None``: one cell after the other in this process."""
    check_request(tasks, split, limit)
    check_generation(tasks, backbone, max_new_tokens)
    columns: list[str | None] = ([None] if zero_shot else []) + list(adapters)
    if backend is not None:
        return _evaluate_on(backend, tasks, backbone, library, columns, split, limit, record, on_cell, max_new_tokens)
    scorer = scorer or make_scorer(backbone)
    results = []
    for adapter in columns:
        delta = None
        adapter_id = None
        router: Router | None = None
        if adapter is not None:
            if library is None:
                raise AdaptforgeError("evaluating a named adapter needs --library")
            delta, rec = library.load(adapter, expected_fingerprint=backbone.fingerprint)
            adapter_id = rec.id
            router = stored_router(library, rec, backbone.fingerprint)
        for task in tasks:
            if on_cell:
                on_cell(task.name, adapter)
            res = evaluate_cell(scorer, task, split, limit, adapter, delta, router, max_new_tokens)
            results.append(res)
            if record and library is not None:
                record_result(library, adapter_id, backbone.fingerprint, task, res)
    return results


def evaluate_cell(
    scorer: Scorer,
    task: Task,
    split: str,
    limit: int | None,
    adapter: str | None,
    delta: LoraDelta | None,
    router: Router | None,
    max_new_tokens: int = 64,
) -> EvalResult:
    """One cell: the adapter's delta (or, for a stored routed adapter, its router; ``None``: zero-shot) on a task
    (a generation task: ``max_new_tokens`` greedy tokens per answer)."""
    if router is not None:
        if task.generative:
            raise AdaptforgeError(
                f"adapter {adapter!r} is routed per input over label scores (classification only); task "
                f"{task.name!r} is a generation task"
            )
        return router.evaluate(scorer, task, split, limit, adapter)
    return evaluate_task(scorer, task, split, delta, adapter, limit, max_new_tokens)


def check_generation(tasks: Sequence[Task], backbone: Backbone, max_new_tokens: int) -> None:
    """Generation tasks need a causal LM and a token budget that fits its context: refused before any cell runs."""
    if not any(t.generative for t in tasks):
        return
    from adaptforge.generation import check_max_new_tokens, context_length
    from adaptforge.scorers import needs_causal

    if backbone.kind != "causal":
        raise AdaptforgeError(needs_causal(backbone))
    check_max_new_tokens(max_new_tokens, context_length(backbone))


@dataclass(frozen=True)
class EvalJob:
    """One grid cell as a backend job: the worker loads the adapter (once per worker) and evaluates; the
    result comes back to the driver, which records it, so workers never write the catalog for eval."""

    adapter: str | None
    task: Task
    split: str
    limit: int | None
    key: str
    max_new_tokens: int = 64

    def execute(self, worker: Worker) -> EvalResult:
        scorer = worker.scorer()
        delta, router = None, None
        if self.adapter is not None:
            cached = worker.cache.get(("eval", self.adapter))
            if cached is None:
                library = worker.library()
                fingerprint = worker.backbone().fingerprint
                loaded, rec = library.load(self.adapter, expected_fingerprint=fingerprint)
                cached = (loaded, stored_router(library, rec, fingerprint))
                worker.cache[("eval", self.adapter)] = cached
            delta, router = cached
        return evaluate_cell(
            scorer, self.task, self.split, self.limit, self.adapter, delta, router, self.max_new_tokens
        )


def _evaluate_on(
    backend: Backend,
    tasks: Sequence[Task],
    backbone: Backbone,
    library: Library | None,
    columns: Sequence[str | None],
    split: str,
    limit: int | None,
    record: bool,
    on_cell: Callable[[str, str | None], None] | None,
    max_new_tokens: int = 64,
) -> list[EvalResult]:
    """The grid's cells as ``backend`` jobs (e.g. Ray tasks on actors that each load the base once), recorded
    here by the driver. A failed cell is an error naming it (the grid's other cells still finish first)."""
    if any(a is not None for a in columns) and library is None:
        raise AdaptforgeError("evaluating a named adapter needs --library")
    jobs = [
        EvalJob(a, t, split, limit, f"{a or 'zero-shot'} on {t.name}", max_new_tokens) for a in columns for t in tasks
    ]
    setup = WorkerSetup(model=backbone.name, library=None if library is None else str(library.root))

    def done(outcome: JobOutcome) -> None:
        if on_cell is not None:
            job = next(j for j in jobs if j.key == outcome.key)
            on_cell(job.task.name, job.adapter)

    outcomes = backend.run(setup, jobs, done)
    failed = [f"{o.key}: {o.error}" for o in outcomes if not o.ok]
    if failed:
        raise AdaptforgeError(f"{len(failed)} of {len(jobs)} eval cell(s) failed: " + "; ".join(failed))
    results = [o.payload for o in outcomes]
    if record and library is not None:
        ids = {a: library.get(a).id for a in columns if a is not None}
        for job, res in zip(jobs, results, strict=True):
            record_result(library, ids.get(job.adapter) if job.adapter else None, backbone.fingerprint, job.task, res)
    return results


@dataclass
class GridOutcome:
    """Every evaluated cell, and one line per adapter that could not be evaluated (another base, unloadable)."""

    results: list[EvalResult]
    skipped: list[str]


def evaluate_adapters(
    tasks: Sequence[Task],
    library: Library | None,
    adapters: Sequence[str],
    *,
    zero_shot: bool,
    model: str | None = None,
    split: str = "test",
    limit: int | None = None,
    on_cell: Callable[[str, str | None], None] | None = None,
    notify: Notify | None = None,
    backend: Backend | None = None,
    max_new_tokens: int = 64,
) -> GridOutcome:
    """``adaptforge eval``: adapters grouped by the base they were made on, each group on its own base (or on
    ``--model``, where adapters of another base are skipped with a reason instead of aborting the grid).
    ``backend`` (e.g. Ray) runs the cells as its jobs; ``None``: in this process, as always. The zero-shot row
    is kept when every adapter is skipped (it is the base's own, on ``--model``)."""
    check_request(tasks, split, limit)
    if adapters and library is None:
        raise AdaptforgeError("evaluating a named adapter needs --library")
    records = [library.get(name) for name in adapters] if library is not None else []
    groups: dict[str, list[AdapterRecord]] = {}
    for rec in records:
        groups.setdefault(rec.base_fingerprint, []).append(rec)
    results: list[EvalResult] = []
    skipped: list[str] = []

    if not groups:
        backbone = load_base(model, notify=notify)
        cells = evaluate_grid(
            tasks, backbone, library, [], zero_shot=True, split=split, limit=limit, on_cell=on_cell, backend=backend,
            max_new_tokens=max_new_tokens,
        )  # fmt: skip
        return GridOutcome(cells, skipped)
    given = load_base(model, notify=notify) if model is not None else None  # --model: loaded once for every group
    for fingerprint, group in groups.items():
        names = [r.name for r in group]
        try:
            backbone = load_base(model, group, backbone=given, notify=notify)
        except AdaptforgeError as err:
            skipped += [f"{n}: base {group[0].base_model!r} cannot be loaded ({err})" for n in names]
            continue
        if backbone.fingerprint != fingerprint:
            skipped += [f"{n}: made on base {group[0].base_model!r}, not on --model {model!r}" for n in names]
            continue
        results += evaluate_grid(
            tasks, backbone, library, names, zero_shot=zero_shot, split=split, limit=limit, on_cell=on_cell,
            backend=backend, max_new_tokens=max_new_tokens,
        )  # fmt: skip
        zero_shot = False  # one zero-shot row: the first base's
    if zero_shot and given is not None:  # every adapter skipped: the zero-shot row asked for still runs, on --model
        results = evaluate_grid(
            tasks, given, library, [], zero_shot=True, split=split, limit=limit, on_cell=on_cell, backend=backend,
            max_new_tokens=max_new_tokens,
        ) + results  # fmt: skip
    return GridOutcome(results, skipped)


PERPLEXITY_CONTEXT = 256  # tokens per window of `eval --metric perplexity` (SmolLM2 reads 8k; kept small for CPU)
PERPLEXITY_STRIDE = 128  # windows start this far apart: every scored token sees >= 128 tokens of its text


@dataclass(frozen=True)
class CorpusPerplexity:
    """One corpus's perplexity under one model (``adaptforge eval CORPUS --metric perplexity``)."""

    corpus: str
    model: str
    result: Perplexity
    context: int
    stride: int

    def to_json(self) -> dict[str, object]:
        return {
            "corpus": self.corpus,
            "model": self.model,
            "metric": "perplexity",
            "perplexity": self.result.value,
            "nll": self.result.nll,
            "tokens": self.result.tokens,
            "texts": self.result.texts,
            "context": self.context,
            "stride": self.stride,
        }


def evaluate_corpora(
    corpora: Sequence[Path],
    *,
    model: str | None = None,
    backbone: Backbone | None = None,
    context: int = PERPLEXITY_CONTEXT,
    stride: int = PERPLEXITY_STRIDE,
    limit: int | None = None,
    notify: Notify | None = None,
) -> list[CorpusPerplexity]:
    """Perplexity of a causal LM (the base, or any model folder such as a pruned one) on plain-text corpora, in
    strided windows (:func:`~adaptforge.evaluate.corpus_perplexity`); ``limit``: the first texts of each.
    Every corpus is read and checked before the model loads."""
    texts = {path: read_corpus(path)[:limit] for path in corpora}
    if not 1 <= stride < context:
        raise AdaptforgeError(f"--stride {stride} must be at least 1 and below --context {context}")
    base = load_base(model, backbone=backbone, notify=notify)
    if base.kind != "causal":
        raise AdaptforgeError(
            f"--metric perplexity needs a causal language model; {base.name or 'the embedded MiniLM'} is an encoder "
            "(give --model smollm2 or a causal model folder)"
        )
    say = reporter(notify)
    out = []
    for path, corpus in texts.items():
        say(f"perplexity on {path} ({len(corpus)} texts)")
        value = corpus_perplexity(base.model, base.tokenizer, corpus, context=context, stride=stride)
        out.append(CorpusPerplexity(str(path), base.name, value, context, stride))
    return out
