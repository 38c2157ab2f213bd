"""Typed settings of ``adaptforge serve``: the server (where it listens, what it keeps loaded, how it batches)
and its limits (what one request may ask for, how much work may wait). Both are :class:`~adaptforge.params.Params`,
so a bad value is refused at start with the field's name and range, never discovered under load."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from adaptforge.params import Params, param


@dataclass(frozen=True)
class ServeConfig(Params):
    """Where the server listens, which adapters stay in memory and how requests are batched."""

    label = "serve"

    host: str = param("127.0.0.1", help="interface to bind; loopback unless told otherwise")
    port: int = param(8000, ge=0, le=65535, help="TCP port (0: any free port)")
    max_loaded: int = param(32, ge=1, help="adapters and request-time merges kept in memory (least recently used go)")
    pins: tuple[str, ...] = param((), help="adapters loaded at start and never evicted")
    max_batch: int = param(32, ge=1, help="texts per forward pass (rows of a mixed-adapter batch)")
    max_wait_ms: float = param(5.0, ge=0, le=10_000, help="how long a batch's first request waits for company")
    # repr=False: the key must never reach a log line through the config's repr
    api_key: str | None = dataclasses.field(
        default=None, repr=False, metadata={"help": "required on every call (Authorization: Bearer KEY or X-API-Key)"}
    )
    threads: int | None = param(None, ge=1, help="torch intra-op threads (default: torch's own choice)")
    access_log: bool = param(
        True, help="one line per request on stderr: time, client, method and path, adapter or model, status, latency"
    )

    def check(self) -> None:
        self.require("api_key", self.api_key is None or bool(self.api_key.strip()), "a non-empty string or null")
        self.require("host", bool(self.host.strip()), "a host name or address")
        self.require(
            "pins",
            len(self.pins) <= self.max_loaded,
            f"at most max_loaded ({self.max_loaded}) adapters (pinned adapters are never evicted)",
        )
        self.require("pins", len(set(self.pins)) == len(self.pins), "a list of distinct adapter names")


@dataclass(frozen=True)
class ServeLimits(Params):
    """What one request may ask for and how much work may wait; beyond these the server answers 413 or
    429 instead of growing its memory."""

    label = "serve limits"

    max_texts: int = param(256, ge=1, help="texts per request (more: 413)")
    max_text_chars: int = param(20_000, ge=1, help="characters per text (more: 413)")
    max_body_bytes: int = param(1_048_576, ge=1024, help="request body size in bytes (more: 413)")
    max_labels: int = param(256, ge=2, help="labels per request (more: 413)")
    max_queue: int = param(1024, ge=1, help="texts waiting for the model; a request that does not fit gets 429")
    max_merge_adapters: int = param(16, ge=1, help="adapters in one request-time merge")
    max_route_adapters: int = param(16, ge=1, help="adapters one request-time router mixes")
    max_cached_merges: int = param(16, ge=1, help="request-time merges (and routers) kept ready")
    request_timeout_s: float = param(
        60.0, gt=0, help="a request waiting longer for the model (or for its first token) gets 503"
    )
    max_new_tokens: int = param(
        1024, ge=1, help="tokens one chat or completion may generate (the default max_tokens when the context allows)"
    )

    def check(self) -> None:
        self.require(
            "max_queue", self.max_queue >= self.max_texts, f">= max_texts ({self.max_texts}) so any valid request fits"
        )
