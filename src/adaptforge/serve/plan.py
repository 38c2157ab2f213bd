"""Planning a request on a request thread: from a validated body to the work the model worker runs.

Checks the limits, picks adapters (one for all texts, one per text, a request-time merge, a router or retrieval),
the label set each text is scored against and its token ids; everything that can be refused is refused here,
before the request takes a place in the queue.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from adaptforge.backbone import Backbone
from adaptforge.library import AdapterRecord
from adaptforge.routing import Router, stored_settings
from adaptforge.serve.cache import AdapterRef
from adaptforge.serve.config import ServeLimits
from adaptforge.serve.errors import InvalidRequest, TooLarge
from adaptforge.serve.resolve import HeadRule, Resolver
from adaptforge.serve.schema import ClassifyRequest, EmbeddingsRequest, RouteSpec
from adaptforge.serve.scoring import Head

BASE_NAMES = ("base",)


@dataclass(frozen=True)
class RowsWork:
    """Texts to classify, each with its head and adapter (``None``: the base model); batchable."""

    ids: tuple[tuple[int, ...], ...]
    heads: tuple[Head, ...]
    refs: tuple[AdapterRef | None, ...]


@dataclass(frozen=True)
class EmbedWork:
    """Texts to embed, each under its adapter; batchable."""

    texts: tuple[str, ...]
    refs: tuple[AdapterRef | None, ...]


@dataclass(frozen=True)
class RoutedWork:
    """Texts scored through a router; runs alone."""

    router: Router
    head: Head
    texts: tuple[str, ...]
    ids: tuple[tuple[int, ...], ...]


@dataclass(frozen=True)
class RetrievalPlan:
    """Retrieval routing, decided after the texts are embedded with the base model (:meth:`Planner.retrieve`)."""

    rule: HeadRule
    candidates: tuple[AdapterRecord, ...]


class Planner:
    """See the module docstring; one per service, used from many request threads (it keeps no request state)."""

    def __init__(self, resolver: Resolver, backbone: Backbone, limits: ServeLimits) -> None:
        self.resolver = resolver
        self.backbone = backbone
        self.scorer = resolver.scorer
        self.limits = limits

    def _check_texts(self, texts: Sequence[str], field: str) -> None:
        if not texts:
            raise InvalidRequest(f"{field}: give at least one text", field)
        if len(texts) > self.limits.max_texts:
            raise TooLarge(f"{field}: {len(texts)} texts, more than the limit of {self.limits.max_texts}", field)
        for i, text in enumerate(texts):
            if len(text) > self.limits.max_text_chars:
                raise TooLarge(
                    f"{field}[{i}]: {len(text)} characters, more than the limit of {self.limits.max_text_chars}",
                    f"{field}[{i}]",
                )

    def classify(self, req: ClassifyRequest) -> tuple[RowsWork | RoutedWork | RetrievalPlan, list[str]]:
        """The work for a classify request and the adapter name each text's result will show."""
        self._check_texts(req.texts, "texts")
        given = [f for f in ("adapter", "adapters", "merge", "route") if getattr(req, f) is not None]
        if len(given) > 1:
            raise InvalidRequest(
                f"{given[1]}: give one of adapter, adapters, merge or route, not {' and '.join(given)}", given[1]
            )
        n = len(req.texts)
        rule = self.resolver.rule(req.labels, req.description, req.task)
        r = self.resolver
        if req.adapter is not None:
            record = r.record(req.adapter, "adapter")
            router = r.stored_router(record)
            if router is not None:
                return self._routed(router, rule, [record], req.texts), [record.name] * n
            refs: list[AdapterRef | None] = [r.ref(record, "adapter")] * n
            records: list[AdapterRecord | None] = [record] * n
        elif req.adapters is not None:
            if len(req.adapters) != n:
                raise InvalidRequest(f"adapters: one per text: {n} texts, {len(req.adapters)} adapters", "adapters")
            by_name: dict[str, tuple[AdapterRecord, AdapterRef]] = {}
            for i, name in enumerate(req.adapters):
                if name is not None and name not in by_name:
                    record = r.record(name, f"adapters[{i}]")
                    if stored_settings(record.recipe) is not None:
                        raise InvalidRequest(
                            f"adapters[{i}]: {name!r} is a routed adapter; ask for it alone with 'adapter'",
                            f"adapters[{i}]",
                        )
                    by_name[name] = (record, r.ref(record, f"adapters[{i}]"))
            records = [None if a is None else by_name[a][0] for a in req.adapters]
            refs = [None if a is None else by_name[a][1] for a in req.adapters]
        elif req.merge is not None:
            inputs = r.merge_inputs(req.merge)
            parts = inputs.records
            tasks = {p.task for p in parts}
            if not rule.given and (len(tasks) != 1 or None in tasks or "+" in str(next(iter(tasks)))):
                raise InvalidRequest("labels: the merged adapters serve different tasks; give labels or task", "labels")
            head = rule.for_row(lambda: r.own_head(parts[0], "merge.adapters[0]"), r.head)
            ref = r.merge(inputs)  # computed (or found ready) only once the request is known to be valid
            return self._rows(req.texts, [head] * n, [ref] * n), [ref.name] * n
        elif req.route is not None:
            spec = req.route if isinstance(req.route, RouteSpec) else RouteSpec(method=req.route)
            router, candidates = r.route(spec, n)
            if router is None:
                return RetrievalPlan(rule, tuple(candidates)), [""] * n
            return self._routed(router, rule, candidates, req.texts), [f"route:{spec.method}"] * n
        else:
            refs, records = [None] * n, [None] * n
        heads = [
            self._head(rule, rec, f"adapters[{i}]" if req.adapters else "adapter") for i, rec in enumerate(records)
        ]
        return self._rows(req.texts, heads, refs), [rec.name if rec else self.backbone.name for rec in records]

    def _head(self, rule: HeadRule, record: AdapterRecord | None, field: str) -> Head:
        def own() -> Head:
            if record is None:
                raise InvalidRequest(
                    "labels: the base model has no task of its own; give labels (and a description) or a task",
                    "labels",
                )
            return self.resolver.own_head(record, field)

        return rule.for_row(own, self.resolver.head)

    def _rows(self, texts: Sequence[str], heads: Sequence[Head], refs: Sequence[AdapterRef | None]) -> RowsWork:
        ids: list[tuple[int, ...]] = [()] * len(texts)
        groups: dict[Any, list[int]] = {}
        for i, head in enumerate(heads):
            groups.setdefault(head.key, []).append(i)
        for members in groups.values():
            with self.resolver.tokenizing:
                encoded = heads[members[0]].encode(self.scorer, [texts[i] for i in members])
            for i, one in zip(members, encoded, strict=True):
                ids[i] = one
        return RowsWork(tuple(ids), tuple(heads), tuple(refs))

    def _routed(
        self, router: Router, rule: HeadRule, records: Sequence[AdapterRecord], texts: Sequence[str]
    ) -> RoutedWork:
        if not rule.given and len({self.resolver.own_head(rec, "adapter").key for rec in records}) != 1:
            raise InvalidRequest("labels: the routed adapters serve different tasks; give labels or task", "labels")
        head = rule.for_row(lambda: self.resolver.own_head(records[0], "adapter"), self.resolver.head)
        with self.resolver.tokenizing:
            ids = head.encode(self.scorer, texts)
        return RoutedWork(router, head, tuple(texts), tuple(ids))

    def retrieve(self, texts: Sequence[str], plan: RetrievalPlan, vectors: torch.Tensor) -> tuple[RowsWork, list[str]]:
        """Retrieval routing: each text goes to the candidate whose task-description embedding is closest to
        the text's base-model embedding (LoraRetriever's input-to-adapter retrieval,
        https://arxiv.org/abs/2402.09997, over the catalog's stored embeddings)."""
        rule, candidates = plan.rule, plan.candidates
        table = torch.nn.functional.normalize(torch.tensor([list(c.embedding) for c in candidates]).float(), dim=-1)
        chosen = (vectors.float() @ table.T).argmax(dim=-1).tolist()
        records = [candidates[i] for i in chosen]
        refs_of = {rec.id: self.resolver.ref(rec, "route") for rec in records}
        heads = [self._head(rule, rec, "route") for rec in records]
        return self._rows(texts, heads, [refs_of[rec.id] for rec in records]), [rec.name for rec in records]

    def embeddings(self, req: EmbeddingsRequest) -> tuple[EmbedWork, str, int]:
        """The work for an embeddings request, the model name it answers with and its token count."""
        texts = [req.input] if isinstance(req.input, str) else list(req.input)
        self._check_texts(texts, "input")
        width = int(getattr(self.backbone.model.config, "hidden_size", 0))
        if req.dimensions is not None and req.dimensions != width:
            raise InvalidRequest(
                f"dimensions: this model embeds into {width} dimensions; omit it or give {width}", "dimensions"
            )
        if req.model in (*BASE_NAMES, self.backbone.name):
            ref, name = None, self.backbone.name
        else:
            record = self.resolver.record(req.model, "model")
            if stored_settings(record.recipe) is not None:
                raise InvalidRequest(
                    f"model: {record.name!r} is a routed adapter; embeddings need a static one", "model"
                )
            ref, name = self.resolver.ref(record, "model"), record.name
        with self.resolver.tokenizing:
            tokens = self.scorer.tokenizer(texts, truncation=True, max_length=self.scorer.max_length)["input_ids"]
        return EmbedWork(tuple(texts), (ref,) * len(texts)), name, sum(len(t) for t in tokens)
