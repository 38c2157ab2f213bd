"""``adaptforge tta``: adapt a library adapter to a task's unlabelled inputs and measure it honestly.

Everything is checked before any model work (method and params, granularity, split and limit, the
``--save`` name and whether the method's state can be stored, the adapter and its base). Then the adapter's
predictions on the split are computed twice over the same inputs, in the same order and the same units
(one input, or batches of ``batch_size``): a plain forward pass (before, timed) and the test-time method
(after, timed), so the cost per input is measured side by side. The method only ever sees the inputs'
texts; gold labels are read here, after both runs, to score them. ``--save`` (stream mode) stores the
adapter at the end of the stream with the input adapter as parent and a
:class:`~adaptforge.provenance.TtaProvenance`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from adaptforge.backbone import Backbone
from adaptforge.compose import rank_candidates
from adaptforge.core import AdaptforgeError, LoraDelta
from adaptforge.evaluate import EvalResult, check_request, result_from_logits, subset_of
from adaptforge.library import AdapterRecord, Library
from adaptforge.lora.hooks import eval_mode
from adaptforge.pipelines.common import Notify, load_base, reporter, task_entry, warn_if_worse
from adaptforge.provenance import TtaProvenance
from adaptforge.scorers import Scorer, classification_only, make_scorer
from adaptforge.tasks import Task, load_task
from adaptforge.tta import TTA_METHODS, GradientParams, TtaMethod, TtaParams, TtaRun, TtaSetup, encode_inputs, run_tta
from adaptforge.tta.base import check_granularity, units


@dataclass
class TtaOutcome:
    """Before (the adapter, plain forward) and after (the method) on the same inputs, what each cost, the
    resets and updates, and the stored record with ``--save``. ``predictions`` are the adapted labels' indices
    in input order (for tests and benchmarks; not in the JSON)."""

    adapter: str
    method: str
    params: dict[str, Any]
    granularity: str
    batch_size: int
    before: EvalResult
    after: EvalResult
    plain_seconds: float
    run: TtaRun
    candidates: list[str] = field(default_factory=list)
    pool: list[str] = field(default_factory=list)
    record: AdapterRecord | None = None
    predictions: list[int] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def n(self) -> int:
        return self.after.n

    @property
    def plain_ms_per_input(self) -> float:
        return 1000 * self.plain_seconds / max(self.n, 1)

    @property
    def tta_ms_per_input(self) -> float:
        return 1000 * self.run.seconds / max(self.n, 1)

    @property
    def cost_ratio(self) -> float | None:
        """Adaptation time over plain-forward time on the same units (``None`` if the plain pass took no time)."""
        return self.run.seconds / self.plain_seconds if self.plain_seconds > 0 else None

    def to_json(self) -> dict[str, Any]:
        return {
            "task": self.after.task,
            "split": self.after.split,
            "n": self.n,
            "adapter": self.adapter,
            "method": self.method,
            "params": self.params,
            "granularity": self.granularity,
            "batch_size": self.batch_size,
            "before": self.before.to_json(),
            "after": self.after.to_json(),
            "delta_accuracy": self.after.accuracy - self.before.accuracy,
            "cost": {
                "plain_ms_per_input": round(self.plain_ms_per_input, 3),
                "tta_ms_per_input": round(self.tta_ms_per_input, 3),
                "ratio": None if self.cost_ratio is None else round(self.cost_ratio, 3),
                "setup_seconds": round(self.run.setup_seconds, 3),
                "units": self.run.units,
            },
            "resets": self.run.resets,
            "drifts": self.run.drifts,
            "updated": self.run.updated,
            "candidates": self.candidates,
            "pool": self.pool,
            "saved": None if self.record is None else {"name": self.record.name, "id": self.record.id},
            "seconds": round(self.seconds, 2),
        }


def resolve_params(
    method: TtaMethod, params: Mapping[str, Any] | None, steps: int | None, lr: float | None
) -> TtaParams:
    """The method's typed params from ``--param`` pairs plus the ``--steps`` / ``--lr`` flags (given once)."""
    merged = dict(params or {})
    flags = (("--steps", "steps", steps), ("--lr", "lr", lr))
    for flag, key, value in flags:
        if value is None:
            continue
        if not issubclass(method.params_type, GradientParams):
            raise AdaptforgeError(f"{flag}: tta method {method.name!r} takes no gradient step (it has no {key})")
        if key in merged:
            raise AdaptforgeError(f"{flag} and --param {key}=... both given; give {key} once")
        merged[key] = value
    try:
        typed: TtaParams = method.parse_params(merged)
    except AdaptforgeError as err:
        flag = next((f for f, k, v in flags if v is not None and f"{k!r} must be" in str(err)), None)
        raise AdaptforgeError(f"{flag}: {err}" if flag else str(err)) from None
    return typed


def shipped_pool(names: Sequence[str]) -> list[Task]:
    """The package's task folders for those of ``names`` it ships (the demo library's tasks)."""
    root = Path(str(resources.files("adaptforge") / "data" / "tasks"))
    return [load_task(root / name) for name in sorted(set(names)) if (root / name / "task.json").is_file()]


def library_pool(library: Library, fingerprint: str) -> list[Task]:
    """Training pools of the library's tasks when no ``--pool`` is given: the tasks' own adapters on this base
    whose task the package ships."""
    return shipped_pool([r.task for r in library.list(base_fingerprint=fingerprint) if r.is_task_adapter and r.task])


def source_task(record: AdapterRecord, pool: Sequence[Task]) -> Task | None:
    """The adapter's own training task (em-prior reads its train split's label prior): a ``--pool`` task of that
    name, else the package's copy of it, else ``None``."""
    if not record.task:
        return None
    found = [t for t in pool if t.name == record.task] or shipped_pool([record.task])
    return found[0] if found else None


def library_candidates(
    library: Library, scorer: Scorer, task: Task, record: AdapterRecord, delta: LoraDelta, n: int
) -> list[tuple[str, LoraDelta]]:
    """Up to ``n`` tasks' own adapters on this base other than ``record``, nearest to ``task`` by description,
    that target the same modules as ``delta``."""
    others = [
        r
        for r in library.list(base_fingerprint=scorer.backbone.fingerprint)
        if r.is_task_adapter and r.id != record.id and r.embedding is not None and set(r.targets) == set(delta.targets)
    ]
    if n == 0 or not others:
        return []
    found = rank_candidates(library, scorer, task, n=len(others) + 1)
    keep = {r.name for r in others}
    return [(c.name, c.delta) for c in found if c.name in keep][:n]


@torch.no_grad()
def plain_logits(
    scorer: Scorer, task: Task, texts: Sequence[str], delta: LoraDelta, granularity: str, batch_size: int
) -> tuple[torch.Tensor, float]:
    """The adapter's logits of ``texts`` by a plain forward pass over the same units a method adapts on, and
    the seconds the passes took (tokenisation excluded, as for the method)."""
    inputs = encode_inputs(scorer, task, texts)
    labels = scorer.encode_labels(task)
    parts, seconds = [], 0.0
    with scorer.backbone.applied(delta) as model, eval_mode(model):
        for unit in units(len(inputs), granularity, batch_size):
            t0 = time.perf_counter()
            context = scorer.label_context(model, labels)
            parts.append(scorer.logits(model, inputs.subset(unit).batch(), context).float())
            seconds += time.perf_counter() - t0
    return (torch.cat(parts) if parts else torch.empty(0, len(task.labels))), seconds


def tta_on_task(
    task: Task,
    library: Library,
    adapter: str,
    *,
    method: str,
    params: Mapping[str, Any] | None = None,
    granularity: str | None = None,
    steps: int | None = None,
    lr: float | None = None,
    batch_size: int = 16,
    split: str = "test",
    limit: int | None = None,
    sample_seed: int = 0,
    pool: Sequence[Task] = (),
    save: str | None = None,
    overwrite: bool = False,
    model: str | None = None,
    backbone: Backbone | None = None,
    notify: Notify | None = None,
    on_unit: Callable[[int], None] | None = None,
) -> TtaOutcome:
    """Adapt library adapter ``adapter`` to ``task``'s ``split`` inputs with test-time method ``method``.

    ``limit`` takes a seeded label-stratified sample of the split (``sample_seed``; the same examples
    ``adaptforge eval --limit`` scores with seed 0), kept in the split's order, which is the stream's order.
    """
    classification_only(task, f"tta {method!r}")
    say = reporter(notify)
    start = time.perf_counter()
    impl = TTA_METHODS.get(method)()
    typed = resolve_params(impl, params, steps, lr)
    granularity = granularity or impl.default_granularity
    check_granularity(granularity, batch_size)
    check_request([task], split, limit)
    if save is not None:
        library.check_free(save, overwrite)
        if granularity != "stream":
            raise AdaptforgeError(
                f"--save stores the adapter a stream adapted: pass --granularity stream (with {granularity!r} "
                "every adaptation is discarded after its unit)"
            )
        reason = impl.unsaved_reason(typed)
        if reason:
            raise AdaptforgeError(f"--save: {reason}")
    record = library.get(adapter)
    backbone = load_base(model, records=[record], backbone=backbone, notify=say)
    delta, record = library.load(record.id, expected_fingerprint=backbone.fingerprint)
    scorer = make_scorer(backbone)
    pools = list(pool) if pool or not impl.needs_pool else library_pool(library, backbone.fingerprint)
    wanted = impl.candidates_wanted(typed)
    candidates = library_candidates(library, scorer, task, record, delta, wanted) if wanted else []
    source = source_task(record, pool) if impl.source_wanted(typed) else None
    setup = TtaSetup(scorer, task, delta, candidates=candidates, pool=pools, source=source)
    impl.check(setup, typed)

    examples = task.sample(split, limit, seed=sample_seed)
    texts = [e.text for e in examples]
    say(f"{record.name} on {task.name}/{split} ({len(texts)} inputs): plain forward pass")
    before_logits, plain_seconds = plain_logits(scorer, task, texts, delta, granularity, batch_size)
    say(f"{method} at granularity {granularity}")
    run = run_tta(impl, setup, texts, typed, granularity=granularity, batch_size=batch_size, on_unit=on_unit)

    diverged = int((~torch.isfinite(run.logits)).any(-1).sum())
    if diverged:
        hint = f"lower --lr (now {typed.lr:g}) or --steps" if isinstance(typed, GradientParams) else "check --param"
        raise AdaptforgeError(
            f"{method}: the adaptation diverged: the adapted scores of {diverged} of {len(texts)} inputs are not "
            f"finite (NaN or infinity); {hint}. Nothing was stored."
        )
    gold = torch.tensor([task.labels.index(e.label) for e in examples], dtype=torch.long)  # read only here
    subset = subset_of(task, split, limit, sample_seed)
    before = result_from_logits(task, split, record.name, before_logits, gold, subset)
    after = result_from_logits(task, split, f"{record.name}+{method}", run.logits, gold, subset)
    outcome = TtaOutcome(
        adapter=record.name,
        method=method,
        params=typed.to_dict(),
        granularity=granularity,
        batch_size=batch_size,
        before=before,
        after=after,
        plain_seconds=plain_seconds,
        run=run,
        candidates=[name for name, _ in candidates],
        pool=[t.name for t in pools] if impl.needs_pool else [],
        predictions=run.logits.argmax(-1).tolist(),
    )
    warn_if_worse(say, f"{record.name}+{method}", after, before, what=f"{record.name} before adaptation", stored=False)
    if save is not None:
        assert run.delta is not None, "stream sessions of savable methods return their adapter"
        provenance = TtaProvenance(
            tta_method=method,
            tta_params=typed.to_dict(),
            granularity=granularity,
            batch_size=batch_size,
            parent={"name": record.name, "id": record.id},
            task={"name": task.name, "fingerprint": task.fingerprint(), "path": str(task.path) if task.path else None},
            labels=list(task.labels),
            split=split,
            limit=limit,
            n=len(texts),
            updated=run.updated,
            resets=run.resets,
            metrics={"before": before.metric_values(), "after": after.metric_values()},
            candidates=outcome.candidates,
            pool=outcome.pool,
            seconds=run.seconds,
        )
        outcome.record = library.add(
            run.delta,
            name=save,
            base=backbone,
            task=task_entry(scorer, task),
            provenance=provenance,
            parents=[record.id, *[library.get(name).id for name, _ in candidates]],
            overwrite=overwrite,
        )
        say(f"added {outcome.record.name} ({outcome.record.id}) to {library.root}")
    outcome.seconds = time.perf_counter() - start
    return outcome
