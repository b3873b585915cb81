"""What the scheduler needs of an upstream process, and the hub every process is made through.

:class:`ProcessLike` is the seam between the swap logic and the operating
system: :class:`~swapproxy.process.ManagedProcess` is the real one; the
scheduler's unit tests drive a fake that changes state without spawning
anything. :class:`ProcessHub` makes every process the scheduler owns — at
start-up and after each reload — and is the one place to say "tell me about
the state changes of every process, now and later" (metrics, events, failure
handling, systemd status all listen there).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Protocol

from .config import ModelConfig
from .errors import ModelStartFailed
from .logs import LogBuffer
from .states import ProcessState

__all__ = ["ProcessLike", "StateListener", "ProcessFactory", "ProcessHub"]


class ProcessLike(Protocol):
    """One model's server process as the scheduler sees it."""

    spec: ModelConfig
    state: ProcessState
    log: LogBuffer
    last_error: ModelStartFailed | None
    exit_code: int | None
    spawned_at: float | None  # loop time of the last spawn
    ready_at: float | None  # loop time of the last READY
    state_since: float  # wall time of the last state change (or of creation)

    @property
    def name(self) -> str: ...

    @property
    def pid(self) -> int | None: ...

    @property
    def started_wall(self) -> float | None: ...

    def add_listener(self, listener: StateListener) -> None: ...

    async def start(self) -> None: ...

    async def stop(self, reason: str = "") -> None: ...

    async def shutdown(self) -> None: ...


StateListener = Callable[[ProcessLike, ProcessState, ProcessState], None]
ProcessFactory = Callable[[ModelConfig], ProcessLike]


class ProcessHub:
    """Makes processes, and hands each one every listener added here, before or after it was made."""

    def __init__(self, factory: ProcessFactory) -> None:
        self._factory = factory
        self._listeners: list[StateListener] = []
        self._made: weakref.WeakSet[ProcessLike] = weakref.WeakSet()  # processes nobody holds drop out

    def new(self, spec: ModelConfig) -> ProcessLike:
        """A new process for ``spec`` (not started), already wired to every listener."""
        proc = self._factory(spec)
        for listener in self._listeners:
            proc.add_listener(listener)
        self._made.add(proc)
        return proc

    def add_listener(self, listener: StateListener) -> None:
        """Listen to the state changes of every process: those made already and those to come."""
        self._listeners.append(listener)
        for proc in list(self._made):
            proc.add_listener(listener)
