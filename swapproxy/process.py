"""ManagedProcess: one supervised upstream server process.

It spawns the model's command (never through a shell) in its own process
group with the parent-death signal set, captures its output line by line,
probes readiness, watches for exit and stops it — ``cmdStop`` or SIGTERM to
the group, a grace period of ``unloadTimeout``, then SIGKILL to the group —
always reaping. It knows nothing about HTTP routes or other models; it is
the real :class:`~swapproxy.processes.ProcessLike` the scheduler
(:mod:`swapproxy.scheduler`) drives.

Every state change goes through :meth:`ManagedProcess.change_state`, which
checks the edge against :data:`swapproxy.states.TRANSITIONS`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Protocol

import aiohttp

from .config import ModelConfig
from .errors import HealthCheckTimeout, ModelStartFailed, ShuttingDown
from .health import is_ready_hint, probe_intervals
from .logs import LogBuffer
from .progress import STAGES, later, stage_of
from .redact import Redactor
from .spawn import check_port_free, child_setup, killpg, run_cmd_stop
from .states import ProcessState, check_transition

__all__ = ["ManagedProcess", "ProcessTracker", "StateListener", "LOG_TAIL_LINES"]

logger = logging.getLogger(__name__)

StateListener = Callable[["ManagedProcess", ProcessState, ProcessState], None]


class ProcessTracker(Protocol):
    """Told of every upstream process group we spawn and reap (guardian, pid records)."""

    def watch(self, pid: int) -> None: ...

    def unwatch(self, pid: int) -> None: ...


LineListener = Callable[[str, str], None]

#: How many of the upstream's last output lines a start-failure error carries, and at most how much text.
LOG_TAIL_LINES = 20
LOG_TAIL_BYTES = 16 * 1024
#: Seconds to wait for a SIGKILLed process to be reaped before giving up on it.
KILL_WAIT = 10.0
#: A line longer than this is cut into pieces rather than buffered whole.
MAX_LINE_BYTES = 64 * 1024


class ManagedProcess:
    """Supervises one upstream: start, readiness, exit watch, stop."""

    def __init__(
        self,
        spec: ModelConfig,
        *,
        log: LogBuffer | None = None,
        trackers: Sequence[ProcessTracker] = (),
        session: aiohttp.ClientSession | None = None,
        on_line: LineListener | None = None,
        secrets: Collection[str] = (),
        redactor: Redactor | None = None,
        extra_argv: Callable[[ModelConfig], list[str]] | None = None,
        after_ready: Callable[[ManagedProcess], Awaitable[None]] | None = None,
    ) -> None:
        self.spec = spec
        self.log = log if log is not None else LogBuffer(spec.id)
        self._trackers = tuple(trackers)
        self._session = session
        self._own_session: aiohttp.ClientSession | None = None
        self._listeners: list[StateListener] = []
        self._on_line = on_line
        self._secrets = frozenset(secrets)
        # what is shown (the spawning line, its output in the logs) with the config's secrets hidden
        self._redactor = redactor if redactor is not None else Redactor(self._secrets)
        # what swapproxy adds to the command (--slot-save-path), and what runs once it answers
        # /health but before it counts as ready (restoring saved slots): both for the slot cache
        self._extra_argv = extra_argv
        self._after_ready = after_ready
        self.stage: str | None = None  # STARTING: where the start stands (swapproxy.progress.STAGES)
        self.state = ProcessState.STOPPED
        self.state_since = time.time()  # wall time of the last state change
        self.last_error: ModelStartFailed | None = None
        self.exit_code: int | None = None
        self.spawned_at: float | None = None  # loop time
        self.ready_at: float | None = None  # loop time
        self.started_wall: float | None = None  # time.time() of READY
        self._proc: asyncio.subprocess.Process | None = None
        self._readers: list[asyncio.Task[None]] = []
        self._exit_watch: asyncio.Task[None] | None = None
        self._exited = asyncio.Event()
        self._wake = asyncio.Event()
        self._starting: asyncio.Task[None] | None = None
        self._stopping: asyncio.Task[None] | None = None

    # -- state -----------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.spec.id

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and not self._exited.is_set() else None

    def add_listener(self, listener: StateListener) -> None:
        self._listeners.append(listener)

    def change_state(self, new: ProcessState, reason: str = "") -> None:
        """The one place a state changes; refuses edges the table does not allow."""
        old = self.state
        check_transition(self.name, old, new)
        self.state = new
        self.state_since = time.time()
        logger.info("%s: %s -> %s%s", self.name, old.value, new.value, f" ({reason})" if reason else "")
        for listener in self._listeners:
            try:
                listener(self, old, new)
            except Exception:  # an observer's bug must never stop a stop or a start
                logger.exception("%s: state listener failed on %s -> %s", self.name, old.value, new.value)

    # -- start -----------------------------------------------------------------
    async def start(self) -> None:
        """Make the process READY; concurrent callers share one start.

        Raises :class:`ModelStartFailed` (or :class:`HealthCheckTimeout`) when the
        start fails, and :class:`ShuttingDown` once the process is shut down.
        """
        while True:
            if self.state is ProcessState.READY:
                return
            if self.state is ProcessState.SHUTDOWN:
                raise ShuttingDown(f"{self.name}: swapproxy is shutting down")
            if self._stopping is not None:
                await asyncio.shield(self._stopping)
                continue
            if self._starting is None:
                self._starting = asyncio.ensure_future(self._start())
            task = self._starting
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                if task.cancelled():  # stop() aborted the start, not our caller
                    raise ModelStartFailed(f"{self.name}: start aborted because the model was stopped") from None
                raise
            return

    async def _start(self) -> None:
        try:
            self.stage = STAGES[0]
            self.change_state(ProcessState.STARTING)
            self.last_error = None
            await self._spawn()
            await self._wait_ready()
            if self._after_ready is not None:
                self.stage = "restoring slots"
                await self._after_ready(self)
            self.stage = None
            loop = asyncio.get_running_loop()
            self.ready_at = loop.time()
            self.started_wall = time.time()
            self.change_state(ProcessState.READY, f"ready in {self.ready_at - (self.spawned_at or self.ready_at):.3f}s")
        except ModelStartFailed as err:
            self.stage = None
            self.last_error = err
            await self._kill_now()
            self.change_state(ProcessState.FAILED, err.reason)
            raise
        finally:
            if self._starting is asyncio.current_task():
                self._starting = None

    async def _spawn(self) -> None:
        self._proc = None
        await check_port_free(self.name, self.spec.proxy)
        self.log.clear()
        self._exited = asyncio.Event()
        self._wake = asyncio.Event()
        self.exit_code = None
        # The parent's environment plus the model's env, minus variables that carry
        # swapproxy's own API keys (e.g. the source of a ${env.KEY} in apiKeys).
        env = {k: v for k, v in os.environ.items() if v not in self._secrets}
        env.update(self.spec.env)
        argv = [*self.spec.cmd, *(self._extra_argv(self.spec) if self._extra_argv is not None else ())]
        logger.info("%s: spawning %s", self.name, self._redactor.argv(argv))
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                start_new_session=True,  # own process group: stop() signals the whole tree
                preexec_fn=child_setup(os.getpid()),
            )
        except OSError as exc:
            raise ModelStartFailed(f"{self.name}: cannot run {argv[0]!r}: {exc.strerror or exc}") from None
        self._proc = proc
        self.spawned_at = asyncio.get_running_loop().time()
        for tracker in self._trackers:
            tracker.watch(proc.pid)
        assert proc.stdout is not None and proc.stderr is not None
        self._readers = [
            asyncio.ensure_future(self._read_lines(proc.stdout)),
            asyncio.ensure_future(self._read_lines(proc.stderr)),
        ]
        self._exit_watch = asyncio.ensure_future(self._watch_exit(proc))

    async def _read_lines(self, stream: asyncio.StreamReader) -> None:
        pending = b""
        while True:
            chunk = await stream.read(65536)
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                self._line(raw)
            while len(pending) > MAX_LINE_BYTES:  # an endless line: emit it in pieces
                self._line(pending[:MAX_LINE_BYTES])
                pending = pending[MAX_LINE_BYTES:]
        if pending:
            self._line(pending)

    def _line(self, raw: bytes) -> None:
        line = raw.rstrip(b"\r").decode("utf-8", errors="replace")
        if self._redactor:  # an upstream may print its own arguments, keys included
            line = self._redactor.text(line)
        self.log.append(line)
        if self._on_line is not None:
            self._on_line(self.name, line)
        if self.state is ProcessState.STARTING:
            seen = stage_of(line)
            if seen is not None and self.stage != "restoring slots":
                self.stage = later(self.stage, seen)
            if is_ready_hint(line):
                self._wake.set()

    async def _watch_exit(self, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        self.exit_code = code
        self._exited.set()
        self._wake.set()
        killpg(proc.pid, signal.SIGKILL)  # the leader is gone: take its stragglers too
        for tracker in self._trackers:
            tracker.unwatch(proc.pid)
        if self.state is ProcessState.READY:
            message = f"{self.name}: process exited unexpectedly with code {code}"
            self.last_error = ModelStartFailed(message, log_tail=self.log.tail(LOG_TAIL_LINES, LOG_TAIL_BYTES))
            self.change_state(ProcessState.FAILED, f"exited with code {code}")  # no request routed to it now
            await self._drain_readers()
            if self._proc is proc and self.state is ProcessState.FAILED:  # now with its very last lines
                self.last_error = ModelStartFailed(message, log_tail=self.log.tail(LOG_TAIL_LINES, LOG_TAIL_BYTES))

    async def _drain_readers(self, timeout: float = 0.5) -> None:
        """Let the output readers reach EOF so error messages hold the last lines."""
        if self._readers:
            await asyncio.wait(self._readers, timeout=timeout)

    async def _probe(self, url: str, timeout: float) -> bool:
        session = self._session
        if session is None or session.closed:
            if self._own_session is None or self._own_session.closed:
                self._own_session = aiohttp.ClientSession()
            session = self._own_session
        try:
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
                await resp.read()
                return resp.status == 200
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError):
            return False

    async def _wait_ready(self) -> None:
        loop = asyncio.get_running_loop()
        timeout = self.spec.health_check_timeout
        deadline = loop.time() + timeout
        endpoint = self.spec.check_endpoint
        url = self.spec.proxy + endpoint if endpoint else None
        schedule = probe_intervals()
        while True:
            delay = next(schedule)
            remaining = deadline - loop.time()
            if delay and not self._wake.is_set():
                try:
                    await asyncio.wait_for(self._wake.wait(), min(delay, max(remaining, 0)))
                except asyncio.TimeoutError:
                    pass
            if self._wake.is_set():
                # A hint ("model loaded", "listening") comes a few ms before /health turns
                # 200: probe now, and again at the short intervals, not the capped one.
                schedule = probe_intervals()
                next(schedule)
            self._wake.clear()  # a hint that arrives during the probe below wakes the next wait
            if self._exited.is_set():
                await self._drain_readers()
                raise ModelStartFailed(
                    f"{self.name}: process exited with code {self.exit_code} before becoming ready",
                    log_tail=self.log.tail(LOG_TAIL_LINES, LOG_TAIL_BYTES),
                )
            if url is None:
                return
            if loop.time() >= deadline:
                raise HealthCheckTimeout(
                    f"upstream health check timed out after {timeout:g}s",
                    log_tail=self.log.tail(LOG_TAIL_LINES, LOG_TAIL_BYTES),
                )
            if await self._probe(url, min(2.0, max(deadline - loop.time(), 0.05))):
                return

    # -- stop ------------------------------------------------------------------
    async def stop(self, reason: str = "") -> None:
        """Stop the process (aborting a start in progress); concurrent callers share one stop."""
        if self.state in (ProcessState.STOPPED, ProcessState.SHUTDOWN) and self._stopping is None:
            return
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._stop(reason))
        await asyncio.shield(self._stopping)

    async def _stop(self, reason: str) -> None:
        try:
            if self._starting is not None:
                starting = self._starting
                starting.cancel()
                try:
                    await starting
                except (asyncio.CancelledError, ModelStartFailed):
                    pass
            if self.state is ProcessState.FAILED:
                await self._kill_now()
                self.change_state(ProcessState.STOPPED, reason or "cleared failure")
                return
            if self.state in (ProcessState.STARTING, ProcessState.READY):
                self.change_state(ProcessState.STOPPING, reason)
                await self._terminate()
                self.change_state(ProcessState.STOPPED)
        finally:
            self._stopping = None

    async def _terminate(self) -> None:
        """cmdStop or SIGTERM to the group, wait up to unloadTimeout, then SIGKILL."""
        proc = self._proc
        if proc is None:
            return
        grace = self.spec.unload_timeout
        if not self._exited.is_set():
            if self.spec.cmd_stop:
                await run_cmd_stop(self.name, self.spec.cmd_stop, proc.pid, grace)
            else:
                killpg(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(self._exited.wait(), grace)
            except asyncio.TimeoutError:
                logger.warning("%s: still running %gs after stop request; killing", self.name, grace)
        await self._kill_now()

    async def _kill_now(self) -> None:
        """SIGKILL the group (if anything is left) and reap."""
        proc = self._proc
        if proc is None:
            return
        killpg(proc.pid, signal.SIGKILL)
        if proc.returncode is None:
            try:
                proc.kill()  # the leader too, should it have left its own group
            except ProcessLookupError:
                pass
        try:
            await asyncio.wait_for(self._exited.wait(), KILL_WAIT)
        except asyncio.TimeoutError:
            # Uninterruptible sleep (a wedged GPU driver, say): do not hold every swap hostage.
            logger.error("%s: pid %d did not exit %gs after SIGKILL; giving up on it", self.name, proc.pid, KILL_WAIT)
        await self._drain_readers()
        for task in self._readers:
            task.cancel()
        self._readers = []

    async def shutdown(self) -> None:
        """Stop for good: swapproxy is exiting."""
        if self.state is ProcessState.SHUTDOWN:
            return
        await self.stop("shutdown")
        if self.state in (ProcessState.STOPPED, ProcessState.FAILED):
            if self.state is ProcessState.FAILED:
                await self._kill_now()
            self.change_state(ProcessState.SHUTDOWN)
        if self._own_session is not None:
            await self._own_session.close()
