"""Errors a caller causes, each with its HTTP status. They are :class:`~adaptforge.core.AdaptforgeError`\\ s
like every other bad input in adaptforge, so the same message reads well on the command line and in a JSON
body; ``field`` names the part of the request to fix."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from adaptforge.core import AdaptforgeError


class ServeError(AdaptforgeError):
    """A request the server refuses; ``status`` is the HTTP code, ``kind`` the error type in the body."""

    status: ClassVar[int] = 422
    kind: ClassVar[str] = "invalid_request"

    def __init__(self, message: str, field: str | None = None, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.headers = dict(headers or {})


class InvalidRequest(ServeError):
    """The body is well-formed JSON but asks for something impossible (422)."""


class NotFound(ServeError):
    """An adapter, task or path the server does not know (404)."""

    status = 404
    kind = "not_found"


class TooLarge(ServeError):
    """Too many texts, too long a text or too large a body (413)."""

    status = 413
    kind = "too_large"


class Busy(ServeError):
    """The queue is full: retry later (429) rather than let memory grow."""

    status = 429
    kind = "busy"


class Unavailable(ServeError):
    """Shutting down, or the model did not answer in time (503)."""

    status = 503
    kind = "unavailable"


class Unauthorized(ServeError):
    """Missing or wrong API key (401)."""

    status = 401
    kind = "unauthorized"


class ClientGone(ServeError):
    """The client closed the connection before its answer was ready (499, nginx's code; nobody reads it)."""

    status = 499
    kind = "client_closed_request"
