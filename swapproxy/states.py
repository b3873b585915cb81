"""Process states of one upstream and the edges allowed between them.

This module imports nothing from swapproxy: it is the vocabulary the rest of
the package shares. ``ManagedProcess.change_state`` is the only place that
moves a process along these edges; it consults :data:`TRANSITIONS` and refuses
any edge not listed here.
"""

from __future__ import annotations

import enum

__all__ = ["ProcessState", "TRANSITIONS", "IllegalTransition", "check_transition"]


class ProcessState(enum.Enum):
    """Lifecycle of one upstream server process."""

    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"
    FAILED = "failed"
    SHUTDOWN = "shutdown"


S = ProcessState

TRANSITIONS: dict[ProcessState, frozenset[ProcessState]] = {
    S.STOPPED: frozenset(
        {
            S.STARTING,  # STOPPED -> STARTING: a request or a preload asked for it
            S.SHUTDOWN,  # STOPPED -> SHUTDOWN: swapproxy is exiting
        }
    ),
    S.STARTING: frozenset(
        {
            S.READY,  # STARTING -> READY: health probe answered 200
            S.FAILED,  # STARTING -> FAILED: exited before healthy, or health timeout
            S.STOPPING,  # STARTING -> STOPPING: stop() aborted the start
        }
    ),
    S.READY: frozenset(
        {
            S.STOPPING,  # READY -> STOPPING: swap, TTL, unload or shutdown
            S.FAILED,  # READY -> FAILED: the process exited on its own
        }
    ),
    S.STOPPING: frozenset(
        {
            S.STOPPED,  # STOPPING -> STOPPED: reaped
            S.SHUTDOWN,  # STOPPING -> SHUTDOWN: reaped while swapproxy exits
        }
    ),
    S.FAILED: frozenset(
        {
            S.STARTING,  # FAILED -> STARTING: the next request tries again
            S.STOPPED,  # FAILED -> STOPPED: operator unload clears the failure
            S.SHUTDOWN,  # FAILED -> SHUTDOWN: swapproxy is exiting
        }
    ),
    S.SHUTDOWN: frozenset(),  # terminal
}


class IllegalTransition(RuntimeError):
    """Raised when code asks for an edge that :data:`TRANSITIONS` does not allow."""

    def __init__(self, name: str, old: ProcessState, new: ProcessState) -> None:
        super().__init__(f"{name}: illegal state change {old.name} -> {new.name}")
        self.old = old
        self.new = new


def check_transition(name: str, old: ProcessState, new: ProcessState) -> None:
    """Raise :class:`IllegalTransition` unless ``old -> new`` is an allowed edge."""
    if new not in TRANSITIONS[old]:
        raise IllegalTransition(name, old, new)
