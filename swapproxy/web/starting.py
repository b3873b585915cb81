"""While models start, their progress goes out on the event bus every :data:`TICK` seconds.

Each ``progress`` event is ``{"type": "progress", "model": id, "progress": {stage, elapsed_s,
expected_s, value, eta_s, first_start}}`` (:class:`~swapproxy.progress.StartProgress`): the UI
draws a bar from it, ``/api/events`` passes it on, and ``/models/sse`` turns it into llama.cpp
router mode's ``status_change`` event. One task runs while any model starts, and only while
someone listens; it ends when none is starting.
"""

from __future__ import annotations

import asyncio

from ..processes import ProcessLike
from ..states import ProcessState
from ..status import model_status
from .runtime import Runtime

__all__ = ["ProgressTicker", "TICK"]

#: Seconds between two progress events of a starting model.
TICK = 0.5


class ProgressTicker:
    """Publishes the progress of the starting models (a state listener starts it)."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self._task: asyncio.Task[None] | None = None

    def on_state(self, proc: ProcessLike, old: ProcessState, new: ProcessState) -> None:
        if new is ProcessState.STARTING and (self._task is None or self._task.done()):
            self._task = self.rt.background.spawn(self._run())

    def _starting(self) -> list[str]:
        scheduler = self.rt.scheduler
        return [mid for mid, slot in scheduler.slots.items() if slot.process.state is ProcessState.STARTING]

    async def _run(self) -> None:
        while starting := self._starting():
            if self.rt.events.subscriber_count:
                for model_id in starting:
                    progress = model_status(self.rt.scheduler, model_id).progress
                    if progress is not None:
                        self.rt.events.publish({"type": "progress", "model": model_id,
                                                "progress": progress.as_json()})
            await asyncio.sleep(TICK)
