"""Failure handling: the circuit breaker and the restarts of persistent models.

:class:`FailureHandler` is a state listener (on the :class:`~swapproxy.processes.ProcessHub`);
the scheduler only asks it, at admission, whether a model's breaker is open or its
back-off runs (:meth:`FailureHandler.check`).

* Back-off: for ``circuitBreaker.backoff`` seconds after a failed start,
  requests get that same failure again (503, its message and output,
  ``Retry-After``) without a new start: clients that retry at once, or several
  that arrive together, cost no spawn each. Only real starts count below.
* Circuit breaker: after ``circuitBreaker.failures`` start failures within
  ``circuitBreaker.window`` seconds, requests get 503 at once (with the last
  error and log lines) until the window has passed or an operator loads the
  model explicitly (:meth:`FailureHandler.clear`). Below that count, the first
  request after the back-off tries again.
* Members of a ``persistent`` group that crash (or fail to restart) are
  restarted on their own, with a back-off of 1, 2, 4 ... 30 s.

Records are kept per process object: a process a reload replaced or retired
has no breaker and is never restarted.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from .background import Background
from .config import Config
from .errors import ModelStartFailed
from .processes import ProcessLike
from .states import ProcessState

__all__ = ["FailureHandler", "RESTART_CAP"]

logger = logging.getLogger(__name__)

#: Longest wait between two automatic restarts of a persistent model, seconds.
RESTART_CAP = 30.0
#: A model that was up this long before it failed is not in a crash loop: its back-off starts over.
_STABLE_AFTER = 60.0


@dataclass
class _Record:
    failures: collections.deque[float] = field(default_factory=collections.deque)  # start failures, loop time
    breaker_until: float = 0.0  # loop time until which requests are refused at once
    backoff_until: float = 0.0  # loop time until which requests get the last start failure again
    restarts: int = 0  # consecutive automatic restarts
    restart_task: asyncio.Task[None] | None = None


class FailureHandler:
    """Counts start failures per process, opens breakers, restarts persistent models."""

    def __init__(
        self,
        config: Callable[[], Config],
        is_current: Callable[[ProcessLike], bool],
        restart: Callable[[str], Awaitable[None]],
        background: Background,
    ) -> None:
        self._config = config
        self._is_current = is_current
        self._restart = restart
        self._background = background
        self._records: dict[ProcessLike, _Record] = {}
        self.closing = False

    def _record(self, proc: ProcessLike) -> _Record:
        record = self._records.get(proc)
        if record is None:
            record = self._records[proc] = _Record()
        return record

    # -- queries --------------------------------------------------------------------------
    def breaker_remaining(self, proc: ProcessLike) -> float:
        """Seconds until ``proc``'s open breaker closes (≤ 0: closed)."""
        record = self._records.get(proc)
        if record is None or proc.state is not ProcessState.FAILED:
            return 0.0
        return record.breaker_until - asyncio.get_running_loop().time()

    def check(self, proc: ProcessLike) -> None:
        """Raise :class:`ModelStartFailed` (503) while ``proc``'s breaker is open, or (the same
        failure again) within the back-off after its failed start; either says when to retry."""
        remaining = self.breaker_remaining(proc)
        last = proc.last_error
        if remaining > 0:
            reason = last.reason if last is not None else "start failed"
            failures = len(self._records[proc].failures)
            raise ModelStartFailed(
                f"{proc.name} failed to start {failures} times within {self._config().breaker_window:g}s; "
                f"not retrying for {remaining:.0f}s (load it explicitly to retry now). Last error: {reason}",
                log_tail=last.log_tail if last is not None else (), retry_after=_seconds(remaining),
            )
        record = self._records.get(proc)
        if record is None or last is None or proc.state is not ProcessState.FAILED:
            return
        backoff = record.backoff_until - asyncio.get_running_loop().time()
        if backoff > 0:
            raise last.again(retry_after=_seconds(backoff))

    # -- changes --------------------------------------------------------------------------
    def clear(self, proc: ProcessLike) -> None:
        """An operator's explicit load: close the breaker and forget the failures."""
        record = self._records.get(proc)
        if record is not None:
            record.failures.clear()
            record.breaker_until = record.backoff_until = 0.0

    def forget(self, proc: ProcessLike) -> None:
        """``proc`` was replaced or retired: drop its record and any restart it had coming."""
        record = self._records.pop(proc, None)
        if record is not None and record.restart_task is not None:
            record.restart_task.cancel()

    def on_state_change(self, proc: ProcessLike, old: ProcessState, new: ProcessState) -> None:
        """The state listener: count failures, open the breaker, schedule restarts."""
        if not self._is_current(proc):
            return  # a retired or replaced process: no breaker, no restarts
        if new is ProcessState.READY:
            if proc in self._records:
                self._records[proc].failures.clear()
            return
        if new is not ProcessState.FAILED:
            return
        record = self._record(proc)
        config = self._config()
        now = asyncio.get_running_loop().time()
        if old is ProcessState.READY and proc.ready_at is not None and now - proc.ready_at > _STABLE_AFTER:
            record.restarts = 0  # it had been up a while: not a crash loop
        if old is ProcessState.STARTING:
            window = config.breaker_window
            record.failures.append(now)
            while record.failures and record.failures[0] < now - window:
                record.failures.popleft()
            limit = config.breaker_failures
            if limit and len(record.failures) >= limit:
                record.breaker_until = now + window
                logger.error("%s: %d start failures within %gs; circuit breaker open for %gs",
                             proc.name, len(record.failures), window, window)
            record.backoff_until = now + config.breaker_backoff
            if proc.last_error is not None:  # the error its waiters get: when to come back
                proc.last_error.retry_after = _seconds(max(record.backoff_until, record.breaker_until) - now)
        if config.group_of(proc.name).persistent and not self.closing:
            self._schedule_restart(proc, record, now)

    def _schedule_restart(self, proc: ProcessLike, record: _Record, now: float) -> None:
        if record.restart_task is not None and not record.restart_task.done():
            return
        delay = max(min(2.0**record.restarts, RESTART_CAP), record.breaker_until - now, record.backoff_until - now)
        record.restarts += 1
        logger.warning("%s: persistent model failed; restarting in %.0fs", proc.name, delay)
        record.restart_task = self._background.spawn(self._restart_later(proc, record, delay))

    async def _restart_later(self, proc: ProcessLike, record: _Record, delay: float) -> None:
        await asyncio.sleep(delay)
        record.restart_task = None
        if self.closing or not self._is_current(proc) or proc.state is not ProcessState.FAILED:
            return
        record.backoff_until = 0.0  # waited out above: this restart is the next real start
        try:
            await self._restart(proc.name)
        except ModelStartFailed:
            return  # the FAILED transition scheduled the next attempt


def _seconds(remaining: float) -> int:
    """Whole seconds for Retry-After: rounded up, at least 1."""
    return max(1, math.ceil(remaining))
