"""The requests in flight, one entry each, so that an operator can see them and cut one.

Every proxied request is registered while it runs (``web/forward.py`` adds and
removes it); :meth:`InflightRequests.cancel` cancels its handler's task, which
aborts the upstream request and the client's response: llama-swap's
``POST /api/inflight/{id}/cancel``. Ids are decimal strings from a counter that
starts at 1 with each app, as llama-swap's are. A change is announced to
``listener`` (the app publishes it on the event bus) as ``("start"|"end", entry)``.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["InflightRequest", "InflightRequests"]


@dataclass(eq=False)
class InflightRequest:
    """One request being served: what it asked for, and the task that serves it."""

    id: str
    model: str
    method: str
    path: str
    remote: str | None
    task: asyncio.Task[Any] | None
    started: float = field(default_factory=time.time)
    cancelled: bool = False  # an operator cut it (not the client)

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "model": self.model, "method": self.method, "path": self.path,
                "remote": self.remote, "started": self.started,
                "elapsed_ms": round((time.time() - self.started) * 1000)}


class InflightRequests:
    """The registry: add, remove, list, cancel."""

    def __init__(self) -> None:
        self._by_id: dict[str, InflightRequest] = {}
        self._ids = itertools.count(1)
        self.listener: Callable[[str, InflightRequest], None] | None = None

    def __len__(self) -> int:
        return len(self._by_id)

    def add(self, model: str, method: str, path: str, remote: str | None) -> InflightRequest:
        """Register the current task's request."""
        entry = InflightRequest(str(next(self._ids)), model, method, path, remote, asyncio.current_task())
        self._by_id[entry.id] = entry
        if self.listener is not None:
            self.listener("start", entry)
        return entry

    def remove(self, entry: InflightRequest) -> None:
        if self._by_id.pop(entry.id, None) is not None and self.listener is not None:
            self.listener("end", entry)

    def list(self) -> list[InflightRequest]:
        """Every request in flight, oldest first."""
        return list(self._by_id.values())

    def cancel(self, request_id: str) -> bool:
        """Cut one request; False when no request in flight has that id."""
        entry = self._by_id.get(request_id)
        if entry is None or entry.task is None or entry.task.done():
            return False
        entry.cancelled = True
        entry.task.cancel()
        return True
