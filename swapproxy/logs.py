"""Bounded log buffers: one per model, one for swapproxy itself, and live subscribers.

Upstream output is captured line by line into a :class:`LogBuffer` (a ring of
the last ``maxlen`` lines). Readers either take a snapshot (``tail``) — used in
start-failure errors and ``GET /logs`` — or subscribe to new lines as they
arrive. A slow subscriber never slows a producer: its queue is bounded and a
full queue drops the line for that subscriber only.

swapproxy's own log records reach the ``proxy`` buffer through
:class:`BufferHandler`, a :mod:`logging` handler the app installs on the
``swapproxy`` logger while it runs (records below the configured level never
get that far).
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["LogBuffer", "BufferHandler"]


class LogBuffer:
    """A ring buffer of text lines with optional live subscribers."""

    def __init__(self, name: str, maxlen: int = 1000) -> None:
        self.name = name
        self._lines: collections.deque[str] = collections.deque(maxlen=maxlen)
        self._subscribers: set[asyncio.Queue[str]] = set()

    def append(self, line: str) -> None:
        """Record one line (without its newline) and hand it to subscribers."""
        self._lines.append(line)
        for queue in self._subscribers:
            if queue.full():
                continue  # a stalled reader loses lines, the producer never waits
            queue.put_nowait(line)

    def tail(self, n: int | None = None) -> list[str]:
        """The last ``n`` lines (all buffered lines when ``n`` is None)."""
        if n is None or n >= len(self._lines):
            return list(self._lines)
        return list(self._lines)[-n:] if n > 0 else []

    def clear(self) -> None:
        self._lines.clear()

    @contextmanager
    def subscribe(self, maxsize: int = 1000) -> Iterator[asyncio.Queue[str]]:
        """A queue that receives every line appended while the context is open."""
        queue: asyncio.Queue[str] = asyncio.Queue(maxsize=maxsize)
        self._subscribers.add(queue)
        try:
            yield queue
        finally:
            self._subscribers.discard(queue)

    def __len__(self) -> int:
        return len(self._lines)


class BufferHandler(logging.Handler):
    """A logging handler that appends each formatted line to buffers and calls ``on_line``."""

    def __init__(self, *buffers: LogBuffer, on_line: Callable[[str], None] | None = None) -> None:
        super().__init__()
        self.buffers = buffers
        self.on_line = on_line
        self.setFormatter(logging.Formatter("%(asctime)s.%(msecs)03d %(levelname)s %(name)s: %(message)s",
                                            datefmt="%H:%M:%S"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
        except Exception:  # a bad %-format must not break the caller
            self.handleError(record)
            return
        for line in text.splitlines() or [""]:  # a traceback becomes several lines
            for buffer in self.buffers:
                buffer.append(line)
            if self.on_line is not None:
                self.on_line(line)
