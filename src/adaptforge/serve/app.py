"""The HTTP face of :class:`~adaptforge.serve.service.Service` (FastAPI on uvicorn).

Routes: ``POST /v1/classify``, ``POST /v1/embeddings``, ``POST /v1/chat/completions``, ``POST /v1/completions``
(OpenAI's bodies; the last two for a causal base, see :mod:`adaptforge.serve.chat`), ``GET /v1/models``,
``GET /health``, ``GET /metrics`` (Prometheus text), ``GET /docs`` (the reference page, self-contained: see
:mod:`adaptforge.serve.docs`). Every error is JSON ``{"error": {"type", "message", "field"}}``
with the status the caller can act on: 422 for a body that asks for something impossible (naming the field), 404
for an unknown adapter, task or route, 413 for too much, 429/503 when the server cannot take more, 401 without the
API key. Only a fault of the server itself is a 500, and no request can stop it: the model runs on its own worker
thread.

:class:`Guard` checks the API key and the body size before any route runs (the body is read at most up to the
limit, so a huge upload costs nothing) and records every request's status and latency; with the access log on
(``ServeConfig.access_log``), one line per request on the ``adaptforge.serve.access`` logger: time, client,
method and path, the adapter or model the body names, status and latency (:func:`access_line`).
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from adaptforge.core import AdaptforgeError, did_you_mean
from adaptforge.library import CorruptAdapterError
from adaptforge.serve.docs import CONTENT_SECURITY_POLICY, docs_page
from adaptforge.serve.errors import NotFound, ServeError, TooLarge, Unauthorized
from adaptforge.serve.schema import FIELDS, ChatRequest, ClassifyRequest, CompletionRequest, EmbeddingsRequest
from adaptforge.serve.service import Service

log = logging.getLogger(__name__)
access_log = logging.getLogger("adaptforge.serve.access")

ROUTES = (
    "/v1/classify",
    "/v1/embeddings",
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/models",
    "/health",
    "/metrics",
    "/docs",
)
BODIES = {"/v1/embeddings": "embeddings", "/v1/chat/completions": "chat", "/v1/completions": "completions"}


def error_body(
    kind: str, message: str, field: str | None = None, problems: list[dict[str, str]] | None = None
) -> dict[str, Any]:
    """The one error shape: ``{"error": {"type", "message", "field"}}`` (``problems``: every field at fault)."""
    body: dict[str, Any] = {"type": kind, "message": message, "field": field}
    if problems is not None:
        body["problems"] = problems
    return {"error": body}


MAX_NAME_CHARS = 64  # of an adapter or model name in an access line


def _name(value: object) -> str:
    """A name from a request body, safe for one log line: printable, no spaces, at most MAX_NAME_CHARS."""
    text = "".join(c if c.isprintable() and not c.isspace() else "?" for c in str(value))
    return text if len(text) <= MAX_NAME_CHARS else text[: MAX_NAME_CHARS - 3] + "..."


def requested(body: bytes) -> str:
    """What a request body asks to run, for the access log: ``model=NAME`` (OpenAI bodies), ``adapter=NAME``,
    ``adapters=A,B`` (one per text), ``merge=A+B`` or ``route=NAME``; ``-`` when it names none. Never its texts."""
    if not body.lstrip().startswith(b"{"):
        return "-"
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return "-"
    if not isinstance(data, dict):
        return "-"
    for key in ("model", "adapter"):
        if isinstance(data.get(key), str):
            return f"{key}={_name(data[key])}"
    names = data.get("adapters")
    if isinstance(names, list):
        distinct = list(dict.fromkeys("base" if n is None else _name(n) for n in names))
        more = f",+{len(distinct) - 3}" if len(distinct) > 3 else ""
        return "adapters=" + ",".join(distinct[:3]) + more
    merge = data.get("merge")
    if isinstance(merge, dict) and isinstance(merge.get("adapters"), list):
        return (
            "merge="
            + "+".join(_name(n) for n in merge["adapters"][:4])
            + ("+..." if len(merge["adapters"]) > 4 else "")
        )
    route = data.get("route")
    if route is not None:
        method = route.get("method", "spec") if isinstance(route, dict) else route
        return f"route={_name(method)}"
    return "-"


def access_line(scope: Scope, status: int, seconds: float, what: str) -> str:
    """One access-log line: UTC time, client, method and path, what ran, status, latency in ms."""
    client = scope.get("client")
    who = f"{client[0]}:{client[1]}" if client else "-"
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    path = _name(scope.get("path", ""))
    return f'{stamp} {who} "{scope.get("method", "-")} {path}" {status} {what} {seconds * 1000:.1f}ms'


def _error_response(err: ServeError) -> JSONResponse:
    return JSONResponse(error_body(err.kind, str(err), err.field), status_code=err.status, headers=err.headers)


class Guard:
    """ASGI middleware: API key, body size, request metrics (see the module docstring)."""

    def __init__(self, app: ASGIApp, service: Service) -> None:
        self.app = app
        self.service = service
        key = service.config.api_key
        self._key = key.encode() if key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        route = scope["path"] if scope["path"] in ROUTES else "other"
        status = 500
        body: bytes | None = b""

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            headers = {k.decode("latin-1").lower(): v for k, v in scope.get("headers", [])}
            refusal = self._authorize(headers)
            if refusal is None:
                body, refusal = await self._read_body(headers, receive)
            if body is None:  # the client went away before sending its body: nobody to answer
                status = 499
            elif refusal is not None:
                await _error_response(refusal)(scope, receive, recording_send)
            else:
                await self.app(scope, _replay(body, receive), recording_send)
        finally:
            seconds = time.perf_counter() - start
            metrics = self.service.metrics
            metrics.inc("adaptforge_requests_total", labels={"route": route, "status": str(status)})
            metrics.observe("adaptforge_request_seconds", seconds, {"route": route})
            if self.service.config.access_log and access_log.isEnabledFor(logging.INFO):
                what = requested(body) if body else "-"  # a refused key's body is never read
                access_log.info("%s", access_line(scope, status, seconds, what))

    def _authorize(self, headers: dict[str, bytes]) -> ServeError | None:
        if self._key is None:
            return None
        given = headers.get("x-api-key")
        auth = headers.get("authorization", b"")
        if given is None and auth[:7].lower() == b"bearer ":
            given = auth[7:].strip()
        if given is not None and hmac.compare_digest(given, self._key):
            return None
        what = "a wrong API key" if given is not None else "no API key"
        return Unauthorized(
            f"this server needs an API key and the request has {what}; "
            "send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'",
            "authorization",
            headers={"WWW-Authenticate": "Bearer"},
        )

    async def _read_body(self, headers: dict[str, bytes], receive: Receive) -> tuple[bytes | None, ServeError | None]:
        limit = self.service.limits.max_body_bytes
        too_large = TooLarge(f"body: more than the limit of {limit} bytes", "body")
        declared = headers.get("content-length")
        if declared is not None:
            try:
                if int(declared) > limit:
                    return b"", too_large
            except ValueError:
                return b"", ServeError("content-length: not a number", "content-length")
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return None, None  # http.disconnect
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return b"", too_large
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks), None


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _field(loc: tuple[Any, ...], kind: str) -> str:
    """``('body', 'merge', 'adapters', 1)`` -> ``merge.adapters[1]``; union branch tags ('str', 'RouteSpec') dropped."""
    known = {name for names in FIELDS.values() for name in names}
    parts = [p for p in loc if p != "body"]
    out = ""
    for i, part in enumerate(parts):
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in known or (kind == "extra_forbidden" and i == len(parts) - 1):
            out += ("." if out else "") + str(part)
    return out or "body"


MAX_PROBLEMS = 20  # fields listed in one 422; a body with 60,000 unknown keys gets these and a count


def _validation_response(request: Request, exc: RequestValidationError) -> JSONResponse:
    problems = []
    errors = exc.errors()
    for error in errors[:MAX_PROBLEMS]:
        kind = str(error.get("type", ""))
        field = _field(tuple(error.get("loc", ())), kind)
        if kind == "json_invalid":
            detail = (error.get("ctx") or {}).get("error", "")
            field, message = "body", f"body: not valid JSON ({detail})" if detail else "body: not valid JSON"
        elif kind == "missing":
            message = f"{field}: required field is missing"
        elif kind == "extra_forbidden":
            owner = field.split(".")[0].split("[")[0] if "." in field else BODIES.get(request.url.path, "classify")
            name = field.rsplit(".", 1)[-1]
            known = FIELDS.get(owner, FIELDS["classify"])
            message = f"{field}: unknown field; known: {', '.join(known)}.{did_you_mean(name, known)}"
        elif field == "body":
            message = f"body: expected a JSON object (Content-Type: application/json); {error.get('msg', '')}"
        else:
            message = f"{field}: {str(error.get('msg', 'invalid value')).removeprefix('Value error, ')}"
        problems.append({"field": field, "message": message})
    first = problems[0] if problems else {"field": "body", "message": "body: invalid request"}
    body = error_body("invalid_request", first["message"], first["field"], problems=problems)
    if len(errors) > MAX_PROBLEMS:
        body["error"]["problems_not_listed"] = len(errors) - MAX_PROBLEMS
    return JSONResponse(body, status_code=422)


def create_app(service: Service) -> FastAPI:
    """The FastAPI app over ``service`` (already started); stopping the app stops the service."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        service.stop()

    # FastAPI's /docs and /redoc load scripts from a CDN and are blank offline: off; /docs is our own page below.
    app = FastAPI(
        title="adaptforge",
        summary="Many LoRA adapters behind one model.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.add_middleware(Guard, service=service)

    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_response(request, exc)

    @app.exception_handler(ServeError)
    async def on_serve_error(request: Request, exc: ServeError) -> JSONResponse:
        return _error_response(exc)

    @app.exception_handler(AdaptforgeError)
    async def on_adaptforge_error(request: Request, exc: AdaptforgeError) -> JSONResponse:
        if isinstance(exc, CorruptAdapterError):  # the library's fault, not the caller's
            log.error("%s", exc)  # the server's log keeps the paths; the client learns which adapter, not where
            message = str(exc).replace(str(service.library.root), "<library>")
            return JSONResponse(error_body("corrupt_adapter", message), status_code=500)
        return JSONResponse(error_body("invalid_request", str(exc)), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            err: ServeError = NotFound(
                f"no route {request.method} {request.url.path}; routes: {', '.join(ROUTES)}", "path"
            )
            return _error_response(err)
        if exc.status_code == 400:  # FastAPI could not decode the body (not UTF-8, ...): a malformed body
            return JSONResponse(error_body("invalid_request", f"body: not valid JSON ({exc.detail})", "body"), 422)
        kind = "method_not_allowed" if exc.status_code == 405 else "http_error"
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return JSONResponse(error_body(kind, message), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def on_crash(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return JSONResponse(error_body("internal", f"internal error ({type(exc).__name__}); see the server log"), 500)

    @app.post("/v1/classify")
    async def classify(body: ClassifyRequest) -> JSONResponse:
        """Classify texts with an adapter, one adapter per text, a request-time merge, or routing."""
        return JSONResponse(await service.classify(body))

    @app.post("/v1/embeddings")
    async def embeddings(body: EmbeddingsRequest) -> JSONResponse:
        """OpenAI-compatible embeddings; ``model`` is an adapter name or the base model."""
        return JSONResponse(await service.embeddings(body))

    async def generation(body: ChatRequest | CompletionRequest, request: Request) -> Response:
        answer = await service.generate(body, request.is_disconnected)
        if isinstance(answer, dict):
            return JSONResponse(answer)
        return StreamingResponse(answer, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request) -> Response:
        """OpenAI-compatible chat; ``model`` is an adapter name or the base model; ``stream`` sends SSE chunks."""
        return await generation(body, request)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Response:
        """OpenAI-compatible completions of a prompt; ``model`` is an adapter name or the base model."""
        return await generation(body, request)

    @app.get("/v1/models")
    def models() -> JSONResponse:
        """The base model and the library's adapters for it (kind, parents, loaded, pinned)."""
        return JSONResponse(service.models())

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        """This API's reference page, built from its OpenAPI schema: no script, nothing fetched."""
        return HTMLResponse(docs_page(app.openapi()), headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY})

    @app.get("/health")
    def health() -> JSONResponse:
        """Whether the model worker runs (503 while stopping), the model, the queue and the adapters loaded."""
        up, body = service.health()
        return JSONResponse(body, status_code=200 if up else 503)

    @app.get("/metrics")
    def metrics() -> PlainTextResponse:
        """Request counts and latencies, batches, cache and queue, as Prometheus text."""
        return PlainTextResponse(service.metrics_text(), media_type="text/plain; version=0.0.4")

    return app


__all__ = ["Guard", "create_app", "error_body"]
