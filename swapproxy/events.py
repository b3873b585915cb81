"""EventBus: live events for UIs — model state changes, log lines, in-flight counts.

Producers call :meth:`EventBus.publish` with a plain JSON-able dict; the bus
stamps it with a sequence number and hands it to every subscriber's queue,
bounded in events and in size (a log event carries a line of up to 64 KiB). Like
:class:`~swapproxy.logs.LogBuffer`, a slow subscriber never slows a producer: when
its queue is full the event is dropped for that subscriber only, and the next
event it does get carries ``"dropped": N`` so a UI knows to resynchronise
(re-read ``/running?details=1``).

Event shapes (``type`` says which)::

    {"type": "state", "old": "stopped", "model": id, "state": "starting", "pid": 123, ...,
     "error": "...", "log_tail": [...]}         # the model's ModelStatus; error/log_tail on "failed"
    {"type": "log", "source": "proxy" | model id, "line": "..."}
    {"type": "inflight", "model": id, "inflight": 2, "waiting": 0, "queue_depth": 0, "ttl_remaining_s": None}
    {"type": "swap", "kind": "stop", "at": 1.7e9, "cause": "swap", "reason": "swap to b", "stopped": ["a"],
     "target": "b"}                             # any stop (cause: swap, ttl, unload, reload; target: swap only)
    {"type": "request", "op": "start" | "end", "request": {"id": "7", "model": id, "method": "POST",
     "path": "/v1/chat/completions", "remote": "127.0.0.1", "started": 1.7e9, "elapsed_ms": 0}}
    {"type": "profile", "active": "coding" | None}
    {"type": "config", "report": {"kept": [...], "changed": [...], "added": [...], "removed": [...]}}
                                                # a reload or an edit applied: models may have come or gone
    {"type": "activity", "id": 42}              # a request was written to the request history
                                                # (GET /api/metrics/activity?min_id=42)

``GET /api/events`` (SSE) and ``GET /models/sse`` (llama.cpp router shape) are
both fed from here; see :mod:`swapproxy.web.streams`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .logs import MAX_QUEUE_BYTES, SizedQueue

__all__ = ["EventBus", "Event", "event_size"]

logger = logging.getLogger(__name__)

Event = dict[str, Any]


def event_size(event: Event) -> int:
    """About how many characters ``event`` takes: its text values (a log line, a log tail) and a bit more."""
    size = 64
    for value in event.values():
        if isinstance(value, str):
            size += len(value)
        elif isinstance(value, (list, tuple)):
            size += sum(len(v) if isinstance(v, str) else 16 for v in value)
        else:
            size += 16
    return size


class _Subscriber:
    __slots__ = ("queue", "dropped")

    def __init__(self, maxsize: int, maxbytes: int) -> None:
        self.queue: SizedQueue[Event] = SizedQueue(maxsize, maxbytes, event_size)
        self.dropped = 0


class EventBus:
    """Fan-out of events to any number of bounded subscriber queues."""

    def __init__(self) -> None:
        self._subscribers: set[_Subscriber] = set()
        self._seq = itertools.count(1)

    def publish(self, event: Event) -> None:
        """Stamp ``event`` with ``seq`` and queue it for every subscriber (never blocks)."""
        if not self._subscribers:
            return  # nobody listens: no work at all on the producer's path
        event["seq"] = next(self._seq)
        for sub in self._subscribers:
            item = {**event, "dropped": sub.dropped} if sub.dropped else event
            if not sub.queue.fits(item):
                sub.dropped += 1
                continue
            sub.queue.put_nowait(item)
            sub.dropped = 0

    @contextmanager
    def subscribe(self, maxsize: int = 2000, maxbytes: int = MAX_QUEUE_BYTES) -> Iterator[asyncio.Queue[Event]]:
        """A queue receiving every event published while the context is open (that fits in it)."""
        sub = _Subscriber(maxsize, maxbytes)
        self._subscribers.add(sub)
        try:
            yield sub.queue
        finally:
            self._subscribers.discard(sub)

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)
