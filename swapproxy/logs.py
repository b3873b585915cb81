"""Bounded log buffers: one per model, one for swapproxy itself, and live subscribers.

Upstream output is captured line by line into a :class:`LogBuffer`, a ring of the
last lines bounded both in lines (``maxlen``) and in characters (``maxbytes``: an
upstream printing 64 KiB lines must not fill memory, nor make ``GET /logs`` huge).
Readers either take a snapshot (``tail``, optionally bounded in characters too) — used
in start-failure errors, ``GET /logs`` and event snapshots — or subscribe to new lines
as they arrive. A slow subscriber never slows a producer: its queue
(:class:`SizedQueue`) is bounded in items and characters, and a line that does not fit
is dropped for that subscriber only (the streaming routes then drop a client that has
stopped reading altogether; see :mod:`swapproxy.web.streams`).

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
from typing import Generic, TypeVar

__all__ = ["LogBuffer", "BufferHandler", "SizedQueue", "MAX_BUFFER_BYTES", "MAX_QUEUE_BYTES"]

T = TypeVar("T")

#: Characters of text a buffer keeps by default (about bytes: log text is mostly ASCII).
MAX_BUFFER_BYTES = 1 << 20
#: Characters a subscriber's queue holds by default before lines are dropped for it.
MAX_QUEUE_BYTES = 1 << 20


class SizedQueue(asyncio.Queue[T], Generic[T]):
    """An :class:`asyncio.Queue` bounded in items (``maxsize``) and in the total ``size`` of its items."""

    def __init__(self, maxsize: int, maxbytes: int, size: Callable[[T], int]) -> None:
        super().__init__(maxsize)
        self.maxbytes = maxbytes
        self.bytes = 0
        self._size = size

    def fits(self, item: T) -> bool:
        """Whether ``item`` may go in now without passing either bound."""
        return not self.full() and self.bytes + self._size(item) <= self.maxbytes

    def _put(self, item: T) -> None:  # asyncio.Queue's hook for subclasses
        self.bytes += self._size(item)
        super()._put(item)  # type: ignore[misc]

    def _get(self) -> T:
        item: T = super()._get()  # type: ignore[misc]
        self.bytes -= self._size(item)
        return item


class LogBuffer:
    """A ring buffer of text lines, bounded in lines and characters, with optional live subscribers."""

    def __init__(self, name: str, maxlen: int = 1000, maxbytes: int = MAX_BUFFER_BYTES) -> None:
        self.name = name
        self.maxlen = maxlen
        self.maxbytes = maxbytes
        self._lines: collections.deque[str] = collections.deque()
        self._bytes = 0
        self._subscribers: set[SizedQueue[str]] = set()

    def append(self, line: str) -> None:
        """Record one line (without its newline) and hand it to subscribers."""
        lines = self._lines
        lines.append(line)
        self._bytes += len(line)
        while len(lines) > 1 and (len(lines) > self.maxlen or self._bytes > self.maxbytes):
            self._bytes -= len(lines.popleft())  # the oldest go; the newest line always stays
        for queue in self._subscribers:
            if queue.fits(line):  # a stalled reader loses lines, the producer never waits
                queue.put_nowait(line)

    def tail(self, n: int | None = None, max_bytes: int | None = None) -> list[str]:
        """The last ``n`` lines (all when None), fewer if they would pass ``max_bytes`` characters."""
        lines = self._lines
        if n is None or n >= len(lines):
            n = len(lines)
        if n <= 0:
            return []
        if max_bytes is None or self._bytes <= max_bytes:
            return list(lines)[-n:]
        out: list[str] = []
        total = 0
        for line in reversed(lines):
            total += len(line)
            if len(out) == n or total > max_bytes:
                if not out:  # the newest line alone is too long: its start, cut
                    out.append(line[: max(max_bytes - 3, 0)] + "...")
                break
            out.append(line)
        out.reverse()
        return out

    def clear(self) -> None:
        self._lines.clear()
        self._bytes = 0

    @contextmanager
    def subscribe(self, maxsize: int = 1000, maxbytes: int = MAX_QUEUE_BYTES) -> Iterator[SizedQueue[str]]:
        """A queue that receives every line appended while the context is open (that fits in it)."""
        queue: SizedQueue[str] = SizedQueue(maxsize, maxbytes, len)
        self._subscribers.add(queue)
        try:
            yield queue
        finally:
            self._subscribers.discard(queue)

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    @property
    def size(self) -> int:
        """Characters of text held now."""
        return self._bytes

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
