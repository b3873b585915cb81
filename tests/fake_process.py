"""FakeProcess: a :class:`~swapproxy.processes.ProcessLike` that spawns nothing.

The scheduler's unit tests drive it: a start finishes when the test says so
(or at once), may fail, and a ready process may "crash". State changes go
through the same transition table as the real process, and listeners hear
them the same way, so the scheduler and failure handler cannot tell the
difference — except that every step takes microseconds, not a process spawn.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

from swapproxy.config import ModelConfig
from swapproxy.errors import ModelStartFailed
from swapproxy.logs import LogBuffer
from swapproxy.processes import ProcessHub, StateListener
from swapproxy.states import ProcessState, check_transition

__all__ = ["FakeProcess", "FakeHub", "spec"]

_pids = itertools.count(10_000)


def spec(model_id: str, **overrides: Any) -> ModelConfig:
    """A ModelConfig for a fake (its command is never run)."""
    fields: dict[str, Any] = {"id": model_id, "cmd": ("fake", model_id), "proxy": "http://127.0.0.1:1"}
    fields.update(overrides)
    return ModelConfig(**fields)


class FakeProcess:
    """In-memory stand-in for ManagedProcess."""

    def __init__(self, model: ModelConfig, hub: FakeHub) -> None:
        self.spec = model
        self.hub = hub
        self.state = ProcessState.STOPPED
        self.state_since = time.time()
        self.log = LogBuffer(model.id)
        self.last_error: ModelStartFailed | None = None
        self.exit_code: int | None = None
        self.spawned_at: float | None = None
        self.ready_at: float | None = None
        self.started_wall: float | None = None
        self.starts = 0
        self.stops = 0
        self._pid: int | None = None
        self._listeners: list[StateListener] = []
        self._starting: asyncio.Future[None] | None = None

    @property
    def name(self) -> str:
        return self.spec.id

    @property
    def pid(self) -> int | None:
        return self._pid

    def add_listener(self, listener: StateListener) -> None:
        self._listeners.append(listener)

    def change_state(self, new: ProcessState, reason: str = "") -> None:
        old = self.state
        check_transition(self.name, old, new)
        self.state = new
        self.state_since = time.time()
        self.hub.history.append((self.name, new))
        for listener in self._listeners:
            listener(self, old, new)

    async def start(self) -> None:
        if self.state is ProcessState.READY:
            return
        if self.state is ProcessState.SHUTDOWN:
            raise ModelStartFailed(f"{self.name}: shut down")
        future = self._starting
        if future is None:
            self.starts += 1
            self.change_state(ProcessState.STARTING)
            self._pid = next(_pids)
            self.spawned_at = asyncio.get_running_loop().time()
            future = self._starting = asyncio.get_running_loop().create_future()
            if self.name not in self.hub.held:
                self._finish_start()
        try:
            await asyncio.shield(future)
        except asyncio.CancelledError:
            if future.cancelled():  # stop() aborted the start, not our caller
                raise ModelStartFailed(f"{self.name}: start aborted because the model was stopped") from None
            raise

    def _finish_start(self) -> None:
        """End the start under way: READY, or FAILED when the hub says this model fails."""
        future, self._starting = self._starting, None
        assert future is not None
        if self.name in self.hub.failing:
            self.last_error = ModelStartFailed(f"{self.name}: start failed", log_tail=("boom",))
            self._pid = None
            self.change_state(ProcessState.FAILED, "start failed")
            future.set_exception(self.last_error)
            future.exception()  # retrieved: a start nobody awaits must not warn
        else:
            self.ready_at = asyncio.get_running_loop().time()
            self.started_wall = time.time()
            self.change_state(ProcessState.READY)
            future.set_result(None)

    def release_start(self) -> None:
        """Let a held start finish now."""
        if self._starting is not None:
            self._finish_start()

    def crash(self) -> None:
        """A ready server exits on its own."""
        self.exit_code = 1
        self._pid = None
        self.last_error = ModelStartFailed(f"{self.name}: exited")
        self.change_state(ProcessState.FAILED, "crashed")

    async def stop(self, reason: str = "") -> None:
        if self._starting is not None:
            future, self._starting = self._starting, None
            future.cancel()
        if self.state is ProcessState.FAILED:
            self.change_state(ProcessState.STOPPED, reason)
        elif self.state in (ProcessState.STARTING, ProcessState.READY):
            self.stops += 1
            self.change_state(ProcessState.STOPPING, reason)
            gate = self.hub.stop_gates.get(self.name)
            if gate is not None:
                await gate.wait()
            self._pid = None
            self.change_state(ProcessState.STOPPED)

    async def shutdown(self) -> None:
        await self.stop("shutdown")
        if self.state is not ProcessState.SHUTDOWN:
            self.change_state(ProcessState.SHUTDOWN)


class FakeHub(ProcessHub):
    """A ProcessHub making FakeProcesses, with the knobs the tests turn."""

    def __init__(self) -> None:
        super().__init__(lambda model: FakeProcess(model, self))
        self.held: set[str] = set()  # models whose starts wait for release_start()
        self.failing: set[str] = set()  # models whose starts fail
        self.stop_gates: dict[str, asyncio.Event] = {}  # models whose stops wait for the event
        self.history: list[tuple[str, ProcessState]] = []  # every state change, in order
