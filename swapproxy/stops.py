"""Stopping models: drains, unloads, TTL, and the events that announce every stop.

:class:`Stops` is the part of the :class:`~swapproxy.scheduler.Scheduler` that
stops models outside a swap (an operator's unload, a TTL) and the book-keeping
every stop shares: marking a model closed to new requests while it drains,
and announcing the stop to ``swap_listeners`` as a typed :class:`StopEvent`.
It is a base class of the scheduler, not used alone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable

from .background import Background
from .errors import ModelNotFound
from .learned import Learned
from .processes import ProcessLike
from .slots import ModelSlot, StopCause, StopEvent
from .states import ProcessState

__all__ = ["Stops"]

logger = logging.getLogger("swapproxy.scheduler")


class Stops:
    """Unload, TTL and the drain-then-stop they share (see :class:`~swapproxy.scheduler.Scheduler`)."""

    slots: dict[str, ModelSlot]
    background: Background
    learned: Learned
    #: Runs before a graceful stop of a ready model (the slot cache's save); bounded by itself.
    before_stop: Callable[[ProcessLike], Awaitable[None]] | None
    _saving: dict[ProcessLike, asyncio.Future[None]]
    swap_listeners: list[Callable[[StopEvent], None]]
    last_swap: StopEvent | None
    _closing: bool

    def _pump(self) -> None:  # the scheduler's: decide what may start now
        raise NotImplementedError

    async def _stop_gracefully(self, slot: ModelSlot, reason: str) -> None:
        """Stop a drained model: its slots saved first (``before_stop``, bounded), its stop time learned.

        Two stops of one process at once (a swap and an unload) share the one save.
        """
        proc = slot.process
        loop = asyncio.get_running_loop()
        began = loop.time()
        if self.before_stop is not None and proc.state is ProcessState.READY:
            saving = self._saving.get(proc)
            if saving is None:
                saving = self._saving[proc] = asyncio.ensure_future(self.before_stop(proc))
                saving.add_done_callback(lambda _: self._saving.pop(proc, None))
            await asyncio.shield(saving)
        await proc.stop(reason)
        self.learned.record_stop(proc.spec, loop.time() - began)

    def slot(self, model_id: str) -> ModelSlot:
        try:
            return self.slots[model_id]
        except KeyError:
            raise ModelNotFound(model_id) from None

    # -- stopping -------------------------------------------------------------------------------
    def _mark(self, victims: Iterable[ModelSlot]) -> None:
        for slot in victims:
            slot.evictors += 1
            slot.not_evicting.clear()

    def _unmark(self, victims: Iterable[ModelSlot]) -> None:
        for slot in victims:
            slot.evictors -= 1
            if slot.evictors == 0:
                slot.not_evicting.set()

    def _announce(self, event: StopEvent) -> None:
        if event.cause is StopCause.SWAP:
            self.last_swap = event
        for listener in self.swap_listeners:
            listener(event)

    async def _drain_and_stop(self, victims: list[ModelSlot], cause: StopCause, reason: str, *,
                              drain: bool = True) -> None:
        """Wait for the (marked) victims' in-flight requests, then stop them; unmark at the end.

        ``drain=False`` (a forced unload) stops them at once: their in-flight requests
        see the upstream go and end with an error. Cancelling this (the client left)
        does not cancel a stop already under way.
        """
        try:
            for slot in victims if drain else ():
                await slot.idle.wait()
            logger.info("%s: stopping %s", reason, ", ".join(s.process.name for s in victims))
            await asyncio.gather(*(self._stop_gracefully(slot, reason) if drain else slot.process.stop(reason)
                                   for slot in victims))
        finally:
            self._unmark(victims)
        self._announce(StopEvent(cause, reason, tuple(s.process.name for s in victims)))
        self._pump()

    async def unload(self, model_id: str, reason: str = "unload", *, force: bool = False) -> bool:
        """Stop one model once its in-flight requests finish (at once with ``force``).

        False if it was not running. A forced unload cuts the requests in flight: an
        operator's way to free a GPU from a runaway generation now. Requests waiting
        for the model start it again afterwards.
        """
        slot = self.slot(model_id)
        if not slot.active and slot.process.state is not ProcessState.FAILED:
            return False
        if slot.process.state is ProcessState.FAILED and not force:
            await slot.process.stop(reason)  # clears the failure
            return True
        self._mark([slot])
        if force and slot.inflight:
            logger.warning("%s: forced, cutting %d request(s) in flight on %s", reason, slot.inflight, model_id)
        await self._drain_and_stop([slot], StopCause.UNLOAD, reason, drain=not force)
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
        if slot.inflight or slot.evicting or slot.process.state is not ProcessState.READY:
            return
        logger.info("%s: idle for %gs, unloading (ttl)", model_id, slot.process.spec.ttl)
        self._mark([slot])
        self.background.spawn(self._drain_and_stop([slot], StopCause.TTL, "ttl expired"))
