"""Background: the one registry of tasks that run beside requests.

TTL unloads, persistent-model restarts, models a reload retired, loads started
by the API: each is a task nobody awaits. They are spawned here so that a
failure is logged rather than lost with the task, and so that shutdown cancels
all of them in one place (:meth:`Background.cancel_all`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["Background"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Background:
    """Tasks started and not awaited; each is dropped from the registry when it ends."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, T], *, on_done: Callable[[asyncio.Task[T]], None] | None = None
              ) -> asyncio.Task[T]:
        """Run ``coro`` as a task; an exception it ends with is logged (``on_done`` may handle it first)."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)

        def done(t: asyncio.Task[T]) -> None:
            self._tasks.discard(t)
            if on_done is not None:
                on_done(t)
            elif not t.cancelled() and t.exception() is not None:
                logger.error("background task failed: %r", t.exception())

        task.add_done_callback(done)
        return task

    def cancel_all(self) -> None:
        """Cancel every task still running."""
        for task in list(self._tasks):
            task.cancel()

    def __len__(self) -> int:
        return len(self._tasks)
