"""Scheduler: admission, the wait queue, leases, drains, TTL — over the processes of every model.

A request *acquires* its model before it is proxied and *releases* its
:class:`Lease` after the last byte; in between the model counts it in flight.
Which models must stop for another to run is the policy's answer
(:func:`swapproxy.policy.evictions`); the scheduler does the waiting and the
stopping:

* A model that is starting is joined, never started twice.
* A swap never cuts a request in flight: a model chosen for eviction is
  closed to new requests at once, and stopped only when its in-flight count
  reaches zero. Drains happen outside the queue's lock, so a long drain holds
  up only the requests that need that model gone.
* Swaps are decided one at a time under a FIFO lock, so waiting requests are
  served in arrival order; a request whose client leaves while waiting gives
  up its place (its task is cancelled out of the lock's queue).
* ``concurrencyLimit`` counts queued plus in-flight requests per model; above
  it the request is refused with 429 at once.
* TTL counts from the end of the last request and is disarmed while any
  request is in flight.
* A reload (:meth:`Scheduler.apply_config`, diff from :mod:`swapproxy.config_diff`)
  keeps unchanged models running; a changed running model is replaced when next
  requested, after its in-flight requests finish.

Failures (circuit breaker, persistent restarts) are handled by
:class:`~swapproxy.failures.FailureHandler`, which listens to state changes.
Every stop is announced to ``swap_listeners`` as a typed :class:`StopEvent`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

from .background import Background
from .config import Config
from .config_diff import diff_models
from .errors import ModelNotFound, ShuttingDown, TooManyRequests
from .failures import FailureHandler
from .policy import evictions
from .processes import ProcessHub, ProcessLike
from .slots import ACTIVE, Lease, ModelSlot, StopCause, StopEvent
from .states import ProcessState

__all__ = ["Scheduler", "ModelSlot", "Lease", "StopCause", "StopEvent"]

logger = logging.getLogger(__name__)


class Scheduler:
    """Decides which upstreams run, and hands requests a ready one."""

    def __init__(self, config: Config, hub: ProcessHub, background: Background | None = None) -> None:
        self.config = config
        self.hub = hub
        self.background = background or Background()
        self.failures = FailureHandler(lambda: self.config, self.is_current, self._restart, self.background)
        hub.add_listener(self.failures.on_state_change)
        self.slots: dict[str, ModelSlot] = {mid: ModelSlot(hub.new(spec)) for mid, spec in config.models.items()}
        self._retired: set[ModelSlot] = set()  # removed by a reload, still draining or stopping
        self._lock = asyncio.Lock()  # asyncio.Lock wakes waiters in FIFO order
        self._closing = False
        self.preloaded = asyncio.Event()  # set once hooks.on_startup.preload has run
        self.last_swap: StopEvent | None = None
        self.swap_listeners: list[Callable[[StopEvent], None]] = []

    # -- queries ----------------------------------------------------------------------------
    def slot(self, model_id: str) -> ModelSlot:
        try:
            return self.slots[model_id]
        except KeyError:
            raise ModelNotFound(model_id) from None

    def is_current(self, proc: ProcessLike) -> bool:
        """Whether ``proc`` is its model's process now (not one a reload retired or replaced)."""
        slot = self.slots.get(proc.name)
        return slot is not None and slot.process is proc

    def running(self) -> list[str]:
        """Models whose process is starting or ready, in config order."""
        return [mid for mid, slot in self.slots.items() if slot.process.state in ACTIVE]

    def queue_depth(self) -> int:
        return sum(slot.waiting for slot in self.slots.values())

    def evictions_for(self, model_id: str) -> list[str]:
        """The names of the models that must stop before ``model_id`` may run."""
        return [slot.process.name for slot in self._victims_for(model_id)]

    def _victims_for(self, model_id: str) -> list[ModelSlot]:
        active = [mid for mid, slot in self.slots.items() if slot.active]
        out = [self.slots[mid] for mid in evictions(self.config, model_id, active)]
        # Models a reload removed still hold memory until they have drained and stopped.
        out.extend(slot for slot in self._retired if slot.active)
        return out

    # -- acquire / release ------------------------------------------------------------------
    async def acquire(self, model_id: str) -> Lease:
        """Make ``model_id`` ready and count one request in flight on it until the lease is released."""
        if self._closing:
            raise ShuttingDown("swapproxy is shutting down")
        slot = self.slot(model_id)
        self._admit(model_id, slot)
        self.failures.check(slot.process)
        victims: list[ModelSlot] = []
        if not slot.evicting and slot.pending is None and slot.process.state in ACTIVE:
            # Fast path: running (or starting after its evictions were done): join it.
            self._enter(slot)
        else:
            victims = await self._reserve(model_id, slot)
        lease = Lease(slot, self._leave)
        try:
            # Outside the lock: a long drain holds up only the requests that need these
            # models gone, never requests for other models or an operator's unload.
            await self._drain_and_stop(victims, StopCause.SWAP, f"swap to {model_id}", target=model_id)
            await lease.process.start()
        except BaseException:
            lease.release()
            raise
        return lease

    @staticmethod
    def _admit(model_id: str, slot: ModelSlot) -> None:
        """429 when the model's requests (queued plus in flight) reach its concurrencyLimit."""
        limit = slot.process.spec.concurrency_limit
        if slot.inflight + slot.waiting >= limit:
            raise TooManyRequests(
                f"model '{model_id}' has reached its concurrency limit of {limit} requests", retry_after=1
            )

    def acquire_ready(self, model_id: str) -> Lease | None:
        """A lease on ``model_id`` only if it is ready and nothing is evicting or replacing it;
        None otherwise. Never starts, swaps or queues (``upstream.ignorePaths``, ComfyUI's paths)."""
        if self._closing:
            raise ShuttingDown("swapproxy is shutting down")
        slot = self.slot(model_id)
        if slot.process.state is not ProcessState.READY or slot.evicting or slot.pending is not None:
            return None
        self._admit(model_id, slot)
        self._enter(slot)
        return Lease(slot, self._leave)

    async def _reserve(self, model_id: str, slot: ModelSlot) -> list[ModelSlot]:
        """Under the FIFO lock: choose the victims and mark them, and count us in flight on ``slot``.

        A model that is itself being evicted cannot be reserved until that eviction is
        over (or abandoned): that rule is what keeps two swaps from waiting on each other.
        A model whose definition a reload changed is first drained and stopped — outside
        the lock, so that its long requests hold up no other model's swaps or unloads.
        """
        slot.waiting += 1
        try:
            while True:
                replace = False
                async with self._lock:
                    if self._closing:
                        raise ShuttingDown("swapproxy is shutting down")
                    if self.slots.get(model_id) is not slot:
                        raise ModelNotFound(model_id)  # removed by a reload while we waited
                    if not slot.evicting:
                        if slot.pending is None:
                            victims = self._victims_for(model_id)
                            self._mark(victims)
                            self._enter(slot)  # reserve before the lock goes, so nobody evicts it meanwhile
                            return victims
                        self._mark([slot])  # closed to new requests from now on
                        replace = True
                    gate = slot.not_evicting
                if replace:
                    await self._replace_pending(model_id, slot)
                else:
                    await gate.wait()  # our model is on its way out: ask again once it has gone
        finally:
            slot.waiting -= 1

    async def _replace_pending(self, model_id: str, slot: ModelSlot) -> None:
        """Drain and stop a (marked) model's old process, then swap in its new definition."""
        reason = f"config of {model_id} changed"
        await self._drain_and_stop([slot], StopCause.RELOAD, reason, unmark=False)
        try:
            if slot.pending is not None and slot.process.state in (ProcessState.STOPPED, ProcessState.FAILED):
                self._swap_in_pending(slot)
        finally:
            self._unmark([slot])

    async def load(self, model_id: str) -> None:
        """An operator's explicit load: clears an open circuit breaker, then starts the model."""
        self.failures.clear(self.slot(model_id).process)
        (await self.acquire(model_id)).release()

    def _leave(self, slot: ModelSlot) -> None:
        """A request is finished (or gave up): one fewer in flight on ``slot``."""
        assert slot.inflight > 0, "release without a matching acquire"
        slot.inflight -= 1
        if slot.inflight == 0:
            slot.idle.set()
            if self.slots.get(slot.process.name) is slot:
                self._arm_ttl(slot.process.name, slot)

    def _enter(self, slot: ModelSlot) -> None:
        slot.inflight += 1
        slot.idle.clear()
        if slot.ttl_handle is not None:
            slot.ttl_handle.cancel()
            slot.ttl_handle = None

    async def _restart(self, model_id: str) -> None:
        (await self.acquire(model_id)).release()

    # -- eviction -----------------------------------------------------------------------------
    def _mark(self, victims: Iterable[ModelSlot]) -> None:
        for slot in victims:
            slot.evictors += 1
            slot.not_evicting.clear()

    def _unmark(self, victims: Iterable[ModelSlot]) -> None:
        for slot in victims:
            slot.evictors -= 1
            if slot.evictors == 0:
                slot.not_evicting.set()

    async def _drain_and_stop(
        self, victims: list[ModelSlot], cause: StopCause, reason: str, *, target: str | None = None,
        drain: bool = True, unmark: bool = True,
    ) -> None:
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
            if unmark:
                self._unmark(victims)
        event = StopEvent(cause, reason, tuple(s.process.name for s in victims), target)
        if cause is StopCause.SWAP:
            self.last_swap = event
        for listener in self.swap_listeners:
            listener(event)

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
        await self._drain_and_stop([slot], StopCause.UNLOAD, reason, drain=not force)  # no lock held
        return True

    async def unload_all(self, reason: str = "unload", *, force: bool = False) -> list[str]:
        stopped = []
        for model_id in list(self.slots):
            if await self.unload(model_id, reason, force=force):
                stopped.append(model_id)
        return stopped

    # -- TTL ------------------------------------------------------------------------------------
    def _arm_ttl(self, model_id: str, slot: ModelSlot) -> None:
        ttl = slot.process.spec.ttl
        if ttl <= 0 or self._closing:
            return
        if slot.ttl_handle is not None:
            slot.ttl_handle.cancel()
        slot.ttl_handle = asyncio.get_running_loop().call_later(ttl, self._ttl_expired, model_id)

    def _ttl_expired(self, model_id: str) -> None:
        slot = self.slots.get(model_id)
        if slot is None:
            return
        slot.ttl_handle = None
        if slot.inflight or slot.process.state is not ProcessState.READY:
            return
        self.background.spawn(self._ttl_unload(model_id))

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
        await self._drain_and_stop([slot], StopCause.TTL, "ttl expired")

    # -- reload -----------------------------------------------------------------------------------
    def _swap_in_pending(self, slot: ModelSlot) -> None:
        assert slot.pending is not None
        old, slot.process, slot.pending = slot.process, slot.pending, None
        self.failures.forget(old)
        self.background.spawn(old.shutdown())  # already stopped: this only marks it SHUTDOWN

    async def apply_config(self, new: Config) -> dict[str, list[str]]:
        """Move to ``new`` without restarting what did not change; returns what happened, by model id.

        An unchanged model keeps its process (same PID) and takes the new settings at
        once. A changed model that is running is replaced when next requested, after its
        in-flight requests finish; one that is not running is replaced now. A removed
        model is stopped once its in-flight requests finish.
        """
        async with self._lock:  # no swap decision sees half a reload
            diff = diff_models({mid: slot.process.spec for mid, slot in self.slots.items()}, new)
            self.config = new
            old_slots, self.slots = self.slots, {}
            for model_id, spec in new.models.items():
                slot = old_slots.pop(model_id, None)
                if slot is None:
                    slot = ModelSlot(self.hub.new(spec))
                elif model_id in diff.kept:
                    slot.process.spec = spec
                    if slot.pending is not None:  # changed, then changed back
                        self.background.spawn(slot.pending.shutdown())
                        slot.pending = None
                else:
                    if slot.pending is not None:
                        self.background.spawn(slot.pending.shutdown())
                    slot.pending = self.hub.new(spec)
                    if not slot.active:  # nothing to drain: replace it now
                        if slot.process.state is ProcessState.FAILED:
                            await slot.process.stop("config changed")
                        self._swap_in_pending(slot)
                self.slots[model_id] = slot
            for slot in old_slots.values():
                self._retired.add(slot)
                self.failures.forget(slot.process)
                self.background.spawn(self._retire(slot))
        report = diff.report()
        logger.info("config applied: %s", ", ".join(f"{k} {v}" for k, v in report.items() if v) or "no models")
        return report

    async def _retire(self, slot: ModelSlot) -> None:
        if slot.ttl_handle is not None:
            slot.ttl_handle.cancel()
        await slot.idle.wait()  # in-flight requests finish first
        await slot.process.shutdown()
        self._retired.discard(slot)

    # -- lifecycle --------------------------------------------------------------------------------
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
        self.failures.closing = True
        for slot in self.slots.values():
            if slot.ttl_handle is not None:
                slot.ttl_handle.cancel()
        self.background.cancel_all()

    async def shutdown(self) -> None:
        """Stop every upstream now (in-flight requests are not waited for)."""
        self.close()
        procs = [slot.process for slot in (*self.slots.values(), *self._retired)]
        procs += [slot.pending for slot in self.slots.values() if slot.pending is not None]
        await asyncio.gather(*(proc.shutdown() for proc in procs), return_exceptions=True)
