"""``adaptforge merge``: recipe in, merged adapter (with lineage) out, optionally evaluated and written dense.

The path is one way, as in mergekit: the CLI builds a :class:`MergeRecipe` (``from_flags`` or
``from_yaml``), :func:`merge_into_library` checks everything, runs the registered method
(:func:`adaptforge.merge.run`) and stores the result with its :class:`~adaptforge.provenance.MergeProvenance`.

A recipe says what to do (``method``, ``adapters``, ``params``, ``out`` and, for data-driven methods,
``data``: task folders); where and how to run (library, model, evaluation tasks, dense output) are
arguments of :func:`merge_into_library`, never recipe keys. Nothing is written unless the merge succeeds.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from adaptforge.backbone import Backbone
from adaptforge.core import AdaptforgeError, LoraDelta, did_you_mean
from adaptforge.dense import can_stream, write_dense_model
from adaptforge.durable import publish_folder, remove_inside, stage_folder
from adaptforge.evaluate import EvalResult, check_request, evaluate, subset_of, worst
from adaptforge.layers import base_weights, transposed_layers, weight_view
from adaptforge.library import AdapterRecord, BaseRef, Library, TaskEntry, validate_name
from adaptforge.merge import MERGE_METHODS, MergeParams, MergeResult, run
from adaptforge.pipelines.common import Notify, choose_base, record_result, reporter
from adaptforge.provenance import MergeProvenance
from adaptforge.prune.pruner import read_record as read_prune_record
from adaptforge.routing import Router, routed_settings
from adaptforge.scorers import Scorer, classification_only, make_scorer
from adaptforge.structured import parse_yaml
from adaptforge.tasks import Task, load_task

RECIPE_KEYS = ("method", "adapters", "params", "out", "data")
REQUIRED_KEYS = ("method", "adapters", "out")
RUNTIME_KEYS = {"library", "model", "eval", "dense_out", "keep_mask", "overwrite", "split", "limit", "json"}
RECIPE_FILE = "merge_recipe.yaml"


class RecipeError(AdaptforgeError):
    """A merge recipe that is not valid; the message names the key."""


@dataclass(frozen=True)
class MergeRecipe:
    """What to merge: a registered ``method``, ``adapters`` (names or ids, in order), ``params`` (the
    method's typed params as a mapping), ``out`` (the new adapter's name) and ``data`` (task folders the
    data-driven methods fit on; relative paths are relative to the recipe file)."""

    method: str
    adapters: tuple[str, ...]
    out: str
    params: Mapping[str, Any] = field(default_factory=dict)
    data: tuple[str, ...] = ()

    @classmethod
    def from_mapping(cls, raw: object, where: str = "recipe", base_dir: Path | None = None) -> MergeRecipe:
        if not isinstance(raw, Mapping):
            raise RecipeError(
                f"{where}: expected a mapping with keys {', '.join(RECIPE_KEYS)}, got {type(raw).__name__}"
            )
        for key in raw:
            if key in RUNTIME_KEYS:
                flag = "--" + str(key).replace("_", "-")
                raise RecipeError(f"{where}: key {key!r} is a runtime option, not part of a recipe; pass {flag}")
            if key not in RECIPE_KEYS:
                hint = did_you_mean(key, RECIPE_KEYS)
                raise RecipeError(f"{where}: unknown key {key!r}; a recipe has {', '.join(RECIPE_KEYS)}.{hint}")
        for key in REQUIRED_KEYS:
            if raw.get(key) is None:
                raise RecipeError(f"{where}: missing key {key!r}")
        method = raw["method"]
        if not isinstance(method, str):
            raise RecipeError(f"{where}: key 'method' must be a method name, got {method!r}")
        try:
            impl = MERGE_METHODS.get(method)()
        except AdaptforgeError as err:
            raise RecipeError(f"{where}: key 'method': {err}") from None
        adapters = raw["adapters"]
        if isinstance(adapters, str) or not isinstance(adapters, Sequence):
            raise RecipeError(f"{where}: key 'adapters' must be a list of adapter names, got {adapters!r}")
        if not adapters:
            raise RecipeError(f"{where}: key 'adapters': nothing to merge, the list of adapters is empty")
        if not all(isinstance(a, str) and a.strip() for a in adapters):
            raise RecipeError(f"{where}: key 'adapters' must hold adapter names (strings), got {list(adapters)!r}")
        params = raw.get("params") or {}
        if not isinstance(params, Mapping):
            raise RecipeError(f"{where}: key 'params' must be a mapping of parameter names to values, got {params!r}")
        try:
            impl.parse_params(params)
        except AdaptforgeError as err:
            raise RecipeError(f"{where}: key 'params': {err}") from None
        out = raw["out"]
        try:
            validate_name(out)
        except AdaptforgeError as err:
            raise RecipeError(f"{where}: key 'out': {err}") from None
        data = raw.get("data") or []
        if isinstance(data, str) or not isinstance(data, Sequence) or not all(isinstance(d, str) for d in data):
            raise RecipeError(f"{where}: key 'data' must be a list of task folders, got {data!r}")
        if base_dir is not None:
            data = [str((base_dir / d).resolve()) if not Path(d).is_absolute() else d for d in data]
        if impl.needs_data and not data:
            raise RecipeError(f"{where}: method {method!r} learns from data; key 'data' must list task folders")
        if data and not impl.needs_data:
            raise RecipeError(f"{where}: key 'data': method {method!r} does not use data; remove the key")
        return cls(method, tuple(adapters), out, dict(params), tuple(data))

    @classmethod
    def from_flags(
        cls,
        *,
        adapters: Sequence[str],
        out: str | None,
        method: str | None = None,
        weights: str | None = None,
        density: float | None = None,
        scaling: float | None = None,
        rank: int | None = None,
        seed: int | None = None,
        params: Mapping[str, Any] | None = None,
        data: Sequence[str | Path] = (),
        retain: Sequence[str | Path] = (),
    ) -> MergeRecipe:
        """The recipe the ``adaptforge merge`` flags describe. ``weights`` is the comma-separated ``--weights``
        string; the named params are set when given; ``params`` holds the ``--param key=value`` pairs (they
        win); ``retain`` (base_interp) are task folders both fitted on and named in ``retention``."""
        named = {"density": density, "scaling": scaling, "rank": rank, "seed": seed}
        given: dict[str, Any] = {k: v for k, v in named.items() if v is not None}
        if weights is not None:
            try:
                given["weights"] = [float(w) for w in weights.split(",")]
            except ValueError:
                raise RecipeError(f"--weights {weights!r}: expected comma-separated numbers, e.g. 0.5,0.5") from None
        given.update(params or {})
        if retain:
            retained = [load_task(d).name for d in retain]
            previous = given.get("retention") or []
            given["retention"] = [*previous, *retained] if isinstance(previous, list) else retained
        if out is None:
            raise RecipeError("--out NAME is required: the name of the merged adapter")
        raw = {
            "method": method or "task_arithmetic",
            "adapters": list(adapters),
            "params": given,
            "out": out,
            "data": [str(Path(d).resolve()) for d in [*data, *retain]],
        }
        return cls.from_mapping(raw, where="merge")

    @classmethod
    def from_yaml(cls, path: str | Path) -> MergeRecipe:
        path = Path(path)
        if not path.is_file():
            raise RecipeError(f"{path}: recipe file not found")
        raw, _ = parse_yaml(path.read_text(), str(path), RecipeError)
        return cls.from_mapping(raw, where=str(path), base_dir=path.parent)

    def typed_params(self) -> MergeParams:
        typed: MergeParams = MERGE_METHODS.get(self.method).parse_params(self.params)
        return typed

    def to_dict(self) -> dict[str, Any]:
        """The resolved recipe: params with every default filled in (what actually ran)."""
        return {
            "method": self.method,
            "adapters": list(self.adapters),
            "params": self.typed_params().to_dict(),
            "out": self.out,
            "data": list(self.data),
        }


@dataclass(frozen=True)
class TaskScore:
    """The merged adapter on one task, next to that task's own adapter (``reference``) when the library has one."""

    task: str
    split: str
    n: int
    accuracy: float
    macro_f1: float
    reference: str | None = None
    reference_accuracy: float | None = None
    routed: bool = False

    @property
    def normalized(self) -> float | None:
        if self.reference_accuracy is None or self.reference_accuracy == 0:
            return None
        return self.accuracy / self.reference_accuracy

    def to_json(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "split": self.split,
            "n": self.n,
            "accuracy": self.accuracy,
            "macro_f1": self.macro_f1,
            "reference": self.reference,
            "reference_accuracy": self.reference_accuracy,
            "normalized_accuracy": self.normalized,
            "routed": self.routed,
        }


@dataclass(frozen=True)
class MergeReport:
    rows: tuple[TaskScore, ...]

    @property
    def average_accuracy(self) -> float:
        return sum(r.accuracy for r in self.rows) / len(self.rows) if self.rows else math.nan

    @property
    def average_normalized(self) -> float | None:
        values = [r.normalized for r in self.rows if r.normalized is not None]
        return sum(values) / len(values) if values else None

    @property
    def worst_task(self) -> TaskScore | None:
        """Lowest normalized accuracy (or accuracy, when no task has a reference)."""
        if not self.rows:
            return None
        if any(r.normalized is not None for r in self.rows):
            return min((r for r in self.rows if r.normalized is not None), key=lambda r: r.normalized or 0.0)
        return min(self.rows, key=lambda r: r.accuracy)

    def to_json(self) -> dict[str, Any]:
        low = self.worst_task
        return {
            "tasks": [r.to_json() for r in self.rows],
            "average_accuracy": self.average_accuracy,
            "average_normalized_accuracy": self.average_normalized,
            "worst_task": None if low is None else low.task,
            "worst_accuracy": worst([r.accuracy for r in self.rows]),
            "worst_normalized_accuracy": None if low is None else low.normalized,
        }


@dataclass
class MergeOutcome:
    record: AdapterRecord
    result: MergeResult
    recipe: dict[str, Any]
    seconds: float
    dense_path: Path | None = None
    report: MergeReport | None = None
    mask: MaskReport | None = None  # --dense-out on a pruned base

    def to_json(self) -> dict[str, Any]:
        errors = list(self.result.reconstruction_error.values())
        return {
            "adapter": self.record.name,
            "id": self.record.id,
            "method": self.record.method,
            "params": self.record.params,
            "parents": list(self.record.parents),
            "parent_names": self.recipe["adapters"],
            "rank": self.record.rank,
            "reconstruction_error": {"max": max(errors), "mean": sum(errors) / len(errors)} if errors else None,
            "seconds": round(self.seconds, 3),
            "dense_out": None if self.dense_path is None else str(self.dense_path),
            "dense_mask": None if self.mask is None else self.mask.to_json(),
            "routed": self.result.router is not None,
            "eval": None if self.report is None else self.report.to_json(),
        }


def _check_inputs(recipe: MergeRecipe, library: Library, overwrite: bool) -> list[AdapterRecord]:
    """Records of the inputs, after the checks that need no tensors (unknown names, bases, output name)."""
    records = [library.get(name) for name in recipe.adapters]
    seen: dict[str, str] = {}
    for name, rec in zip(recipe.adapters, records, strict=True):
        if rec.id in seen:
            raise AdaptforgeError(f"adapter {rec.name!r} is given twice ({seen[rec.id]!r} and {name!r}); give it once")
        seen[rec.id] = name
    first = records[0]
    for rec in records[1:]:
        if rec.base_fingerprint != first.base_fingerprint:
            raise AdaptforgeError(
                f"adapters {first.name!r} and {rec.name!r} were trained on different base models: {first.name!r} on "
                f"{first.base_model!r} (fingerprint {first.base_fingerprint}), {rec.name!r} on {rec.base_model!r} "
                f"(fingerprint {rec.base_fingerprint}); merge adapters of one base model only"
            )
    if library.exists(recipe.out):
        if not overwrite:
            raise AdaptforgeError(f"adapter name {recipe.out!r} already exists in {library.root}; choose another --out")
        if library.get(recipe.out).id in seen:
            raise AdaptforgeError(f"--out {recipe.out!r} is one of the inputs; choose a new name")
    return records


def _check_dense_out(folder: Path | None) -> Path | None:
    if folder is None:
        return None
    folder = Path(folder).expanduser().resolve()
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise AdaptforgeError(f"--dense-out {folder} exists and is not an empty folder")
    return folder


@dataclass(frozen=True)
class MaskReport:
    """Folding an adapter into a pruned base: the zeros of the pruned layers it adapts, kept or not, and what
    a plain ``W + dW`` would have left (a dense ``dW`` fills almost every zero: the sparsity is lost)."""

    layers: int  # pruned layers the adapter touches
    kept: bool  # the base's zeros stay zero (the default)
    base_sparsity: float  # zeros of those layers in the pruned base
    sparsity: float  # zeros of those layers in the written model
    plain_sparsity: float  # zeros a plain merge would have left

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        lost = f"plain merging would have left {self.plain_sparsity:.3f}"
        if self.kept:
            return (
                f"kept the pruned base's zeros in {self.layers} adapted layers: sparsity {self.sparsity:.3f} "
                f"({lost}; --no-keep-mask to merge plainly)"
            )
        return (
            f"merged plainly (--no-keep-mask): sparsity of {self.layers} pruned layers "
            f"{self.base_sparsity:.3f} -> {self.sparsity:.3f}"
        )


def pruned_targets(backbone: Backbone, delta: LoraDelta) -> list[str]:
    """The modules of ``delta`` that ``adaptforge prune`` zeroed in this base (none for an unpruned base or the
    ``ffn`` pattern, which removes neurons instead of zeroing weights)."""
    folder = Path(backbone.path)
    record = read_prune_record(folder) if folder.is_dir() else None
    if record is None or record.pattern == "ffn":
        return []
    return sorted(set(delta) & set(record.layers))


def mask_report(backbone: Backbone, delta: LoraDelta, names: Sequence[str], kept: bool) -> MaskReport:
    named = dict(backbone.model.named_modules())
    total = base = plain = 0
    with torch.no_grad():
        for name in names:
            w = weight_view(named[name])
            total += w.numel()
            base += int((w == 0).sum())
            plain += int(((w + delta.dense(name).to(w.dtype)) == 0).sum())
    fraction = (lambda n: n / total) if total else (lambda n: 0.0)
    return MaskReport(len(names), kept, fraction(base), fraction(base if kept else plain), fraction(plain))


def write_dense(
    backbone: Backbone, delta: LoraDelta, folder: Path, recipe: Mapping[str, Any], keep_mask: bool = True
) -> tuple[Path, MaskReport | None]:
    """Stage ``W_base + dW`` as a full model (streamed from the base's safetensors, :mod:`adaptforge.dense`, else
    ``save_pretrained``; plus tokenizer and the recipe) beside
    ``folder``; :func:`~adaptforge.durable.publish_folder` makes it appear. ``AutoModel`` /
    ``AutoModelForCausalLM`` load it. On a base ``adaptforge prune`` zeroed, ``keep_mask`` keeps those zeros
    (``dW`` masked) so the written model stays as sparse as its base; the report says what plain merging
    would have lost."""
    pruned = pruned_targets(backbone, delta)
    report = mask_report(backbone, delta, pruned, keep_mask) if pruned else None
    tmp = stage_folder(folder)
    zeros = pruned if keep_mask else ()
    try:
        if can_stream(Path(backbone.path), delta, next(backbone.model.parameters()).dtype):
            transposed = transposed_layers(backbone.model, list(delta))
            write_dense_model(Path(backbone.path), delta, tmp, transposed, zeros)  # no model copy
        else:
            with backbone.applied(delta, keep_zeros=zeros) as model:
                model.save_pretrained(tmp)
        backbone.tokenizer.save_pretrained(tmp)
        written = {**recipe, "dense_mask": report.to_json()} if report is not None else dict(recipe)
        (tmp / RECIPE_FILE).write_text(yaml.safe_dump(written, sort_keys=False))
    except BaseException:
        remove_inside(tmp, folder.parent)
        raise
    return tmp, report


def merge_into_library(
    recipe: MergeRecipe,
    library: Library,
    *,
    model: str | None = None,
    backbone: Backbone | None = None,
    eval_tasks: Sequence[Task] = (),
    split: str = "test",
    limit: int | None = None,
    dense_out: str | Path | None = None,
    keep_mask: bool = True,
    overwrite: bool = False,
    notify: Notify | None = None,
) -> MergeOutcome:
    """Load the recipe's adapters (checksums and base fingerprints verified), merge, add the result with
    lineage, optionally write a dense model and evaluate on ``eval_tasks``. Nothing is written unless the
    merge succeeds."""
    say = reporter(notify)
    start = time.perf_counter()
    params = recipe.typed_params()
    impl = MERGE_METHODS.get(recipe.method)
    check_request(eval_tasks, split, limit)
    records = _check_inputs(recipe, library, overwrite)
    dense_path = _check_dense_out(Path(dense_out) if dense_out is not None else None)
    data_tasks = [load_task(d) for d in recipe.data]
    for task in data_tasks:
        classification_only(task, f"merge {recipe.method!r} (fitted on --data)")
    for task in eval_tasks:
        classification_only(task, "merge --eval (accuracy normalized by each task's adapter)")
    fingerprint = records[0].base_fingerprint
    wanted = impl.needs_data or impl.needs_base or eval_tasks or dense_path is not None or model is not None
    if backbone is None and wanted:
        name = choose_base(model, records)
        say(f"loading base model {name}")
        backbone = Backbone.load(name)
    if backbone is not None and backbone.fingerprint != fingerprint:
        raise AdaptforgeError(
            f"adapter {records[0].name!r} was trained on base fingerprint {fingerprint}, but the loaded model "
            f"{backbone.name!r} has fingerprint {backbone.fingerprint}; pass the adapters' base with --model"
        )
    deltas = [library.load(rec.id, expected_fingerprint=fingerprint)[0] for rec in records]
    scorer = make_scorer(backbone) if backbone is not None else None
    say(f"merging {len(deltas)} adapters with {recipe.method}")
    merge_start = time.perf_counter()
    base = base_weights(backbone.model, deltas[0].modules) if impl.needs_base and backbone is not None else None
    result = run(recipe.method, deltas, params, scorer, data_tasks or None, base)
    provenance = MergeProvenance(
        merge_recipe=recipe.to_dict(),
        typed_params=params.to_dict(),
        adapter_ids=[r.id for r in records],
        data=[
            {"path": p, "name": t.name, "fingerprint": t.fingerprint()}
            for p, t in zip(recipe.data, data_tasks, strict=True)
        ],
        reconstruction_error=result.reconstruction_error,
        router=routed_settings(result.router, [r.id for r in records]),
        info={k: v for k, v in result.info.items() if k not in ("method", "params")},
        seconds=time.perf_counter() - merge_start,
    )
    resolved = provenance.recipe()
    tasks = list(dict.fromkeys(r.task for r in records if r.task))
    dense_tmp, mask = None, None
    if dense_path is not None:  # staged before the catalog row, so a failure here leaves nothing behind
        assert backbone is not None
        dense_tmp, mask = write_dense(backbone, result.delta, dense_path, resolved, keep_mask)
    try:
        record = library.add(
            result.delta,
            name=recipe.out,
            base=BaseRef(records[0].base_model, fingerprint),
            task=TaskEntry(
                "+".join(tasks) if tasks else None, f"{recipe.method} merge of {', '.join(r.name for r in records)}"
            ),
            provenance=provenance,
            parents=[r.id for r in records],
            overwrite=overwrite,
        )
    except BaseException:
        if dense_tmp is not None:
            remove_inside(dense_tmp, dense_tmp.parent)
        raise
    say(f"added {record.name} ({record.id}) to {library.root}")
    if dense_tmp is not None and dense_path is not None:
        publish_folder(dense_tmp, dense_path)
        say(f"wrote dense model to {dense_path}")
        if mask is not None:
            say(mask.describe())
    outcome = MergeOutcome(record, result, resolved, time.perf_counter() - start, dense_path, mask=mask)
    if eval_tasks:
        assert backbone is not None and scorer is not None
        outcome.report = evaluate_merge(
            library, record, scorer, eval_tasks, split=split, limit=limit, router=result.router, notify=say
        )
    outcome.seconds = time.perf_counter() - start
    return outcome


def reference_accuracy(
    library: Library, ref: AdapterRecord, scorer: Scorer, task: Task, split: str, limit: int | None, n: int
) -> float:
    """The reference adapter's accuracy on the same examples: its recorded metric when one was recorded on
    same examples of the same task data (split, subset, task fingerprint), else evaluated now (and recorded)."""
    fingerprint = scorer.backbone.fingerprint
    subset, task_fp = subset_of(task, split, limit), task.fingerprint()
    rows = [
        m
        for m in library.metrics(ref.id, fingerprint, task=task.name, split=split, subset=subset)
        if m.metric == "accuracy" and m.n == n and m.task_fingerprint in (None, task_fp) and not math.isnan(m.value)
    ]
    if rows:
        return rows[-1].value
    delta, _ = library.load(ref.id, expected_fingerprint=fingerprint)
    res = evaluate(scorer, task, split, delta, adapter=ref.name, limit=limit)
    record_result(library, ref.id, fingerprint, task, res)
    return res.accuracy


def evaluate_merge(
    library: Library,
    record: AdapterRecord,
    scorer: Scorer,
    tasks: Sequence[Task],
    *,
    split: str = "test",
    limit: int | None = None,
    router: Router | None = None,
    notify: Notify | None = None,
) -> MergeReport:
    """Accuracy of the merged adapter (the stored copy, or the router's per-input merge) on each task, and
    normalized accuracy against each task's own adapter (:meth:`~adaptforge.library.Library.task_adapter`);
    all results recorded in the library (routed ones as ``routed_*`` metrics, the normalized accuracy as
    ``normalized_accuracy``)."""
    fingerprint = scorer.backbone.fingerprint
    delta, _ = library.load(record.id, expected_fingerprint=fingerprint)
    rows = []
    for task in tasks:
        if notify:
            notify(f"evaluating {record.name} on {task.name}/{split}")
        res: EvalResult
        if router is not None:
            res = router.evaluate(scorer, task, split, limit, adapter=record.name)
            prefix = "routed_"
        else:
            res = evaluate(scorer, task, split, delta, adapter=record.name, limit=limit)
            prefix = ""
        ref = library.task_adapter(task.name, fingerprint, prefer=record.parents)
        ref_acc = reference_accuracy(library, ref, scorer, task, split, limit, res.n) if ref is not None else None
        score = TaskScore(
            task.name, split, res.n, res.accuracy, res.macro_f1, ref and ref.name, ref_acc, router is not None
        )
        values = {prefix + k: v for k, v in res.metric_values().items()}
        if score.normalized is not None:
            values[prefix + "normalized_accuracy"] = score.normalized
        record_result(library, record.id, fingerprint, task, res, values)
        rows.append(score)
    return MergeReport(tuple(rows))
