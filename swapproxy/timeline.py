"""Timeline: the recent loads and stops of models, for the UI's activity page.

A *load* runs from a model's spawn (``starting``) until it is ready, failed, or was stopped
while starting; a *stop* is one :class:`~swapproxy.slots.StopEvent` (a swap, a TTL, an unload,
a reload). Both carry wall times, so a page opened later still draws what happened before
it: the ``/api/events`` snapshot carries :meth:`Timeline.as_json`, and its live ``state`` and
``swap`` events extend it. Bounded: the last :data:`KEEP` entries of each kind.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from .slots import StopEvent
from .states import ProcessState

__all__ = ["Timeline", "Load", "KEEP"]

#: Loads and stops kept (each).
KEEP = 200


@dataclass(slots=True)
class Load:
    """One start of one model: ``end`` and ``outcome`` (ready, failed, stopped) once it is over."""

    model: str
    start: float
    end: float | None = None
    outcome: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {"kind": "load", "model": self.model, "start": self.start, "end": self.end, "outcome": self.outcome}


class Timeline:
    """The last :data:`KEEP` loads and stops, oldest first."""

    def __init__(self, keep: int = KEEP) -> None:
        self._loads: deque[Load] = deque(maxlen=keep)
        self._stops: deque[StopEvent] = deque(maxlen=keep)
        self._open: dict[str, Load] = {}  # by model: its load under way

    def on_state(self, model: str, old: ProcessState, new: ProcessState, at: float) -> None:
        """A model's process changed state at wall time ``at``."""
        if new is ProcessState.STARTING:
            self._open[model] = load = Load(model, at)
            self._loads.append(load)
        elif old is ProcessState.STARTING and (load := self._open.pop(model, None)) is not None:
            load.end, load.outcome = at, new.value if new is not ProcessState.STOPPING else "stopped"

    def on_stop(self, event: StopEvent) -> None:
        self._stops.append(event)

    def as_json(self) -> list[dict[str, Any]]:
        """Every entry, oldest first: loads by their start, stops by their time."""
        entries = [load.as_json() for load in self._loads] + [stop_json(stop) for stop in self._stops]
        return sorted(entries, key=lambda e: e["start"] if e["kind"] == "load" else e["at"])


def stop_json(event: StopEvent) -> dict[str, Any]:
    """A stop as the timeline and the ``swap`` event show it."""
    return {"kind": "stop", "at": event.at, "cause": event.cause.value, "reason": event.reason,
            "stopped": list(event.stopped), "target": event.target}
