"""The service behind the HTTP routes: plans a request on a request thread (:mod:`adaptforge.serve.plan`),
queues it for the one model worker (:mod:`adaptforge.serve.batcher`) and shapes the answer.

On the worker, a batch of requests for any mix of adapters (stored, request-time merges, the bare base) is one
forward per scorer pass through :class:`~adaptforge.serve.batched.MixedLora`. Routed requests run alone, through
the same Router contract ``adaptforge eval`` uses (``Router.logits``), so served and evaluated numbers agree: a
per-token router (Arrow) applies its gates in batched forwards; a per-input router (DaWin) routes the texts,
then scores them in batched forwards with per-row coefficients (:mod:`adaptforge.lora.rows`).
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import torch
from starlette.concurrency import run_in_threadpool

from adaptforge.backbone import Backbone
from adaptforge.library import Library
from adaptforge.routing import stored_settings
from adaptforge.scorers import make_scorer
from adaptforge.serve.batched import MixedLora
from adaptforge.serve.batcher import Job, MicroBatcher
from adaptforge.serve.cache import AdapterCache, Lru
from adaptforge.serve.chat import DONE, ChatPlanner, Prompt, Reply, event
from adaptforge.serve.config import ServeConfig, ServeLimits
from adaptforge.serve.decode import Decoder, Event, GenerateWork
from adaptforge.serve.errors import Busy, ClientGone, InvalidRequest, ServeError, Unavailable
from adaptforge.serve.metrics import Metrics
from adaptforge.serve.plan import EmbedWork, Planner, RetrievalPlan, RoutedWork, RowsWork
from adaptforge.serve.resolve import Resolver
from adaptforge.serve.schema import ChatRequest, ClassifyRequest, CompletionRequest, EmbeddingsRequest, RouteSpec
from adaptforge.serve.scoring import Head, ScoreRow, classify, embed
from adaptforge.tasks import Example

BASE_NAMES = ("base",)


class Service:
    """One base model, one library, one worker; see the module docstring. :meth:`start` loads the pinned
    adapters and starts the worker; :meth:`stop` drains it."""

    def __init__(
        self,
        library: Library,
        backbone: Backbone,
        config: ServeConfig,
        limits: ServeLimits | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.library = library
        self.backbone = backbone
        self.config = config
        self.limits = limits or ServeLimits()
        self.metrics = metrics or Metrics()
        self.scorer = make_scorer(backbone)
        self.cache = AdapterCache(backbone.model, config.max_loaded, self.metrics)
        # request threads tokenize with their own copy of the tokenizer, the worker with the scorer's
        planning = make_scorer(dataclasses.replace(backbone, tokenizer=copy.deepcopy(backbone.tokenizer)))
        self.resolver = Resolver(library, planning, self.cache, self.limits, self.metrics)
        self.planner = Planner(self.resolver, backbone, self.limits)
        self.chat_planner = ChatPlanner(self.resolver, backbone, self.limits)
        self.decoder = Decoder(backbone.model, backbone.tokenizer, self.cache, self.metrics, config.max_batch)
        self.label_cache: Lru[Any, torch.Tensor] = Lru(4096)
        self.batcher = MicroBatcher(
            self._execute,
            max_batch=config.max_batch,
            max_wait_ms=config.max_wait_ms,
            max_queue=self.limits.max_queue,
            on_batch=self._observe_batch,
        )

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        for name in self.config.pins:
            record = self.resolver.record(name, "pins")
            self.cache.pin(self.resolver.ref(record, "pins"))
        self.batcher.start()

    def stop(self, timeout: float | None = 30.0) -> None:
        self.batcher.stop(timeout)

    # ------------------------------------------------------------------ routes

    async def classify(self, request: ClassifyRequest) -> dict[str, Any]:
        plan, names = await run_in_threadpool(self.planner.classify, request)
        if isinstance(plan, RetrievalPlan):  # embed with the base, then pick an adapter per text
            vectors = await self._run(EmbedWork(tuple(request.texts), (None,) * len(request.texts)), len(names))
            plan, names = await run_in_threadpool(self.planner.retrieve, request.texts, plan, vectors)
        logits = await self._run(plan, len(names), batchable=not isinstance(plan, RoutedWork))
        _check_finite(logits, _blamed(request), "scores")
        heads = plan.heads if isinstance(plan, RowsWork) else (plan.head,) * len(names)
        self.metrics.inc("adaptforge_texts_total", len(names), {"route": "/v1/classify"})
        return {
            "model": self.backbone.name,
            "results": [_result(x, h, n) for x, h, n in zip(logits, heads, names, strict=True)],
        }

    async def embeddings(self, request: EmbeddingsRequest) -> dict[str, Any]:
        work, name, tokens = await run_in_threadpool(self.planner.embeddings, request)
        vectors = await self._run(work, len(work.texts))
        _check_finite(vectors, "model", "embeddings")
        self.metrics.inc("adaptforge_texts_total", len(work.texts), {"route": "/v1/embeddings"})
        data = [{"object": "embedding", "index": i, "embedding": v.tolist()} for i, v in enumerate(vectors)]
        return {
            "object": "list",
            "data": data,
            "model": name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    async def generate(
        self, request: ChatRequest | CompletionRequest, disconnected: Callable[[], Awaitable[bool]]
    ) -> dict[str, Any] | AsyncIterator[str]:
        """A chat or completion: the whole answer, or (``stream``) an iterator of server-sent events. Everything
        that can be refused is refused before the first event."""
        prompt = await run_in_threadpool(self.chat_planner.plan, request)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Event] = asyncio.Queue()
        work = GenerateWork(
            prompt.ids,
            prompt.ref,
            prompt.sampling,
            lambda e: loop.call_soon_threadsafe(events.put_nowait, e),
            router=prompt.router,
        )
        self._submit(work, 1, batchable=prompt.router is None)  # a routed sequence decodes alone
        route = "/v1/chat/completions" if prompt.chat else "/v1/completions"
        self.metrics.inc("adaptforge_texts_total", 1, {"route": route})
        if prompt.stream:
            return self._stream(prompt, work, events)
        watch = _Watch(disconnected)
        try:
            started = False
            while True:
                kind, value = await self._next_event(events, started, watch)
                started = True
                if kind == "done":
                    return Reply(prompt).whole(value)
                if kind == "error":
                    raise value
        finally:
            work.cancelled.set()  # a client gone (or a failure here) frees the sequence's slot

    async def _next_event(self, events: asyncio.Queue[Event], started: bool, watch: _Watch | None = None) -> Event:
        """The sequence's next event; 503 when its first one takes longer than the request timeout (the queue is
        too long), :class:`ClientGone` when the client went away (asked every :data:`POLL_S` seconds, whether
        or not events arrive: a whole answer's text events come at every step)."""
        waited = 0.0
        while True:
            try:
                got = await asyncio.wait_for(events.get(), POLL_S)
            except TimeoutError:
                got = None
                waited += POLL_S
            if watch is not None and await watch.gone():
                self.metrics.inc("adaptforge_rejected_total", labels={"reason": "client_gone"})
                raise ClientGone("the client closed the connection before the answer was ready")
            if got is not None:
                return got
            if not started and waited >= self.limits.request_timeout_s:
                self.metrics.inc("adaptforge_rejected_total", labels={"reason": "timeout"})
                raise Unavailable(f"the model did not answer within {self.limits.request_timeout_s:g} s; retry later")

    async def _stream(self, prompt: Prompt, work: GenerateWork, events: asyncio.Queue[Event]) -> AsyncIterator[str]:
        reply = Reply(prompt)
        try:
            started = False
            while True:
                kind, value = await self._next_event(events, started)
                if not started and prompt.chat and kind != "error":
                    yield reply.chunk(None, role=True)
                started = True
                if kind == "text":
                    yield reply.chunk(value)
                elif kind == "done":
                    yield reply.chunk(None if prompt.chat else "", finish_reason=value.finish_reason)
                    if prompt.include_usage:
                        yield reply.usage_chunk(value)
                    break
                else:
                    yield event(_error_event(value))
                    break
            yield DONE
        finally:
            work.cancelled.set()  # a client that disconnects mid-stream frees its slot at the next step

    def models(self) -> dict[str, Any]:
        records = self.library.list()
        names = {r.id: r.name for r in records}
        loaded, pinned = set(self.cache.loaded()), set(self.cache.pinned())
        base = {
            "id": self.backbone.name,
            "object": "model",
            "owned_by": "adaptforge",
            "kind": "base",
            "base": self.backbone.name,
            "fingerprint": self.backbone.fingerprint,
            "parents": [],
        }
        data = [base]
        for r in records:
            if r.base_fingerprint != self.backbone.fingerprint:
                continue
            data.append(
                {
                    "id": r.name,
                    "object": "model",
                    "owned_by": "adaptforge",
                    "created": int(r.created),
                    "adapter_id": r.id,
                    "kind": r.kind,
                    "method": r.method,
                    "task": r.task,
                    "base": r.base_model,
                    "parents": [names.get(p, p) for p in r.parents],
                    "rank": r.rank,
                    "routed": stored_settings(r.recipe) is not None,
                    "loaded": r.name in loaded,
                    "pinned": r.name in pinned,
                }
            )
        return {"object": "list", "data": data}

    def health(self) -> tuple[bool, dict[str, Any]]:
        up = self.batcher.running
        return up, {
            "status": "ok" if up else "stopping",
            "model": self.backbone.name,
            "fingerprint": self.backbone.fingerprint,
            "adapters_loaded": len(self.cache),
            "queue_rows": self.batcher.queued_rows,
        }

    def metrics_text(self) -> str:
        return self.metrics.render(
            {
                "adaptforge_queue_rows": self.batcher.queued_rows,
                "adaptforge_loaded_adapters": len(self.cache),
                "adaptforge_pinned_adapters": len(self.cache.pinned()),
            }
        )

    def _submit(self, work: Any, rows: int, batchable: bool = True) -> Any:
        try:
            return self.batcher.submit(work, rows, batchable)
        except Busy:
            self.metrics.inc("adaptforge_rejected_total", labels={"reason": "queue_full"})
            raise
        except Unavailable:
            self.metrics.inc("adaptforge_rejected_total", labels={"reason": "stopping"})
            raise

    async def _run(self, work: Any, rows: int, batchable: bool = True) -> Any:
        future = self._submit(work, rows, batchable)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self.limits.request_timeout_s)
        except TimeoutError:
            future.cancel()
            self.metrics.inc("adaptforge_rejected_total", labels={"reason": "timeout"})
            raise Unavailable(
                f"the model did not answer within {self.limits.request_timeout_s:g} s; retry later"
            ) from None

    # ------------------------------------------------------------------ execution (the worker thread)

    def _observe_batch(self, jobs: list[Job]) -> None:
        self.metrics.observe("adaptforge_batch_rows", sum(j.rows for j in jobs))

    def _execute(self, jobs: list[Job]) -> None:
        if len(jobs) == 1 and isinstance(jobs[0].payload, GenerateWork) and jobs[0].payload.router is not None:
            with jobs[0].payload.router.applied(self.backbone.model):  # per-token routing hooks, this sequence only
                self.decoder.run(jobs, lambda n: [])
            return
        generation = [j for j in jobs if isinstance(j.payload, GenerateWork)]
        if generation:
            others = [j for j in jobs if not isinstance(j.payload, GenerateWork)]
            if others:
                self._execute(others)
            self.decoder.run(generation, lambda n: self.batcher.take(_is_generation, n))
            return
        if len(jobs) == 1 and isinstance(jobs[0].payload, RoutedWork):
            self.metrics.observe("adaptforge_batch_adapters", len(jobs[0].payload.router.deltas))
            jobs[0].future.set_result(self._execute_routed(jobs[0].payload))
            return
        refs = [ref for job in jobs for ref in job.payload.refs if ref is not None]
        acquired = self.cache.acquire(refs)
        try:
            live = []
            for job in jobs:
                failed = [acquired[ref.key] for ref in job.payload.refs if ref is not None]
                error = next((x for x in failed if isinstance(x, BaseException)), None)
                if error is not None:
                    job.future.set_exception(error)
                else:
                    live.append(job)
            keys = list(dict.fromkeys(ref.key for job in live for ref in job.payload.refs if ref is not None))
            entry = {key: i for i, key in enumerate(keys)}
            self.metrics.observe("adaptforge_batch_adapters", len(keys))
            with MixedLora(self.backbone.model, [acquired[k] for k in keys]) as mixed:  # type: ignore[misc]
                self._run_classify([j for j in live if isinstance(j.payload, RowsWork)], mixed, entry)
                self._run_embed([j for j in live if isinstance(j.payload, EmbedWork)], mixed, entry)
        finally:
            self.cache.release()

    def _run_classify(self, jobs: list[Job], mixed: MixedLora, entry: dict[str, int]) -> None:
        if not jobs:
            return
        rows = [
            ScoreRow(ids, head, -1 if ref is None else entry[ref.key], "base" if ref is None else ref.key)
            for job in jobs
            for ids, head, ref in zip(job.payload.ids, job.payload.heads, job.payload.refs, strict=True)
        ]
        try:
            logits = classify(
                self.scorer, self.backbone.model, mixed.select, rows, self.config.max_batch, self.label_cache
            )
        except Exception as err:  # noqa: BLE001 - the jobs of this forward share its fate, the worker goes on
            for job in jobs:
                job.future.set_exception(err)
            return
        start = 0
        for job in jobs:
            job.future.set_result(logits[start : start + job.rows])
            start += job.rows

    def _run_embed(self, jobs: list[Job], mixed: MixedLora, entry: dict[str, int]) -> None:
        if not jobs:
            return
        texts = [t for job in jobs for t in job.payload.texts]
        entries = [-1 if ref is None else entry[ref.key] for job in jobs for ref in job.payload.refs]
        try:
            vectors = embed(self.scorer, self.backbone.model, mixed.select, texts, entries, self.config.max_batch)
        except Exception as err:  # noqa: BLE001
            for job in jobs:
                job.future.set_exception(err)
            return
        start = 0
        for job in jobs:
            job.future.set_result(vectors[start : start + job.rows])
            start += job.rows

    def _execute_routed(self, work: RoutedWork) -> list[torch.Tensor]:
        task = work.head.task
        examples = [Example(t, task.labels[0]) for t in work.texts]
        return list(work.router.logits(self.scorer, task, examples))  # exactly what eval and predict score


POLL_S = 0.25  # how often a request waiting for its whole answer asks whether its client is still there


class _Watch:
    """Whether a request's client went away, asked of the server at most every :data:`POLL_S` seconds."""

    def __init__(self, disconnected: Callable[[], Awaitable[bool]]) -> None:
        self.disconnected = disconnected
        self.next = 0.0

    async def gone(self) -> bool:
        now = time.monotonic()
        if now < self.next:
            return False
        self.next = now + POLL_S
        return await self.disconnected()


def _is_generation(job: Job) -> bool:
    """A sequence that may join a running batch (a routed one decodes alone)."""
    return isinstance(job.payload, GenerateWork) and job.payload.router is None


def _error_event(err: BaseException) -> dict[str, Any]:
    """A failure after a stream started, as the one error shape (the status line is already sent)."""
    if isinstance(err, ServeError):
        return {"error": {"type": err.kind, "message": str(err), "field": err.field}}
    return {"error": {"type": "internal", "message": f"internal error ({type(err).__name__}); see the server log"}}


def _blamed(request: ClassifyRequest) -> str:
    """The request field that decides the numbers: the merge's weights or params, the route, or the adapter."""
    if request.merge is not None:
        return "merge.weights" if request.merge.weights is not None else "merge.params"
    if request.route is not None:
        return "route.params" if isinstance(request.route, RouteSpec) and request.route.params else "route"
    return "adapters" if request.adapters is not None else "adapter"


def _check_finite(rows: Sequence[torch.Tensor], field: str, what: str) -> None:
    """Finite inputs can still give infinite or NaN scores (huge merge weights, a tiny temperature): that is
    no answer, and JSON cannot carry it, so the request is refused naming ``field``."""
    bad = [i for i, row in enumerate(rows) if not bool(torch.isfinite(row).all())]
    if bad:
        raise InvalidRequest(
            f"{field}: the {what} of {len(bad)} of {len(rows)} texts (first: texts[{bad[0]}]) are not finite "
            "numbers (they overflow); use smaller values",
            field,
        )


def _result(logits: torch.Tensor, head: Head, adapter: str) -> dict[str, Any]:
    labels = head.task.labels
    probs = torch.softmax(logits.double(), dim=-1)
    return {
        "label": labels[int(logits.argmax())],
        "scores": {label: float(p) for label, p in zip(labels, probs, strict=True)},
        "logits": {label: float(x) for label, x in zip(labels, logits, strict=True)},
        "adapter": adapter,
    }
