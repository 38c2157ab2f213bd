"""Text generation for many adapters at once: continuous batching with a KV cache and per-row LoRA.

Requests for different adapters decode in one batch: every forward (a prefill of newly admitted prompts, or one
decode step of every running sequence) goes through :class:`~adaptforge.serve.batched.MixedLora`, so each row adds
its own adapter's ``B (A x)`` at every target module (attention and MLP projections alike), never by swapping or
merging weights. This is the decode side of the multi-LoRA servers cited there (S-LoRA, Punica; vLLM and LoRAX
expose it behind an OpenAI-style API where ``model`` names the adapter).

Continuous batching (Yu et al. 2022, "Orca: A Distributed Serving System for Transformer-Based Generative
Models", OSDI'22): between two decode steps, requests waiting in the queue join the running batch. Their prompts
are prefilled together (left-padded, as ``transformers``' ``generate`` pads a batch), and their KV cache is
concatenated to the running one along the batch axis, the shorter one left-padded with masked positions; finished
or abandoned sequences leave at once, and the cache columns no row attends to any more are cut. Positions count
real tokens only (``cumsum(mask) - 1``, as ``generate`` computes them), so a sequence's logits do not depend on
who shares its batch beyond floating-point rounding, and greedy decoding gives ``predict``'s tokens.

Unlike vLLM there is no paged KV memory (one contiguous cache, rebuilt on admission) and no preemption: at most
``max_batch`` sequences run, the rest wait in the bounded queue (429 beyond it).
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from adaptforge.batching import pad
from adaptforge.serve.batched import MixedLora, Resident
from adaptforge.serve.batcher import Job
from adaptforge.serve.cache import AdapterCache, AdapterRef
from adaptforge.serve.metrics import Metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sampling:
    """How one request picks its tokens: ``temperature`` 0 is greedy (argmax); otherwise softmax sampling over the
    smallest set of tokens whose probability reaches ``top_p`` (nucleus sampling, Holtzman et al. 2020), from a
    generator seeded with ``seed`` (random when None)."""

    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    min_tokens: int = 0  # the end of sequence is held off this long (vLLM's min_tokens; benchmarks time full lengths)


@dataclass(frozen=True)
class Finished:
    """The end of one sequence: its whole text, why it stopped (``stop``: end of sequence or a stop string;
    ``length``: ``max_tokens`` reached), token counts and the time to its first token."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    first_token_s: float


Event = tuple[str, Any]  # ("text", str) | ("done", Finished) | ("error", BaseException)


@dataclass(frozen=True)
class GenerateWork:
    """One sequence to generate: prompt ids, its adapter (None: the base), sampling, and where its events go.
    ``emit`` is called from the model's worker thread and must be thread-safe; ``cancelled`` set by the request
    side (a client that went away) ends the sequence at the next step. ``router`` (a per-token router such as
    Arrow, with ``applied(model)``) instead of ``ref``: the sequence decodes alone with the router's hooks."""

    ids: tuple[int, ...]
    ref: AdapterRef | None
    sampling: Sampling
    emit: Callable[[Event], None] = field(repr=False)
    cancelled: threading.Event = field(default_factory=threading.Event, repr=False)
    router: Any = field(default=None, repr=False)


@dataclass(eq=False)
class _Row:
    job: Job
    work: GenerateWork
    generator: torch.Generator | None
    tokens: list[int] = field(default_factory=list)
    emitted: str = ""
    first_token: float | None = None

    @property
    def key(self) -> str | None:
        return None if self.work.ref is None else self.work.ref.key


class _Batch:
    """The running sequences' KV cache and attention mask (``[rows, columns]``, 0 on left padding)."""

    def __init__(self, cache: Any, mask: torch.Tensor) -> None:
        self.cache = cache
        self.mask = mask

    @property
    def positions(self) -> torch.Tensor:
        """Each row's next position: the count of its real tokens so far."""
        return self.mask.sum(dim=1, keepdim=True)

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only ``rows`` (in that order), then cut the leading columns no remaining row attends to."""
        self.cache.batch_select_indices(rows)
        self.mask = self.mask.index_select(0, rows)
        used = self.mask.any(dim=0).nonzero()
        first = int(used[0]) if len(used) else self.mask.shape[1]
        if first:
            for layer in self.cache.layers:
                layer.keys = layer.keys[:, :, first:]
                layer.values = layer.values[:, :, first:]
            self.mask = self.mask[:, first:]

    def join(self, other: _Batch) -> _Batch:
        """This batch's rows, then ``other``'s; the shorter cache is left-padded with masked columns."""
        from transformers import DynamicCache

        width = max(self.mask.shape[1], other.mask.shape[1])

        def left(t: torch.Tensor, dim: int) -> torch.Tensor:
            missing = width - t.shape[dim]
            if not missing:
                return t
            shape = list(t.shape)
            shape[dim] = missing
            return torch.cat([t.new_zeros(shape), t], dim=dim)

        layers = [
            (torch.cat([left(a.keys, 2), left(b.keys, 2)]), torch.cat([left(a.values, 2), left(b.values, 2)]))
            for a, b in zip(self.cache.layers, other.cache.layers, strict=True)
        ]
        return _Batch(DynamicCache(layers), torch.cat([left(self.mask, 1), left(other.mask, 1)]))


def _hold_back(text: str, stops: Sequence[str]) -> int:
    """How many characters at the end of ``text`` may still become a stop string (or are an incomplete
    character), so a stream does not send them yet."""
    held = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), held, -1):
            if text.endswith(stop[:k]):
                held = k
                break
    while held < len(text) and text[len(text) - held - 1] == "\ufffd":
        held += 1
    return held


class Decoder:
    """Runs generation jobs on the model's worker thread (see the module docstring). :meth:`run` returns when no
    sequence is left and no generation job waits at the head of the queue."""

    def __init__(
        self, model: torch.nn.Module, tokenizer: Any, cache: AdapterCache, metrics: Metrics, max_batch: int
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.cache = cache
        self.metrics = metrics
        self.max_batch = max_batch
        self.eos = tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos
        # transformers 5 renamed the forward's past_key_values to cache (the old name warns, then goes)
        self._cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    def run(self, jobs: list[Job], take: Callable[[int], list[Job]]) -> None:
        """Generate for ``jobs``; between steps, ``take(n)`` gives up to ``n`` more generation jobs to admit."""
        rows: list[_Row] = []
        batch: _Batch | None = None
        residents: dict[str, Resident] = {}
        mixed: MixedLora | None = None
        pending = list(jobs)
        try:
            while True:
                rows, batch = self._drop(rows, batch, [r for r in rows if r.work.cancelled.is_set()], "cancelled")
                if len(rows) < self.max_batch:
                    pending += take(self.max_batch - len(rows) - len(pending))
                pending = [j for j in pending if not self._abandoned(j)]
                if pending:
                    admitted, failed = self._acquire(pending, residents, rows)
                    pending = []
                    if admitted:
                        if mixed is not None:
                            mixed.__exit__(None, None, None)
                        mixed = MixedLora(self.model, list(residents.values())).__enter__()
                        rows, batch = self._prefill(rows, batch, admitted, mixed, list(residents))
                    del failed
                if not rows:
                    return
                rows, batch = self._step(rows, batch, mixed, list(residents))
        except BaseException as err:  # noqa: BLE001 - every sequence of the batch learns of the failure
            log.exception("generation batch failed")
            for row in rows:
                row.work.emit(("error", err))
            for job in pending:
                job.payload.emit(("error", err))
                if not job.future.done():
                    job.future.set_exception(err)
            for row in rows:
                if not row.job.future.done():
                    row.job.future.set_exception(err)
        finally:
            if mixed is not None:
                mixed.__exit__(None, None, None)
            self.cache.release()

    # ------------------------------------------------------------------ admission

    @staticmethod
    def _abandoned(job: Job) -> bool:
        if job.payload.cancelled.is_set():
            job.future.set_result(None)
            return True
        return False

    def _acquire(
        self, pending: list[Job], residents: dict[str, Resident], rows: list[_Row]
    ) -> tuple[list[_Row], list[Job]]:
        """The pending jobs whose adapters are now resident (as rows); the others are answered with their error."""
        in_use = {r.key for r in rows if r.key is not None}
        refs = [j.payload.ref for j in pending if j.payload.ref is not None]
        acquired = self.cache.acquire(refs, keep=in_use)
        admitted, failed = [], []
        for job in pending:
            work: GenerateWork = job.payload
            outcome = None if work.ref is None else acquired[work.ref.key]
            if isinstance(outcome, BaseException):
                work.emit(("error", outcome))
                job.future.set_exception(outcome)
                failed.append(job)
                continue
            if outcome is not None:
                residents[work.ref.key] = outcome  # type: ignore[union-attr]
            seed = work.sampling.seed
            generator = None
            if work.sampling.temperature > 0:
                generator = torch.Generator()
                generator.manual_seed(seed if seed is not None else int(torch.randint(0, 2**62, ()).item()))
            admitted.append(_Row(job, work, generator))
        keep = in_use | {r.key for r in admitted if r.key is not None}
        for key in [k for k in residents if k not in keep]:
            del residents[key]
        self.cache.release(keep=keep)
        return admitted, failed

    def _entries(self, rows: Sequence[_Row], keys: list[str]) -> list[int]:
        index = {k: i for i, k in enumerate(keys)}
        return [-1 if r.key is None else index[r.key] for r in rows]

    def _forward(
        self,
        mixed: MixedLora,
        rows: Sequence[_Row],
        keys: list[str],
        ids: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        cache: Any = None,
    ) -> tuple[torch.Tensor, Any]:
        """Last-position logits of one forward (``mask`` covers the cache and ``ids``), and the grown cache."""
        mixed.select(self._entries(rows, keys))
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
            **{self._cache_arg: cache},
        )
        return out.logits[:, -1].float(), getattr(out, "cache", None) or out.past_key_values

    def _prefill(
        self, rows: list[_Row], batch: _Batch | None, new: list[_Row], mixed: MixedLora, keys: list[str]
    ) -> tuple[list[_Row], _Batch | None]:
        ids, mask = pad([r.work.ids for r in new], self.pad_id, left=True)
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        with torch.no_grad():
            logits, cache = self._forward(mixed, new, keys, ids, mask, positions)
        joined = _Batch(cache, mask) if batch is None else batch.join(_Batch(cache, mask))
        everyone = rows + new
        # only the new rows get a token from this forward; the running rows get theirs in the next step
        done = self._advance(new, logits)
        return self._drop(everyone, joined, done, None)

    # ------------------------------------------------------------------ decoding

    def _step(
        self, rows: list[_Row], batch: _Batch | None, mixed: MixedLora | None, keys: list[str]
    ) -> tuple[list[_Row], _Batch | None]:
        assert batch is not None and mixed is not None
        ids = torch.tensor([[r.tokens[-1]] for r in rows])
        mask = torch.cat([batch.mask, batch.mask.new_ones(len(rows), 1)], dim=1)
        positions = batch.positions
        with torch.no_grad():
            logits, batch.cache = self._forward(mixed, rows, keys, ids, mask, positions, batch.cache)
        batch.mask = mask
        self.metrics.observe("adaptforge_decode_batch_rows", len(rows))
        done = self._advance(rows, logits)
        return self._drop(rows, batch, done, None)

    def _advance(self, rows: Sequence[_Row], logits: torch.Tensor) -> list[_Row]:
        """Pick each row's next token, stream its new text; returns the rows that finished."""
        held = [i for i, r in enumerate(rows) if len(r.tokens) < r.work.sampling.min_tokens]
        if held and self.eos is not None:
            logits[held, self.eos] = float("-inf")
        greedy = logits.argmax(dim=-1).tolist()
        done = []
        now = time.perf_counter()
        for i, row in enumerate(rows):
            token = greedy[i] if row.generator is None else self._sample(logits[i], row)
            if row.first_token is None:
                row.first_token = now
                self.metrics.observe("adaptforge_time_to_first_token_seconds", now - row.job.enqueued)
            row.tokens.append(token)
            if self._emit(row):
                done.append(row)
        return done

    def _sample(self, logits: torch.Tensor, row: _Row) -> int:
        sampling = row.work.sampling
        probs = torch.softmax(logits / sampling.temperature, dim=-1)
        if sampling.top_p < 1.0:
            sorted_probs, order = probs.sort(descending=True)
            before = sorted_probs.cumsum(0) - sorted_probs  # probability of the tokens ranked above each one
            sorted_probs[before >= sampling.top_p] = 0.0
            probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
        return int(torch.multinomial(probs, 1, generator=row.generator))

    def _emit(self, row: _Row) -> bool:
        """Send the row's new text (holding back what may still become a stop string); True when it finished."""
        sampling = row.work.sampling
        eos = self.eos is not None and row.tokens[-1] == self.eos
        tokens = row.tokens[:-1] if eos else row.tokens
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        reason = "stop" if eos else None
        hits = [i for i in (text.find(s) for s in sampling.stop) if i >= 0]
        if hits:
            text, reason = text[: min(hits)], "stop"
        elif reason is None and len(row.tokens) >= sampling.max_tokens:
            reason = "length"
        ready = text if reason is not None else text[: len(text) - _hold_back(text, sampling.stop)]
        if len(ready) > len(row.emitted) and ready.startswith(row.emitted):
            row.work.emit(("text", ready[len(row.emitted) :]))
            row.emitted = ready
        if reason is None:
            return False
        row.work.emit(("done", self._finished(row, text, reason)))
        return True

    def _finished(self, row: _Row, text: str, reason: str) -> Finished:
        now = time.perf_counter()
        first = row.first_token if row.first_token is not None else now
        n = len(row.tokens)
        self.metrics.inc("adaptforge_generated_tokens_total", n)
        if n > 1 and now > first:
            self.metrics.observe("adaptforge_generation_tokens_per_second", (n - 1) / (now - first))
        return Finished(text, reason, len(row.work.ids), n, first - row.job.enqueued)

    def _drop(
        self, rows: list[_Row], batch: _Batch | None, gone: Sequence[_Row], reason: str | None
    ) -> tuple[list[_Row], _Batch | None]:
        """Remove finished (or, with ``reason``, abandoned) rows from the batch and resolve their jobs."""
        if not gone:
            return rows, batch
        leaving = {id(r) for r in gone}
        for row in gone:
            if reason is not None:
                self.metrics.inc("adaptforge_rejected_total", labels={"reason": reason})
            if not row.job.future.done():
                row.job.future.set_result(None)
        kept = [i for i, r in enumerate(rows) if id(r) not in leaving]
        if not kept:
            return [], None
        assert batch is not None
        batch.keep(torch.tensor(kept))
        return [rows[i] for i in kept], batch
