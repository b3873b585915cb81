"""The scheduler's book-keeping: a slot per model, a ticket per waiting request, a lease per served one,
a record per swap under way, a typed event per stop.

Plain data with a few derived properties; the scheduler (:mod:`swapproxy.scheduler`)
is the only writer.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .processes import ProcessLike
from .states import ProcessState

__all__ = ["ModelSlot", "Lease", "StopCause", "StopEvent", "Ticket", "Swap", "ACTIVE", "OCCUPYING"]

#: Running or on its way there.
ACTIVE = (ProcessState.STARTING, ProcessState.READY)
#: Holding (or about to hold, or still releasing) its resources: a swap must wait for it.
OCCUPYING = (ProcessState.STARTING, ProcessState.READY, ProcessState.STOPPING)


class StopCause(enum.Enum):
    """Why models were stopped."""

    SWAP = "swap"  # to make room for another model
    RELOAD = "reload"  # its definition changed in a reload
    UNLOAD = "unload"  # an operator (or the API) asked
    TTL = "ttl"  # idle for its ttl


@dataclass(frozen=True)
class StopEvent:
    """One stop of one or more models, as ``swap_listeners`` hear it."""

    cause: StopCause
    reason: str  # the text logged: "swap to b", "ttl expired", ...
    stopped: tuple[str, ...]
    target: str | None = None  # SWAP: the model the stop made room for
    at: float = field(default_factory=time.time)


class Lease:
    """One request's hold on a ready model; :meth:`release` it exactly once when done.

    It holds the slot itself, not the model's name, so a release still reaches
    the right book-keeping after a reload removed (or removed and re-added) the model.
    """

    __slots__ = ("_on_release", "slot", "process", "_released", "waited", "waited_for")

    def __init__(self, slot: ModelSlot, on_release: Callable[[ModelSlot], None]) -> None:
        self._on_release = on_release
        self.slot = slot
        self.process = slot.process
        self._released = False
        self.waited = 0.0  # seconds the request waited in the queue for it
        #: what it waited for: "swap" (other models were stopped), "start" (nothing had to stop),
        #: "queue" (the model ran, but was closed to new requests: drained for a swap or a
        #: replacement, or strict order); None: served at once
        self.waited_for: str | None = None

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._on_release(self.slot)


@dataclass(eq=False)
class ModelSlot:
    """The scheduler's book-keeping for one model."""

    process: ProcessLike
    inflight: int = 0
    waiting: int = 0
    evictors: int = 0  # swaps (or unloads) waiting to stop this model
    not_evicting: asyncio.Event = field(default_factory=asyncio.Event)
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    ttl_handle: asyncio.TimerHandle | None = None
    pending: ProcessLike | None = None  # a changed definition, swapped in when next needed
    last_used: float = 0.0  # loop time its last request ended (the memory policy stops the least recent first)

    def __post_init__(self) -> None:
        self.idle.set()
        self.not_evicting.set()

    @property
    def evicting(self) -> bool:
        """Chosen to be stopped: closed to new requests until that is done or abandoned."""
        return self.evictors > 0

    @property
    def active(self) -> bool:
        """Running, starting, still stopping, or reserved by a request about to start it."""
        return self.process.state in OCCUPYING or self.inflight > 0

    def ttl_remaining(self, now: float) -> float | None:
        """Seconds until the TTL unloads this model (loop time ``now``); None when no TTL runs."""
        return None if self.ttl_handle is None else max(self.ttl_handle.when() - now, 0.0)


@dataclass(eq=False)
class Ticket:
    """A request waiting for its model: granted (counted in flight) when the model is ready for it."""

    model: str
    slot: ModelSlot
    priority: int
    arrived: float  # loop time
    future: asyncio.Future[None]

    @property
    def granted(self) -> bool:
        return self.future.done() and not self.future.cancelled() and self.future.exception() is None


@dataclass(eq=False)
class Swap:
    """A swap under way: the target, the models it stops first, and where it stands."""

    target: str
    slot: ModelSlot
    victims: list[ModelSlot]
    overlap: bool = False  # memory allows starting the target while the victims still stop
    stopping: bool = False  # past the drain: the stops have begun (it can no longer be abandoned)
    task: asyncio.Task[None] | None = None
