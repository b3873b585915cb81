"""Swapper: the swap policy over the set of managed upstream processes.

A request *acquires* its model before it is proxied and *releases* it after
the last byte. In between, the model counts the request as in flight.

Rules (llama-swap's, see DESIGN.md):

* Every model belongs to a group (models in no configured group share the
  implicit ``(default)`` group: swap and exclusive, so one runs at a time).
  Starting a member of group G stops the other running members of G when
  G.swap, and the running members of every other non-persistent group when
  G.exclusive.
* A model that is starting is joined, never started twice.
* A swap never cuts a request in flight: a model chosen for eviction is
  closed to new requests at once, and stopped only when its in-flight count
  reaches zero.
* Swaps are decided one at a time under a FIFO lock, so waiting requests are
  served in arrival order; a request whose client leaves while waiting gives
  up its place (its task is cancelled out of the lock's queue).
* ``concurrencyLimit`` counts queued plus in-flight requests per model; above
  it the request is refused with 429 at once.
* TTL counts from the end of the last request and is disarmed while any
  request is in flight.
* Circuit breaker: after ``circuitBreaker.failures`` start failures within
  ``circuitBreaker.window`` seconds, requests get 503 at once (with the last
  error and log lines) until the window has passed or an operator loads the
  model explicitly (:meth:`Swapper.load`). Below that count, the next request
  simply tries again.
* Members of a ``persistent`` group that crash (or fail to restart) are
  restarted on their own, with a back-off of 1, 2, 4 ... 30 s.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from .config import Config, ModelConfig
from .errors import ModelNotFound, ModelStartFailed, ShuttingDown, TooManyRequests
from .process import ManagedProcess
from .states import ProcessState

__all__ = ["Swapper", "ModelSlot", "Lease"]

logger = logging.getLogger(__name__)

_ACTIVE = (ProcessState.STARTING, ProcessState.READY)
#: Holding (or about to hold, or still releasing) its resources: a swap must wait for it.
_OCCUPYING = (ProcessState.STARTING, ProcessState.READY, ProcessState.STOPPING)


class Lease:
    """One request's hold on a ready model; :meth:`release` it exactly once when done.

    It holds the slot itself, not the model's name, so a release still reaches
    the right book-keeping after a reload removed (or removed and re-added) the model.
    """

    __slots__ = ("_swapper", "slot", "process", "_released")

    def __init__(self, swapper: Swapper, slot: ModelSlot) -> None:
        self._swapper = swapper
        self.slot = slot
        self.process = slot.process
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._swapper._leave(self.slot)


def _definition(spec: ModelConfig) -> tuple[object, ...]:
    """What makes a running process stale when it changes."""
    return (spec.cmd, tuple(sorted(spec.env.items())), spec.proxy, spec.check_endpoint)


@dataclass(eq=False)
class ModelSlot:
    """Book-keeping the swap policy keeps for one model."""

    process: ManagedProcess
    inflight: int = 0
    waiting: int = 0
    evictors: int = 0  # swaps (or unloads) waiting to stop this model
    not_evicting: asyncio.Event = field(default_factory=asyncio.Event)
    last_used: float = 0.0
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    ttl_handle: asyncio.TimerHandle | None = None
    failures: collections.deque[float] = field(default_factory=collections.deque)  # start failures (loop time)
    breaker_until: float = 0.0  # loop time until which requests are refused at once
    restarts: int = 0  # consecutive automatic restarts of a persistent model
    restart_task: asyncio.Task[None] | None = None
    pending: ManagedProcess | None = None  # a changed definition, swapped in when next needed

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
        return self.process.state in _OCCUPYING or self.inflight > 0


class Swapper:
    """Decides which upstreams run, and hands requests a ready one."""

    def __init__(
        self,
        config: Config,
        processes: Mapping[str, ManagedProcess],
        factory: Callable[[ModelConfig], ManagedProcess] | None = None,
    ) -> None:
        self.config = config
        self.slots: dict[str, ModelSlot] = {mid: ModelSlot(proc) for mid, proc in processes.items()}
        self._retired: set[ModelSlot] = set()  # removed by a reload, still draining or stopping
        self._factory = factory or (lambda spec: ManagedProcess(spec))
        #: Called with each process the swapper creates after start-up (reloads).
        self.process_listeners: list[Callable[[ManagedProcess], None]] = []
        self._lock = asyncio.Lock()  # asyncio.Lock wakes waiters in FIFO order
        self._closing = False
        self.preloaded = asyncio.Event()  # set once hooks.on_startup.preload has run
        self.last_swap: tuple[float, str] | None = None  # (wall time, model started by it)
        self.swap_listeners: list[Callable[[str, list[str]], None]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        for slot in self.slots.values():
            slot.process.add_listener(self._on_state_change)

    # -- queries ----------------------------------------------------------------
    def slot(self, model_id: str) -> ModelSlot:
        try:
            return self.slots[model_id]
        except KeyError:
            raise ModelNotFound(model_id) from None

    def running(self) -> list[str]:
        """Models whose process is starting or ready, in config order."""
        return [mid for mid, slot in self.slots.items() if slot.process.state in _ACTIVE]

    def queue_depth(self) -> int:
        return sum(slot.waiting for slot in self.slots.values())

    def evictions_for(self, model_id: str) -> list[str]:
        """The names of the models that must stop before ``model_id`` may run."""
        return [slot.process.name for slot in self._victims_for(model_id)]

    def _victims_for(self, model_id: str) -> list[ModelSlot]:
        group = self.config.group_of(model_id)
        out: list[ModelSlot] = []
        for other, slot in self.slots.items():
            if other == model_id or not slot.active:
                continue
            other_group = self.config.group_of(other)
            if other_group.name == group.name:
                if group.swap:
                    out.append(slot)
            elif group.exclusive and not other_group.persistent:
                out.append(slot)
        # Models a reload removed still hold memory until they have drained and stopped.
        out.extend(slot for slot in self._retired if slot.active)
        return out

    # -- acquire / release ----------------------------------------------------------
    @asynccontextmanager
    async def lease(self, model_id: str) -> AsyncIterator[ManagedProcess]:
        """``async with swapper.lease(m) as proc``: m is ready and counted in flight."""
        lease = await self.acquire(model_id)
        try:
            yield lease.process
        finally:
            lease.release()

    async def acquire(self, model_id: str) -> Lease:
        """Make ``model_id`` ready and count one request in flight on it until the lease is released."""
        if self._closing:
            raise ShuttingDown("swapproxy is shutting down")
        slot = self.slot(model_id)
        limit = slot.process.spec.concurrency_limit
        if slot.inflight + slot.waiting >= limit:
            raise TooManyRequests(
                f"model '{model_id}' has reached its concurrency limit of {limit} requests", retry_after=1
            )
        self._check_breaker(model_id, slot)
        victims: list[ModelSlot] = []
        if not slot.evicting and slot.pending is None and slot.process.state in _ACTIVE:
            # Fast path: running (or starting after its evictions were done): join it.
            self._enter(slot)
        else:
            victims = await self._reserve(model_id, slot)
        lease = Lease(self, slot)
        try:
            # Outside the lock: a long drain holds up only the requests that need these
            # models gone, never requests for other models or an operator's unload.
            await self._drain_and_stop(victims, reason=f"swap to {model_id}")
            await lease.process.start()
        except BaseException:
            lease.release()
            raise
        return lease

    async def _reserve(self, model_id: str, slot: ModelSlot) -> list[ModelSlot]:
        """Under the FIFO lock: choose the victims and mark them, and count us in flight on ``slot``.

        A model that is itself being evicted cannot be reserved until that eviction is
        over (or abandoned): that rule is what keeps two swaps from waiting on each other.
        """
        slot.waiting += 1
        try:
            while True:
                async with self._lock:
                    if self._closing:
                        raise ShuttingDown("swapproxy is shutting down")
                    if self.slots.get(model_id) is not slot:
                        raise ModelNotFound(model_id)  # removed by a reload while we waited
                    if not slot.evicting:
                        if slot.pending is not None:
                            # Its definition changed in a reload: drain and stop the old process.
                            self._mark([slot])
                            await self._drain_and_stop([slot], reason=f"config of {model_id} changed")
                            self._swap_in_pending(slot)
                        victims = self._victims_for(model_id)
                        self._mark(victims)
                        self._enter(slot)  # reserve before the lock goes, so nobody evicts it meanwhile
                        return victims
                    gate = slot.not_evicting
                await gate.wait()  # our model is on its way out: ask again once it has gone
        finally:
            slot.waiting -= 1

    async def load(self, model_id: str) -> None:
        """An operator's explicit load: clears an open circuit breaker, then starts the model."""
        slot = self.slot(model_id)
        slot.failures.clear()
        slot.breaker_until = 0.0
        (await self.acquire(model_id)).release()

    def _leave(self, slot: ModelSlot) -> None:
        """A request is finished (or gave up): one fewer in flight on ``slot``."""
        assert slot.inflight > 0, "release without a matching acquire"
        slot.inflight -= 1
        if slot.inflight == 0:
            loop = asyncio.get_running_loop()
            slot.last_used = loop.time()
            slot.idle.set()
            if self.slots.get(slot.process.name) is slot:
                self._arm_ttl(slot.process.name, slot)

    def _enter(self, slot: ModelSlot) -> None:
        slot.inflight += 1
        slot.idle.clear()
        if slot.ttl_handle is not None:
            slot.ttl_handle.cancel()
            slot.ttl_handle = None

    # -- eviction ---------------------------------------------------------------------
    def _mark(self, victims: list[ModelSlot]) -> None:
        for slot in victims:
            slot.evictors += 1
            slot.not_evicting.clear()

    def _unmark(self, victims: list[ModelSlot]) -> None:
        for slot in victims:
            slot.evictors -= 1
            if slot.evictors == 0:
                slot.not_evicting.set()

    async def _drain_and_stop(self, victims: list[ModelSlot], reason: str, *, drain: bool = True) -> None:
        """Wait for the (marked) victims' in-flight requests, then stop them; unmark at the end.

        ``drain=False`` (a forced unload) stops them at once: their in-flight requests
        see the upstream go and end with an error. Cancelling this (the client left)
        does not cancel a stop already under way; a process still STOPPING counts as
        active, so the next swap waits for it too.
        """
        if not victims:
            return
        try:
            for slot in victims if drain else ():
                await slot.idle.wait()
            logger.info("%s: stopping %s", reason, ", ".join(s.process.name for s in victims))
            await asyncio.gather(*(slot.process.stop(reason) for slot in victims))
        finally:
            self._unmark(victims)
        if reason.startswith("swap to "):
            self.last_swap = (time.time(), reason[len("swap to "):])
        for listener in self.swap_listeners:
            listener(reason, [s.process.name for s in victims])

    async def unload(self, model_id: str, reason: str = "unload", *, force: bool = False) -> bool:
        """Stop one model once its in-flight requests finish (at once with ``force``).

        False if it was not running. A forced unload cuts the requests in flight: an
        operator's way to free a GPU from a runaway generation now. It does not queue
        for the swap lock either (a swap may hold it while it drains a long request);
        marking needs no lock, as it does not wait. A request that had reserved the
        model but not started it yet starts it again afterwards.
        """
        slot = self.slot(model_id)
        if not slot.active and slot.process.state is not ProcessState.FAILED:
            return False
        if force:
            self._mark([slot])
        else:
            async with self._lock:
                if slot.process.state is ProcessState.FAILED:
                    await slot.process.stop(reason)
                    return True
                self._mark([slot])
        if force and slot.inflight:
            logger.warning("%s: forced, cutting %d request(s) in flight on %s", reason, slot.inflight, model_id)
        await self._drain_and_stop([slot], reason, drain=not force)  # a long drain does not hold the lock
        return True

    async def unload_all(self, reason: str = "unload", *, force: bool = False) -> list[str]:
        stopped = []
        for model_id in list(self.slots):
            if await self.unload(model_id, reason, force=force):
                stopped.append(model_id)
        return stopped

    # -- failures: circuit breaker and persistent restarts ----------------------------------
    def _check_breaker(self, model_id: str, slot: ModelSlot) -> None:
        if slot.process.state is not ProcessState.FAILED:
            return
        remaining = slot.breaker_until - asyncio.get_running_loop().time()
        if remaining <= 0:
            return
        last = slot.process.last_error
        reason = last.reason if last is not None else "start failed"
        raise ModelStartFailed(
            f"{model_id} failed to start {len(slot.failures)} times within {self.config.breaker_window:g}s; "
            f"not retrying for {remaining:.0f}s (load it explicitly to retry now). Last error: {reason}",
            log_tail=last.log_tail if last is not None else (),
        )

    def _on_state_change(self, proc: ManagedProcess, old: ProcessState, new: ProcessState) -> None:
        slot = self.slots.get(proc.name)
        if slot is None or slot.process is not proc:
            return  # a retired or replaced process: no breaker, no restarts
        if new is ProcessState.READY:
            slot.failures.clear()
            return
        if new is not ProcessState.FAILED:
            return
        now = asyncio.get_running_loop().time()
        if old is ProcessState.READY and proc.ready_at is not None and now - proc.ready_at > 60:
            slot.restarts = 0  # it had been up a while: not a crash loop
        if old is ProcessState.STARTING:
            window = self.config.breaker_window
            slot.failures.append(now)
            while slot.failures and slot.failures[0] < now - window:
                slot.failures.popleft()
            limit = self.config.breaker_failures
            if limit and len(slot.failures) >= limit:
                slot.breaker_until = now + window
                logger.error("%s: %d start failures within %gs; circuit breaker open for %gs",
                             proc.name, len(slot.failures), window, window)
        if self.config.group_of(proc.name).persistent and not self._closing:
            self._schedule_restart(proc.name, slot, now)

    def _schedule_restart(self, model_id: str, slot: ModelSlot, now: float) -> None:
        if slot.restart_task is not None and not slot.restart_task.done():
            return
        delay = max(min(2.0**slot.restarts, 30.0), slot.breaker_until - now)
        slot.restarts += 1
        logger.warning("%s: persistent model failed; restarting in %.0fs", model_id, delay)
        slot.restart_task = asyncio.ensure_future(self._restart_later(model_id, slot, delay))
        self._tasks.add(slot.restart_task)
        slot.restart_task.add_done_callback(self._tasks.discard)

    async def _restart_later(self, model_id: str, slot: ModelSlot, delay: float) -> None:
        await asyncio.sleep(delay)
        slot.restart_task = None
        if self._closing or slot.process.state is not ProcessState.FAILED:
            return
        try:
            (await self.acquire(model_id)).release()
        except ModelStartFailed:
            return  # the FAILED transition scheduled the next attempt

    # -- TTL --------------------------------------------------------------------------
    def _arm_ttl(self, model_id: str, slot: ModelSlot) -> None:
        ttl = slot.process.spec.ttl
        if ttl <= 0 or self._closing:
            return
        loop = asyncio.get_running_loop()
        if slot.ttl_handle is not None:
            slot.ttl_handle.cancel()
        slot.ttl_handle = loop.call_later(ttl, self._ttl_expired, model_id)

    def _ttl_expired(self, model_id: str) -> None:
        slot = self.slots.get(model_id)
        if slot is None:
            return
        slot.ttl_handle = None
        if slot.inflight or slot.process.state is not ProcessState.READY:
            return
        task = asyncio.ensure_future(self._ttl_unload(model_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _ttl_unload(self, model_id: str) -> None:
        slot = self.slots.get(model_id)
        if slot is None:
            return
        async with self._lock:
            # Re-check under the lock: a request may have arrived since the timer fired.
            if slot.inflight or slot.process.state is not ProcessState.READY or slot.ttl_handle is not None:
                return
            logger.info("%s: idle for %gs, unloading (ttl)", model_id, slot.process.spec.ttl)
            self._mark([slot])
        await self._drain_and_stop([slot], reason="ttl expired")

    # -- reload -------------------------------------------------------------------------
    def _new_process(self, spec: ModelConfig) -> ManagedProcess:
        proc = self._factory(spec)
        proc.add_listener(self._on_state_change)
        for listener in self.process_listeners:
            listener(proc)
        return proc

    def _swap_in_pending(self, slot: ModelSlot) -> None:
        assert slot.pending is not None
        old, slot.process, slot.pending = slot.process, slot.pending, None
        slot.failures.clear()
        slot.breaker_until = 0.0
        task = asyncio.ensure_future(old.shutdown())  # already stopped: this only marks it SHUTDOWN
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def apply_config(self, new: Config) -> dict[str, list[str]]:
        """Move to ``new`` without restarting what did not change.

        A model whose command (after macros), env, proxy and checkEndpoint are
        unchanged keeps its process (same PID) and takes the new settings (ttl,
        aliases, filters, ...) at once. A changed model that is running is
        replaced when next requested, after its in-flight requests finish; one
        that is not running is replaced now. A removed model is stopped once its
        in-flight requests finish. Returns what happened, by model id.
        """
        report: dict[str, list[str]] = {"kept": [], "changed": [], "added": [], "removed": []}
        async with self._lock:  # no swap decision sees half a reload
            self.config = new
            old_slots, self.slots = self.slots, {}
            for model_id, spec in new.models.items():
                slot = old_slots.pop(model_id, None)
                if slot is None:
                    slot = ModelSlot(self._new_process(spec))
                    report["added"].append(model_id)
                elif _definition(slot.process.spec) == _definition(spec):
                    slot.process.spec = spec
                    if slot.pending is not None:  # changed, then changed back
                        slot.pending = None
                    report["kept"].append(model_id)
                else:
                    report["changed"].append(model_id)
                    slot.pending = self._new_process(spec)
                    if not slot.active:  # nothing to drain: replace it now
                        if slot.process.state is ProcessState.FAILED:
                            await slot.process.stop("config changed")
                        self._swap_in_pending(slot)
                self.slots[model_id] = slot
            for model_id, slot in old_slots.items():
                report["removed"].append(model_id)
                self._retired.add(slot)
                task = asyncio.ensure_future(self._retire(slot))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        logger.info("config applied: %s", ", ".join(f"{k} {v}" for k, v in report.items() if v) or "no models")
        return report

    async def _retire(self, slot: ModelSlot) -> None:
        if slot.ttl_handle is not None:
            slot.ttl_handle.cancel()
        await slot.idle.wait()  # in-flight requests finish first
        await slot.process.shutdown()
        self._retired.discard(slot)

    # -- lifecycle ---------------------------------------------------------------------
    async def preload(self, models: Iterable[str]) -> None:
        """Start models at startup as if a request had asked (group rules apply)."""
        try:
            for model_id in models:
                try:
                    (await self.acquire(model_id)).release()
                except Exception as exc:  # a failed preload is logged; swapproxy keeps serving
                    logger.error("preload of %s failed: %s", model_id, exc)
        finally:
            self.preloaded.set()

    def close(self) -> None:
        """Refuse new requests and starts from now on (503); timers and restarts are cancelled."""
        self._closing = True
        for slot in self.slots.values():
            if slot.ttl_handle is not None:
                slot.ttl_handle.cancel()
        for task in list(self._tasks):
            task.cancel()

    async def shutdown(self) -> None:
        """Stop every upstream now (in-flight requests are not waited for)."""
        self.close()
        slots = [*self.slots.values(), *self._retired]
        await asyncio.gather(*(slot.process.shutdown() for slot in slots), return_exceptions=True)
