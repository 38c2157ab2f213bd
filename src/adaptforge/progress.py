"""Progress of long steps (a search, a training loop, a generator's fit, a pruning pass): done/total, rate and
ETA, reported as records of the ``adaptforge.progress`` logger so that method code needs no callback argument.

Every step emits a DEBUG record carrying its :class:`Steps`; the command line installs a handler that prints
one line per step or per N seconds (``adaptforge --progress-every N``), so a phase longer than a few seconds
is never silent on a pipe, and a library user sees the same lines by enabling that logger.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from types import TracebackType

log = logging.getLogger("adaptforge.progress")


def progress_line(description: str, done: int, total: int | None, rate: float, info: str = "") -> str:
    """``description: done/total  rate/s  ETA Ns  info`` (the one format of every progress line; ``rate`` in
    units per second)."""
    parts = [f"{description}: {done}/{total if total else '?'}", f"{rate:.2f}/s"]
    if total and rate > 0:
        parts.append(f"ETA {max(total - done, 0) / rate:.0f}s")
    return "  ".join(parts + ([info] if info else []))


class Steps:
    """A counter of a long step's units of work; ``with Steps("lorahub search", total=40) as s: ... s.advance()``.
    ``info`` carries the current loss or similar. Closing marks the step final (the last line is printed)."""

    def __init__(self, description: str, total: int | None, done: int = 0) -> None:
        self.description, self.total = description, total
        self.done, self.first, self.info, self.final = done, done, "", False
        self.start = time.monotonic()

    def advance(self, n: int = 1, info: str = "") -> None:
        self.update(self.done + n, info)

    def update(self, done: int, info: str = "") -> None:
        self.done, self.info = done, info or self.info
        self.final = self.total is not None and done >= self.total
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s", self.line(), extra={"steps": self})

    def line(self) -> str:
        """Rate and ETA over the units done in this process (a resumed run does not count its earlier steps)."""
        rate = (self.done - self.first) / max(time.monotonic() - self.start, 1e-9)
        return progress_line(self.description, self.done, self.total, rate, self.info)

    def close(self) -> None:
        if not self.final:
            self.final = True
            if log.isEnabledFor(logging.DEBUG):
                log.debug("%s", self.line(), extra={"steps": self})

    def __enter__(self) -> Steps:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        if kind is None:
            self.close()


class ThrottledProgress(logging.Handler):
    """Prints a :class:`Steps` line through ``emit`` when ``every`` seconds have passed since that step's last
    line (or its start), and its final line when any earlier one was printed: short steps stay quiet."""

    def __init__(self, sink: Callable[[str], None], every: float) -> None:
        super().__init__(logging.DEBUG)
        self.sink, self.every = sink, every
        self.last: dict[int, float] = {}

    def emit(self, record: logging.LogRecord) -> None:
        steps = getattr(record, "steps", None)
        if not isinstance(steps, Steps):
            self.sink(record.getMessage())
            return
        key, now = id(steps), time.monotonic()
        due = now - self.last.get(key, steps.start) >= self.every
        if due or (steps.final and key in self.last):
            self.last[key] = now
            self.sink(record.getMessage())
        if steps.final:
            self.last.pop(key, None)
