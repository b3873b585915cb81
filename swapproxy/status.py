"""ModelStatus: one model's state as everyone outside the scheduler reads it, computed once.

The UI's rows, ``state`` and ``inflight`` events, ``/running?details=1``, the
metrics' gauges and systemd's STATUS line all read a :class:`ModelStatus`, so
a figure such as the TTL left is computed in one place and agrees everywhere.
Memory (``rss_bytes``) is not part of it: reading it walks the process table,
so only the readers that can afford it add it (:meth:`ModelStatus.as_json`).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from .redact import redact_url
from .scheduler import Scheduler
from .progress import StartProgress, start_progress
from .states import ProcessState

__all__ = ["ModelStatus", "model_status", "all_statuses", "status_line"]


@dataclass(frozen=True)
class ModelStatus:
    """A snapshot of one model: its process, its requests, its timers, its last failure."""

    model: str
    name: str | None
    description: str | None
    aliases: tuple[str, ...]
    state: ProcessState
    pid: int | None
    port: int | None
    proxy: str
    ready_since: float | None  # wall time it became ready, while it is
    uptime_s: float | None
    state_since: float  # wall time of its last state change
    health_check_timeout_s: float
    inflight: int
    waiting: int
    ttl_s: float | None
    ttl_remaining_s: float | None  # None: no TTL timer runs (none set, or a request is in flight)
    exit_code: int | None
    error: str | None = None  # FAILED: why
    log_tail: tuple[str, ...] = ()  # FAILED: its last output lines
    breaker_open_s: float | None = None  # FAILED with the breaker open: seconds until it closes
    progress: StartProgress | None = None  # STARTING: its stage, and how far by past starts' times

    def as_json(self, rss: dict[int, int] | None = None) -> dict[str, Any]:
        """The JSON object the API and the UI use; ``rss`` (pid → bytes) adds ``rss_bytes``."""
        snap: dict[str, Any] = {
            "model": self.model, "name": self.name, "description": self.description, "aliases": list(self.aliases),
            "state": self.state.value, "pid": self.pid, "port": self.port, "proxy": self.proxy,
            "ready_since": self.ready_since, "uptime_s": self.uptime_s, "state_since": self.state_since,
            "health_check_timeout_s": self.health_check_timeout_s, "inflight": self.inflight,
            "waiting": self.waiting, "ttl_s": self.ttl_s, "ttl_remaining_s": self.ttl_remaining_s,
            "exit_code": self.exit_code,
        }
        if self.progress is not None:
            snap["stage"] = self.progress.stage
            snap["progress"] = self.progress.as_json()
        if rss is not None:
            snap["rss_bytes"] = rss.get(self.pid) if self.pid is not None else None
        if self.state is ProcessState.FAILED and self.error is not None:
            snap["error"] = self.error
            snap["log_tail"] = list(self.log_tail)
            if self.breaker_open_s is not None:
                snap["breaker_open_s"] = self.breaker_open_s
        return snap


def model_status(scheduler: Scheduler, model_id: str) -> ModelStatus:
    """``model_id``'s status right now (404 for an unknown id)."""
    slot = scheduler.slot(model_id)
    proc = slot.process
    spec = proc.spec
    now = asyncio.get_running_loop().time()
    ready = proc.state is ProcessState.READY
    started = proc.started_wall
    ttl_left = slot.ttl_remaining(now)
    error = proc.last_error if proc.state is ProcessState.FAILED else None
    breaker = scheduler.failures.breaker_remaining(proc)
    return ModelStatus(
        model=model_id, name=spec.name or None, description=spec.description or None, aliases=spec.aliases,
        state=proc.state, pid=proc.pid, port=urlsplit(spec.proxy).port, proxy=redact_url(spec.proxy),
        ready_since=started if ready else None,
        uptime_s=round(time.time() - started, 3) if ready and started else None,
        state_since=proc.state_since, health_check_timeout_s=spec.health_check_timeout,
        inflight=slot.inflight, waiting=slot.waiting, ttl_s=spec.ttl or None,
        ttl_remaining_s=None if ttl_left is None else round(ttl_left, 3), exit_code=proc.exit_code,
        error=error.reason if error is not None else None, log_tail=error.log_tail if error is not None else (),
        breaker_open_s=round(breaker, 1) if error is not None and breaker > 0 else None,
        progress=start_progress(getattr(proc, "stage", None),  # (other kinds of process have no stage)
                                time.time() - proc.state_since, scheduler.learned.expected_start(spec))
        if proc.state is ProcessState.STARTING else None,
    )


def all_statuses(scheduler: Scheduler) -> list[ModelStatus]:
    """Every configured model's status, in config order."""
    return [model_status(scheduler, model_id) for model_id in scheduler.slots]


def status_line(scheduler: Scheduler) -> str:
    """The one-line summary systemd shows in ``systemctl status``."""
    running = [s.model for s in all_statuses(scheduler) if s.state is ProcessState.READY]
    text = f"{len(running)} model(s) running" + (f": {', '.join(running)}" if running else "")
    last = scheduler.last_swap
    if last is not None and last.target is not None:
        text += f"; last swap {time.strftime('%H:%M:%S', time.localtime(last.at))} to {last.target}"
    return text
