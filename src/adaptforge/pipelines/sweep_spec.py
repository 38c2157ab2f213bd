"""The sweep spec: a YAML grid of train, merge and compose cells, checked key by key before any work.

```yaml
name: sst-grid                    # prefix of every adapter name (default "sweep")
model: null                       # base model (default: the embedded MiniLM)
train:                            # tasks x rank x lr x seeds x epochs; other TrainConfig fields fixed
  tasks: [data/sst2, data/agnews] # task folders, relative to this file
  rank: [4, 8]
  lr: [0.001]
  seeds: [0, 1]
  epochs: [1]
  options: {batch_size: 16, max_train: 256, targets: [query, value]}
  eval: {split: dev, limit: 64}
merge:                            # merges x methods x params
  merges: [[sst2-a, agnews-a]]    # adapters already in the library
  methods: [task_arithmetic, ties]
  params: {ties: {density: [0.3, 0.6]}}   # per method: a list of values per parameter (a grid)
  eval: {tasks: [data/sst2], split: dev}
compose:                          # task x k x seeds x method
  tasks: [data/trec_question_type]
  k: [8, 16]
  seeds: [0, 1]
  methods: [lorahub]
  options: {candidates: 5}
  eval: {split: dev, limit: 64}
```

An axis is a list (a single value counts as a list of one); an empty list is an error naming the key and its
line, as is an unknown key (with the closest known one). Values are checked as the methods will check them
(TrainConfig, merge and compose params), so a spec that loads runs every cell with valid settings.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from adaptforge.core import AdaptforgeError, did_you_mean
from adaptforge.structured import parse_yaml

TOP_KEYS = ("name", "model", "train", "merge", "compose")
TRAIN_KEYS = ("tasks", "rank", "lr", "seeds", "epochs", "options", "eval")
MERGE_KEYS = ("merges", "methods", "params", "data", "eval")
COMPOSE_KEYS = ("tasks", "k", "seeds", "methods", "params", "options", "eval")
EVAL_KEYS = {"train": ("split", "limit"), "merge": ("tasks", "split", "limit"), "compose": ("split", "limit")}
COMPOSE_OPTIONS = ("candidates", "exclude_tasks")
TRAIN_AXES = {"rank": "rank", "lr": "lr", "seeds": "seed", "epochs": "epochs"}  # spec key -> TrainConfig field
MAX_CELLS = 10_000  # cells one spec may expand to (``adaptforge sweep --max-cells`` raises it)


class SweepSpecError(AdaptforgeError):
    """A sweep spec that is not valid; the message names the file, the key and its line."""


def _lines(node: yaml.Node, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], int]:
    """1-based line of every mapping key (and list item) in the composed YAML tree, by its key path."""
    lines: dict[tuple[str, ...], int] = {path: node.start_mark.line + 1}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            sub = (*path, str(key.value))
            lines.update(_lines(value, sub))
            lines[sub] = key.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines.update(_lines(item, (*path, str(i))))
    return lines


@dataclass(frozen=True)
class TrainGrid:
    tasks: tuple[str, ...]
    axes: Mapping[str, tuple[Any, ...]]  # TrainConfig field -> values (rank, lr, seed, epochs)
    options: Mapping[str, Any]
    split: str = "dev"
    limit: int | None = None


@dataclass(frozen=True)
class MergeGrid:
    merges: tuple[tuple[str, ...], ...]
    methods: tuple[str, ...]
    params: Mapping[str, tuple[Mapping[str, Any], ...]]  # method -> its parameter settings (the grid, expanded)
    data: tuple[str, ...] = ()
    eval_tasks: tuple[str, ...] = ()
    split: str = "dev"
    limit: int | None = None


@dataclass(frozen=True)
class ComposeGrid:
    tasks: tuple[str, ...]
    k: tuple[int, ...]
    seeds: tuple[int, ...]
    methods: tuple[str, ...]
    params: Mapping[str, tuple[Mapping[str, Any], ...]]
    candidates: int = 20
    exclude_tasks: tuple[str, ...] = ()
    split: str = "dev"
    limit: int | None = None


@dataclass(frozen=True)
class SweepSpec:
    name: str = "sweep"
    model: str | None = None
    train: TrainGrid | None = None
    merge: MergeGrid | None = None
    compose: ComposeGrid | None = None
    source: str = "spec"
    lines: Mapping[tuple[str, ...], int] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_yaml(cls, path: str | Path, max_cells: int = MAX_CELLS) -> SweepSpec:
        path = Path(path)
        if not path.is_file():
            raise SweepSpecError(f"{path}: sweep spec not found")
        raw, node = parse_yaml(path.read_text(), str(path), SweepSpecError)
        return _Reader(str(path), path.parent, _lines(node) if node is not None else {}, max_cells).spec(raw)

    @classmethod
    def from_mapping(
        cls, raw: object, where: str = "spec", base_dir: Path | None = None, max_cells: int = MAX_CELLS
    ) -> SweepSpec:
        return _Reader(where, base_dir, {}, max_cells).spec(raw)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


class _Reader:
    """Walks the raw mapping; every error says where (file, key path, line) and what was expected."""

    def __init__(
        self, source: str, base_dir: Path | None, lines: Mapping[tuple[str, ...], int], max_cells: int = MAX_CELLS
    ) -> None:
        self.source, self.base_dir, self.lines = source, base_dir, lines
        self.max_cells, self.cells = max_cells, 0

    def count(self, path: tuple[str, ...], cells: int) -> None:
        """Add a stage's ``cells`` to the spec's count, refusing it above ``max_cells`` before any cell is built
        or checked (a grid of 10^6 cells would otherwise validate for minutes and run for years)."""
        before, self.cells = self.cells, self.cells + cells
        if self.cells > self.max_cells:
            earlier = f" (with {before} of the stages before)" if before else ""
            raise self.fail(
                path,
                f"the grid expands to {self.cells} cells{earlier}, more than the limit of {self.max_cells}; "
                "shrink it or raise the limit with --max-cells N",
            )

    def fail(self, path: tuple[str, ...], message: str) -> SweepSpecError:
        line = self.lines.get(path)
        where = f"{self.source}" + (f" line {line}" if line else "")
        key = f"key {'.'.join(path)!r}: " if path else ""
        return SweepSpecError(f"{where}: {key}{message}")

    def mapping(self, raw: object, path: tuple[str, ...], known: Sequence[str]) -> Mapping[str, Any]:
        if raw is None and path:
            raise self.fail(path, f"is empty; expected a mapping with keys {', '.join(known)}")
        if not isinstance(raw, Mapping):
            raise self.fail(path, f"expected a mapping with keys {', '.join(known)}, got {type(raw).__name__}")
        for key in raw:
            if key not in known:
                where = f"in {'.'.join(path)!r}" if path else "at the top level"
                raise self.fail(
                    (*path, str(key)),
                    f"unknown key {where}; expected one of {', '.join(known)}.{did_you_mean(key, known)}",
                )
        return raw

    def axis(self, raw: Mapping[str, Any], key: str, path: tuple[str, ...], default: Sequence[Any]) -> tuple[Any, ...]:
        """A grid axis: a list (or one value); absent means ``default``; an empty list is an error."""
        if key not in raw:
            return tuple(default)
        value = raw[key]
        values = tuple(value) if isinstance(value, (list, tuple)) else (value,)
        if not values or value is None:
            raise self.fail((*path, key), "empty grid; expected a list of at least one value")
        return values

    def paths(self, values: Sequence[Any], path: tuple[str, ...]) -> tuple[str, ...]:
        out = []
        for i, value in enumerate(values):
            if not isinstance(value, str) or not value.strip():
                raise self.fail((*path, str(i)), f"expected a task folder (a path), got {value!r}")
            p = Path(value).expanduser()
            if not p.is_absolute() and self.base_dir is not None:
                p = self.base_dir / p
            if not p.exists():
                raise self.fail(path, f"task {value!r} not found (looked for {p})")
            out.append(str(p.resolve()))
        return tuple(out)

    def eval_block(self, raw: Mapping[str, Any], path: tuple[str, ...], stage: str) -> dict[str, Any]:
        block = self.mapping(raw.get("eval") or {}, (*path, "eval"), EVAL_KEYS[stage])
        split = block.get("split", "dev")
        if not isinstance(split, str) or not split:
            raise self.fail((*path, "eval", "split"), f"expected a split name (train, dev, test), got {split!r}")
        limit = block.get("limit")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise self.fail((*path, "eval", "limit"), f"expected a positive number of examples or null, got {limit!r}")
        out: dict[str, Any] = {"split": split, "limit": limit}
        if stage == "merge":
            tasks = self.axis(block, "tasks", (*path, "eval"), ())
            out["tasks"] = self.paths(tasks, (*path, "eval", "tasks"))
        return out

    def method_params(
        self, raw: Mapping[str, Any], path: tuple[str, ...], methods: Sequence[str], registry: Any, outer: int
    ) -> dict[str, tuple[Mapping[str, Any], ...]]:
        """Per method, the product of its parameters' value lists, each setting checked by the method's params;
        ``outer`` is how many cells each setting makes (counted against the limit first)."""
        given = raw.get("params") or {}
        given = self.mapping(given, (*path, "params"), list(methods)) if given else {}
        out: dict[str, tuple[Mapping[str, Any], ...]] = {}
        for method in methods:
            impl = registry.get(method)
            grid = given.get(method) or {}
            where = (*path, "params", method)
            if not isinstance(grid, Mapping):
                raise self.fail(where, f"expected a mapping of parameter names to lists of values, got {grid!r}")
            keys = list(grid)
            axes = [self.axis(grid, k, where, ()) for k in keys]
            self.count(where, math.prod(len(a) for a in axes) * outer)
            settings = [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*axes)]
            for setting in settings:
                try:
                    impl.parse_params(setting)
                except AdaptforgeError as err:
                    raise self.fail(where, str(err)) from None
            out[method] = tuple(settings)
        return out

    def methods(self, raw: Mapping[str, Any], path: tuple[str, ...], default: str, registry: Any) -> tuple[str, ...]:
        methods = self.axis(raw, "methods", path, (default,))
        for i, method in enumerate(methods):
            try:
                registry.get(method)
            except AdaptforgeError as err:
                raise self.fail((*path, "methods", str(i)), str(err)) from None
        return methods

    def train(self, raw: object) -> TrainGrid:
        from adaptforge.train.config import TrainConfig

        path = ("train",)
        raw = self.mapping(raw, path, TRAIN_KEYS)
        if "tasks" not in raw:
            raise self.fail(path, "missing key 'tasks': the task folders to train on")
        tasks = self.paths(self.axis(raw, "tasks", path, ()), (*path, "tasks"))
        defaults = TrainConfig()
        axes = {field: self.axis(raw, key, path, (getattr(defaults, field),)) for key, field in TRAIN_AXES.items()}
        options = raw.get("options") or {}
        if not isinstance(options, Mapping):
            raise self.fail((*path, "options"), f"expected a mapping of TrainConfig fields, got {options!r}")
        for key in options:
            if key in TRAIN_AXES.values() or key in TRAIN_AXES:
                axis = next(k for k, f in TRAIN_AXES.items() if key in (k, f))
                raise self.fail((*path, "options", str(key)), f"is a grid axis; set it as train.{axis} (a list)")
        self.count(path, len(tasks) * math.prod(len(v) for v in axes.values()))
        for key, name in TRAIN_AXES.items():  # each value on its own first, so the error points at its line
            for i, value in enumerate(axes[name]):
                try:
                    TrainConfig.from_dict({name: value})
                except AdaptforgeError as err:
                    hint = ""
                    if isinstance(value, str) and _is_number(value):
                        hint = f" (YAML reads {value} as text: write it with a dot, e.g. {float(value)!r})"
                    raise self.fail((*path, key, str(i)) if key in raw else path, f"{err}{hint}") from None
        for combo in itertools.product(*axes.values()):
            try:
                TrainConfig.from_dict({**options, **dict(zip(axes, combo, strict=True))})
            except AdaptforgeError as err:
                raise self.fail((*path, "options") if "options" in raw else path, str(err)) from None
        return TrainGrid(tasks, axes, dict(options), **self.eval_block(raw, path, "train"))

    def merge(self, raw: object) -> MergeGrid:
        from adaptforge.merge import MERGE_METHODS

        path = ("merge",)
        raw = self.mapping(raw, path, MERGE_KEYS)
        if "merges" not in raw:
            raise self.fail(path, "missing key 'merges': lists of library adapters to merge")
        merges = self.axis(raw, "merges", path, ())
        for i, group in enumerate(merges):
            if isinstance(group, str) or not isinstance(group, Sequence) or not group:
                raise self.fail((*path, "merges", str(i)), f"expected a non-empty list of adapter names, got {group!r}")
            if not all(isinstance(a, str) and a.strip() for a in group):
                raise self.fail((*path, "merges", str(i)), f"expected adapter names (strings), got {list(group)!r}")
        methods = self.methods(raw, path, "task_arithmetic", MERGE_METHODS)
        data = self.paths(self.axis(raw, "data", path, ()), (*path, "data"))
        for method in methods:
            needs = MERGE_METHODS.get(method).needs_data
            if needs and not data:
                raise self.fail(
                    (*path, "methods"), f"method {method!r} learns from data; list task folders in merge.data"
                )
        params = self.method_params(raw, path, methods, MERGE_METHODS, len(merges))
        evals = self.eval_block(raw, path, "merge")
        return MergeGrid(
            tuple(tuple(g) for g in merges),
            methods,
            params,
            data,
            evals["tasks"],
            evals["split"],
            evals["limit"],
        )

    def compose(self, raw: object) -> ComposeGrid:
        from adaptforge.compose import COMPOSERS

        path = ("compose",)
        raw = self.mapping(raw, path, COMPOSE_KEYS)
        if "tasks" not in raw:
            raise self.fail(path, "missing key 'tasks': the new tasks' folders")
        tasks = self.paths(self.axis(raw, "tasks", path, ()), (*path, "tasks"))
        ks = self.axis(raw, "k", path, (16,))
        seeds = self.axis(raw, "seeds", path, (0,))
        for key, values in (("k", ks), ("seeds", seeds)):
            for i, v in enumerate(values):
                if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                    raise self.fail((*path, key, str(i)), f"expected a non-negative integer, got {v!r}")
        methods = self.methods(raw, path, "lorahub", COMPOSERS)
        params = self.method_params(raw, path, methods, COMPOSERS, len(tasks) * len(ks) * len(seeds))
        options = self.mapping(raw.get("options") or {}, (*path, "options"), COMPOSE_OPTIONS)
        candidates = options.get("candidates", 20)
        if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < 1:
            raise self.fail((*path, "options", "candidates"), f"expected a positive integer, got {candidates!r}")
        exclude = options.get("exclude_tasks") or []
        if isinstance(exclude, str) or not all(isinstance(t, str) for t in exclude):
            raise self.fail((*path, "options", "exclude_tasks"), f"expected a list of task names, got {exclude!r}")
        return ComposeGrid(
            tasks, ks, seeds, methods, params, candidates, tuple(exclude), **self.eval_block(raw, path, "compose")
        )

    def spec(self, raw: object) -> SweepSpec:
        from adaptforge.library import validate_name

        raw = self.mapping(raw, (), TOP_KEYS)
        stages = [k for k in ("train", "merge", "compose") if k in raw]
        if not stages:
            raise self.fail((), "nothing to sweep; expected at least one of the keys train, merge, compose")
        name = raw.get("name", "sweep")
        try:
            validate_name(name)
        except AdaptforgeError as err:
            raise self.fail(("name",), f"{err} (the prefix of every adapter name)") from None
        model = raw.get("model")
        if model is not None and not isinstance(model, str):
            raise self.fail(("model",), f"expected a model path or name, got {model!r}")
        return SweepSpec(
            name=name,
            model=model,
            train=self.train(raw["train"]) if "train" in raw else None,
            merge=self.merge(raw["merge"]) if "merge" in raw else None,
            compose=self.compose(raw["compose"]) if "compose" in raw else None,
            source=self.source,
            lines=dict(self.lines),
        )
