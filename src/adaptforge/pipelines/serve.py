"""``adaptforge serve``: a library and options in, a running HTTP server out.

:func:`build_service` checks the options against the library (pinned adapters exist) before loading the base
model (the one :func:`~adaptforge.pipelines.common.load_base` rule), then builds the
:class:`~adaptforge.serve.Service`. :func:`serve_library` runs it in the foreground until SIGINT/SIGTERM and
then drains: uvicorn stops accepting, answers the requests in flight, and the worker finishes what was queued.
:func:`start_in_thread` runs one on a background thread (tests, benchmarks); the socket is bound first, so
``port=0`` gives a free port that is known before the first request.
"""

from __future__ import annotations

import ipaddress
import logging
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING

from adaptforge.backbone import Backbone
from adaptforge.core import AdaptforgeError
from adaptforge.library import Library
from adaptforge.pipelines.common import Notify, load_base, reporter
from adaptforge.serve import ServeConfig, ServeLimits, Service, create_app
from adaptforge.serve.app import access_log

if TYPE_CHECKING:
    import uvicorn


def build_service(
    library: Library,
    config: ServeConfig,
    limits: ServeLimits | None = None,
    *,
    model: str | None = None,
    backbone: Backbone | None = None,
    notify: Notify | None = None,
) -> Service:
    """The service over ``library`` (not started). Pinned names are checked before the model loads."""
    for name in config.pins:
        library.get(name)  # unknown -> LibraryError with the closest names
    backbone = load_base(model, library=library, backbone=backbone, notify=notify)
    return Service(library, backbone, config, limits)


def bind(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket on ``host:port`` (``port=0``: a free one; read it from ``getsockname``)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except OSError as err:
        raise AdaptforgeError(f"--host {host!r}: not an address this machine can listen on ({err})") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as err:
        sock.close()
        raise AdaptforgeError(
            f"cannot listen on {host}:{port} ({err.strerror}); choose another --port or --host"
        ) from None
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _server(service: Service, log_level: str) -> uvicorn.Server:
    import uvicorn

    # uvicorn's own access log is off: ours (adaptforge.serve.access) also names the adapter and the latency
    config = uvicorn.Config(
        create_app(service), log_level=log_level, lifespan="on", timeout_keep_alive=5, access_log=False
    )
    return uvicorn.Server(config)


@dataclass
class RunningServer:
    """A server on a background thread; :meth:`stop` (or leaving the ``with`` block) shuts it down cleanly."""

    service: Service
    url: str
    server: uvicorn.Server
    thread: threading.Thread
    sock: socket.socket = field(repr=False)

    def stop(self, timeout: float = 30.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        self.service.stop(timeout)
        self.sock.close()

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def start_in_thread(
    service: Service, host: str | None = None, port: int | None = None, log_level: str = "warning"
) -> RunningServer:
    """Start ``service`` and its HTTP server on a daemon thread; returns once it accepts connections."""
    sock = bind(host or service.config.host, service.config.port if port is None else port)
    service.start()
    server = _server(service, log_level)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="adaptforge-http", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            service.stop()
            sock.close()
            raise RuntimeError("the HTTP server did not start; see the log")
        time.sleep(0.01)
    return RunningServer(service, url_of(sock), server, thread, sock)


def serve_library(
    library: Library,
    config: ServeConfig,
    limits: ServeLimits | None = None,
    *,
    model: str | None = None,
    notify: Notify | None = None,
    log_level: str = "warning",
) -> None:
    """Serve ``library`` in the foreground until SIGINT or SIGTERM, then shut down cleanly (see module docstring)."""
    say = reporter(notify)
    if config.threads is not None:
        import torch

        torch.set_num_threads(config.threads)
    sock = bind(config.host, config.port)  # a taken port is refused before the model loads
    service: Service | None = None
    access = access_to_stderr() if config.access_log else None
    try:
        service = build_service(library, config, limits, model=model, notify=say)
        service.start()
        server = _server(service, log_level)
        n = len(library.list(base_fingerprint=service.backbone.fingerprint))
        say(f"serving {n} adapter(s) on {service.backbone.name} at {url_of(sock)} (Ctrl-C to stop)")
        if config.api_key is None and not is_loopback(config.host):
            say(f"warning: listening on {config.host} without --api-key: anyone who can reach it can use it")
        # uvicorn re-raises the signal that stopped it once it has drained; answer that one with nothing so
        # a requested shutdown ends the process normally (exit code 0) instead of by the signal.
        previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            server.run(sockets=[sock])
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    finally:
        if service is not None:
            service.stop()
        sock.close()
        if access is not None:  # the logger as it was: a server in the same process later logs nothing
            access_log.removeHandler(access)
            access_log.setLevel(logging.NOTSET)
            access_log.propagate = True
    say("stopped")


def access_to_stderr() -> logging.Handler:
    """The access log's lines, as they are, on stderr (whatever the CLI's log level), not passed on to the root
    logger's handlers."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    access_log.addHandler(handler)
    access_log.setLevel(logging.INFO)
    access_log.propagate = False
    return handler
