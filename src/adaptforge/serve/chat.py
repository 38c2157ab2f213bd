"""OpenAI's chat and completions API over a causal base: requests checked and tokenized on a request thread, answers
shaped as OpenAI's objects (whole, or as server-sent event chunks ending with ``data: [DONE]``).

``model`` names an adapter of the library (vLLM's ``--lora-modules`` name, LoRAX's ``adapter_id``), or the base
model (its name or ``base``). ``merge`` (as in ``/v1/classify``, LoRAX's ``merged_adapters``) asks for a merge made
for the request, computed once per (method, adapters, weights, params) and cached, on the base that ``model``
names; the answer's ``model`` shows the merge (``task_arithmetic(a,b)``). ``route`` (``"arrow"`` or ``{"method":
"arrow", "adapters", "params"}``, as in ``/v1/classify``) and a stored Arrow composition named as ``model`` route
every token over their adapters (Arrow's per-token gates, the hooks ``adaptforge eval`` scores it with); such a
sequence decodes alone, not in the mixed batch (one adapter per row there). DaWin routes on label scores, so its
merges classify only.

A chat prompt is the model's chat template over the messages with the generation prompt, tokenized exactly as
``adaptforge predict`` does (:func:`~adaptforge.generation.prompt_text`), so greedy answers (``temperature`` 0)
are ``predict``'s; a completion prompt is tokenized as given, with the tokenizer's
special tokens (vLLM's default). Nothing is cut: a prompt that does not fit in the context, or leaves no room
for ``max_tokens``, is refused naming the field.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from adaptforge.backbone import Backbone
from adaptforge.generation import context_length, prompt_text
from adaptforge.params import is_finite_number
from adaptforge.routing import Router
from adaptforge.serve.cache import AdapterRef
from adaptforge.serve.config import ServeLimits
from adaptforge.serve.decode import Finished, Sampling
from adaptforge.serve.errors import InvalidRequest, TooLarge
from adaptforge.serve.resolve import Resolver
from adaptforge.serve.schema import ChatRequest, CompletionRequest, RouteSpec

BASE_NAMES = ("base",)
MAX_STOPS = 4  # OpenAI's limit on stop sequences


@dataclass(frozen=True)
class Prompt:
    """A checked generation request: prompt ids, adapter, sampling, and the model name the answer shows."""

    ids: tuple[int, ...]
    ref: AdapterRef | None
    sampling: Sampling
    model: str
    chat: bool
    stream: bool
    include_usage: bool
    router: Router | None = None  # a per-token router (Arrow) instead of ``ref``


class ChatPlanner:
    """Checks and tokenizes chat and completion requests (one per service; safe across request threads)."""

    def __init__(self, resolver: Resolver, backbone: Backbone, limits: ServeLimits) -> None:
        self.resolver = resolver
        self.backbone = backbone
        self.limits = limits
        self.tokenizer = resolver.scorer.tokenizer  # the request threads' own copy, used under resolver.tokenizing
        self.context = context_length(backbone) if backbone.kind == "causal" else 0

    def plan(self, req: ChatRequest | CompletionRequest) -> Prompt:
        chat = isinstance(req, ChatRequest)
        if self.backbone.kind != "causal":
            raise InvalidRequest(
                f"model: this server's base model {self.backbone.name!r} is an encoder; chat and completions need a "
                "causal LM (serve with --model smollm2 or another *ForCausalLM)",
                "model",
            )
        if req.n != 1:
            raise InvalidRequest(f"n: only 1 choice per request is supported, got {req.n}", "n")
        ref, name, router = self._model(req.model)
        merge = None
        if req.merge is not None and req.route is not None:
            raise InvalidRequest("route: give one of merge or route, not both", "route")
        asked = "merge" if req.merge is not None else "route" if req.route is not None else None
        if asked is not None and (ref is not None or router is not None):
            raise InvalidRequest(
                f"model: with {asked}, model names the base ('base' or {self.backbone.name!r}), not the adapter "
                f"{name!r}; list the adapters in {asked}.adapters",
                "model",
            )
        if req.merge is not None:
            merge = self.resolver.merge_inputs(req.merge)
        elif req.route is not None:
            spec = req.route if isinstance(req.route, RouteSpec) else RouteSpec(method=req.route)
            if spec.method != "arrow":
                raise InvalidRequest(
                    f"route: {spec.method!r} picks adapters by label scores or by the task description "
                    "(classification); generation routes with 'arrow' (per token)",
                    "route",
                )
            router, candidates = self.resolver.route(spec, 1)
            name = f"route:arrow({','.join(r.name for r in candidates)})"
        if chat:
            ids = self._chat_ids(req)  # type: ignore[arg-type]
        else:
            if len(req.prompt) > self.limits.max_text_chars:  # type: ignore[union-attr]
                raise TooLarge(
                    f"prompt: {len(req.prompt)} characters, more than the limit of {self.limits.max_text_chars}",  # type: ignore[union-attr]
                    "prompt",
                )
            with self.resolver.tokenizing:
                ids = tuple(self.tokenizer(req.prompt)["input_ids"])  # type: ignore[union-attr]
            if not ids:
                raise InvalidRequest("prompt: empty; give at least one token of text", "prompt")
        sampling = self._sampling(req, len(ids), "messages" if chat else "prompt")
        include = bool(req.stream_options and req.stream_options.include_usage)
        if req.stream_options is not None and not req.stream:
            raise InvalidRequest("stream_options: only with stream: true", "stream_options")
        if merge is not None:
            ref = self.resolver.merge(merge)  # computed (or found ready) only once the request is known to be valid
            name = ref.name
        return Prompt(ids, ref, sampling, name, chat, req.stream, include, router)

    def _model(self, model: str) -> tuple[AdapterRef | None, str, Router | None]:
        if model in (*BASE_NAMES, self.backbone.name):
            return None, self.backbone.name, None
        record = self.resolver.record(model, "model")  # 404 with the closest name when unknown
        router = self.resolver.stored_router(record)
        if router is None:
            return self.resolver.ref(record, "model"), record.name, None
        if not hasattr(router, "applied"):
            raise InvalidRequest(
                f"model: {record.name!r} is routed by {router.name!r} over label scores (classification only); "
                "it cannot generate",
                "model",
            )
        return None, record.name, router

    def _chat_ids(self, req: ChatRequest) -> tuple[int, ...]:
        if len(req.messages) > self.limits.max_texts:
            raise TooLarge(
                f"messages: {len(req.messages)} messages, more than the limit of {self.limits.max_texts}", "messages"
            )
        for i, message in enumerate(req.messages):
            if len(message.content) > self.limits.max_text_chars:
                raise TooLarge(
                    f"messages[{i}].content: {len(message.content)} characters, more than the limit of "
                    f"{self.limits.max_text_chars}",
                    f"messages[{i}].content",
                )
        if not any(m.role == "user" for m in req.messages):
            raise InvalidRequest("messages: no user turn; give at least one message with role 'user'", "messages")
        messages = [{"role": m.role, "content": m.content} for m in req.messages]
        with self.resolver.tokenizing:
            try:
                text = prompt_text(self.tokenizer, messages)
            except Exception as err:  # noqa: BLE001 - a template may refuse an order of roles (raise_exception)
                raise InvalidRequest(f"messages: the model's chat template refused them ({err})", "messages") from None
            return tuple(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _sampling(self, req: ChatRequest | CompletionRequest, prompt_tokens: int, prompt_field: str) -> Sampling:
        room = self.context - prompt_tokens
        if room <= 0:
            raise InvalidRequest(
                f"{prompt_field}: {prompt_tokens} tokens, which fills the model's context of {self.context} tokens "
                "and leaves no room for an answer; send a shorter prompt",
                prompt_field,
            )
        field, max_tokens = "max_tokens", req.max_tokens
        if isinstance(req, ChatRequest) and req.max_completion_tokens is not None:
            if req.max_tokens is not None and req.max_tokens != req.max_completion_tokens:
                raise InvalidRequest(
                    "max_completion_tokens: differs from max_tokens; give one of them", "max_completion_tokens"
                )
            field, max_tokens = "max_completion_tokens", req.max_completion_tokens
        if max_tokens is None:
            max_tokens = min(room, self.limits.max_new_tokens)
        elif max_tokens <= 0:
            raise InvalidRequest(f"{field}: must be a positive number of tokens, got {max_tokens}", field)
        elif max_tokens > room:
            raise InvalidRequest(
                f"{field}: {max_tokens} tokens do not fit: the model's context is {self.context} tokens and the "
                f"prompt takes {prompt_tokens}, leaving {room}",
                field,
            )
        elif max_tokens > self.limits.max_new_tokens:
            raise InvalidRequest(
                f"{field}: {max_tokens} tokens, more than this server's limit of {self.limits.max_new_tokens}", field
            )
        if not is_finite_number(req.temperature) or req.temperature < 0:
            raise InvalidRequest(f"temperature: must be a finite number >= 0, got {req.temperature!r}", "temperature")
        if not is_finite_number(req.top_p) or not 0 < req.top_p <= 1:
            raise InvalidRequest(f"top_p: must be a number in (0, 1], got {req.top_p!r}", "top_p")
        if not 0 <= req.min_tokens <= max_tokens:
            raise InvalidRequest(
                f"min_tokens: must be between 0 and {field} ({max_tokens}), got {req.min_tokens}", "min_tokens"
            )
        stops = _stops(req.stop)
        return Sampling(max_tokens, float(req.temperature), float(req.top_p), req.seed, stops, req.min_tokens)


def _stops(stop: str | list[str] | None) -> tuple[str, ...]:
    stops = [] if stop is None else [stop] if isinstance(stop, str) else list(stop)
    if len(stops) > MAX_STOPS:
        raise InvalidRequest(f"stop: at most {MAX_STOPS} stop strings, got {len(stops)}", "stop")
    for i, s in enumerate(stops):
        if not s:
            raise InvalidRequest(f"stop[{i}]: an empty stop string would end every answer at once", "stop")
    return tuple(stops)


# ---------------------------------------------------------------------------------------------- responses


def usage(done: Finished) -> dict[str, int]:
    return {
        "prompt_tokens": done.prompt_tokens,
        "completion_tokens": done.completion_tokens,
        "total_tokens": done.prompt_tokens + done.completion_tokens,
    }


class Reply:
    """Shapes one request's answer: whole (:meth:`whole`) or as server-sent event chunks (:meth:`chunk`)."""

    def __init__(self, prompt: Prompt) -> None:
        self.prompt = prompt
        self.id = ("chatcmpl-" if prompt.chat else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.object = "chat.completion" if prompt.chat else "text_completion"

    def _head(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.prompt.model}

    def whole(self, done: Finished) -> dict[str, Any]:
        if self.prompt.chat:
            choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": done.text}}
        else:
            choice = {"index": 0, "text": done.text}
        choice.update(logprobs=None, finish_reason=done.finish_reason)
        return {**self._head(self.object), "choices": [choice], "usage": usage(done)}

    def chunk(self, text: str | None, finish_reason: str | None = None, role: bool = False) -> str:
        """One SSE event: a piece of text, the role (chat's first chunk) or the finish reason."""
        if self.prompt.chat:
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
            if text is not None:
                delta["content"] = text
            choice: dict[str, Any] = {"index": 0, "delta": delta}
            obj = "chat.completion.chunk"
        else:
            choice, obj = {"index": 0, "text": text or ""}, "text_completion"
        choice.update(logprobs=None, finish_reason=finish_reason)
        body = {**self._head(obj), "choices": [choice]}
        if self.prompt.include_usage:
            body["usage"] = None
        return event(body)

    def usage_chunk(self, done: Finished) -> str:
        obj = "chat.completion.chunk" if self.prompt.chat else "text_completion"
        return event({**self._head(obj), "choices": [], "usage": usage(done)})


def event(body: dict[str, Any] | str) -> str:
    data = body if isinstance(body, str) else json.dumps(body, ensure_ascii=False)
    return f"data: {data}\n\n"


DONE = event("[DONE]")
