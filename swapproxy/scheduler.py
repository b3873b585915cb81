"""Scheduler: admission, the wait queue, swaps, leases, drains, TTL — over the processes of every model.

A request *acquires* its model before it is proxied and *releases* its
:class:`~swapproxy.slots.Lease` after the last byte; in between the model
counts it in flight. Which models must stop for another to run is the
policy's answer (:func:`swapproxy.policy.plan`); the scheduler decides *when*,
and does the waiting and the stopping:

* A request for a model that is ready and not being stopped is served at
  once, whatever waits in the queue (llama-swap's ``fifo``: ABCABC runs as
  AABBCC). Otherwise it waits in the queue with a :class:`~swapproxy.slots.Ticket`;
  the tickets of one model are served together by one swap.
* Among the models that wait, the next swap goes to the one waited for
  longest past ``maxWait``; else to the highest priority; else to the one with
  the most waiting requests per second of its (learned) start time — unless
  that would keep an older waiter past its ``maxWait``.
* A swap never cuts a request: the models it must stop are closed to new
  requests, drained, then stopped. While the waiting request is younger than
  ``maxWait``, busy models are left to drain on their own and keep serving;
  after that they are closed so that the swap happens. A model whose last
  request ended a moment ago lingers a little (a tenth of its start time, at
  most 1 s) before a swap stops it: the client that sends one request after
  another comes back. So no request waits longer than ``maxWait``, plus what
  remains of the requests already on the model it waits for, plus one swap.
* ``routing.scheduler.use: strict`` is today's baseline: arrival order, and
  the models to stop are closed at once (``maxWait`` 0).
* Swaps that stop nothing of each other's run side by side; a model that is
  starting is joined, never started twice. A swap whose last waiter leaves
  before anything was stopped is abandoned.
* ``concurrencyLimit`` counts queued plus in-flight requests per model; above
  it the request is refused with 429 at once. TTL counts from the end of the
  last request and is disarmed while any request is in flight.
* A reload (:meth:`Scheduler.apply_config`, diff from :mod:`swapproxy.config_diff`)
  keeps unchanged models running; a changed running model is replaced when
  next requested, after its in-flight requests finish.

The queue and the choice of the next model are in :mod:`swapproxy.waitqueue`;
unloads, TTL and the drain they share in :mod:`swapproxy.stops`, a reload's diff
applied in :mod:`swapproxy.replacements` (both base classes).
Failures (circuit breaker, persistent restarts) are handled by
:class:`~swapproxy.failures.FailureHandler`, which listens to state changes.
The learned start times (:class:`~swapproxy.learned.Learned`) are recorded
here. Every stop is announced to ``swap_listeners`` as a typed :class:`StopEvent`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable

from .background import Background
from .config import Config
from .errors import ShuttingDown, SwapProxyError, TooManyRequests
from .failures import FailureHandler
from .learned import Learned
from .policy import Occupant, Plan, Resources, plan
from .processes import ProcessHub, ProcessLike
from .slots import ACTIVE, Lease, ModelSlot, StopCause, StopEvent, Swap, Ticket
from .states import ProcessState
from .replacements import Replacements
from .stops import Stops
from .waitqueue import QueuedModel, WaitQueue, order_models, overtakes_too_long

__all__ = ["Scheduler", "ModelSlot", "Lease", "StopCause", "StopEvent"]

logger = logging.getLogger(__name__)

_GONE = (ProcessState.STOPPED, ProcessState.FAILED)
#: A model whose last request just ended is kept this share of its own start time (at most
#: LINGER_MAX s; LINGER_UNKNOWN s before its first start is learned) before a swap stops it: a
#: client that sends its requests one after another (Open WebUI's title, tags, follow-ups) comes
#: back within milliseconds, and the wait costs at most a tenth of the swap back it may save.
LINGER_SHARE, LINGER_MAX, LINGER_UNKNOWN = 0.1, 1.0, 0.05


class Scheduler(Stops, Replacements):
    """Decides which upstreams run, and when; hands requests a ready one."""

    def __init__(self, config: Config, hub: ProcessHub, background: Background | None = None, *,
                 learned: Learned | None = None, resources: Callable[[], Resources | None] | None = None) -> None:
        self.config = config
        self.hub = hub
        self.background = background or Background()
        self.learned = learned or Learned()
        self._resources = resources or (lambda: None)
        self.failures = FailureHandler(lambda: self.config, self.is_current, self._restart, self.background)
        hub.add_listener(self.failures.on_state_change)
        hub.add_listener(self._on_state)
        self.slots: dict[str, ModelSlot] = {mid: ModelSlot(hub.new(spec)) for mid, spec in config.models.items()}
        self._retired: set[ModelSlot] = set()  # removed by a reload, still draining or stopping
        self._queue = WaitQueue()  # by priority, then arrival (strict: arrival)
        self._swaps: dict[str, Swap] = {}  # by target
        self._wake: asyncio.TimerHandle | None = None  # when a waiter's maxWait runs out
        self._closing = False
        self.preloaded = asyncio.Event()  # set once hooks.on_startup.preload has run
        self.last_swap: StopEvent | None = None
        self.swap_listeners: list[Callable[[StopEvent], None]] = []
        self.before_stop: Callable[[ProcessLike], Awaitable[None]] | None = None  # e.g. the slot cache's save
        self._saving: dict[ProcessLike, asyncio.Future[None]] = {}

    # -- queries ----------------------------------------------------------------------------
    def is_current(self, proc: ProcessLike) -> bool:
        """Whether ``proc`` is its model's process now (not one a reload retired or replaced)."""
        slot = self.slots.get(proc.name)
        return slot is not None and slot.process is proc

    def running(self) -> list[str]:
        """Models whose process is starting or ready, in config order."""
        return [mid for mid, slot in self.slots.items() if slot.process.state in ACTIVE]

    def queue_depth(self) -> int:
        return sum(slot.waiting for slot in self.slots.values())

    def queue(self) -> list[QueuedModel]:
        """The models requests wait for, in the order of their first request in the queue."""
        now = asyncio.get_running_loop().time()
        return [QueuedModel.of(mid, tickets, now, self._swaps.get(mid))
                for mid, tickets in self._queue.by_model().items()]

    def evictions_for(self, model_id: str) -> list[str]:
        """The names of the models that must stop before ``model_id`` may run."""
        return [slot.process.name for slot in self._victims(model_id, self._plan(model_id))]

    def _plan(self, model_id: str) -> Plan:
        occupants = [
            Occupant(mid, busy=slot.inflight > 0, last_used=slot.last_used,
                     stopping=slot.process.state is ProcessState.STOPPING,
                     stop_cost=self.learned.expected_stop(slot.process.spec) or 0.0)
            for mid, slot in self.slots.items() if mid != model_id and (slot.active or mid in self._swaps)
        ]
        return plan(self.config, model_id, occupants, self._resources())

    def _victims(self, model_id: str, the_plan: Plan) -> list[ModelSlot]:
        out = [self.slots[mid] for mid in the_plan.evict]
        # Models a reload removed still hold memory until they have drained and stopped.
        out.extend(slot for slot in self._retired if slot.active)
        return out

    # -- acquire / release ------------------------------------------------------------------
    @property
    def _strict(self) -> bool:
        return self.config.scheduler.use == "strict"

    def _queued_before(self, model_id: str, position: int) -> bool:
        """strict: whether a request queued before ``position`` waits for a model that competes with ours."""
        return any(t.model != model_id and self._competes(t.model, model_id) for t in self._queue.before(position))

    def _competes(self, one: str, other: str) -> bool:
        """Whether ``one`` and ``other`` cannot both run: running either stops the other."""
        if one not in self.slots or other not in self.slots:
            return False
        return (other in self._plan(one).evict) or (one in self._plan(other).evict)

    def _open(self, slot: ModelSlot) -> bool:
        """Ready and taking requests: nothing is stopping or replacing it."""
        return slot.process.state is ProcessState.READY and not slot.evicting and slot.pending is None

    def admit(self, model_id: str) -> ModelSlot:
        """Raise what :meth:`acquire` refuses at once, before any wait: shutting down (503), the
        concurrency limit (429), a failed start's back-off or an open breaker (503)."""
        if self._closing:
            raise ShuttingDown("swapproxy is shutting down")
        slot = self.slot(model_id)
        self._admit(model_id, slot)
        self.failures.check(slot.process)
        return slot

    async def acquire(self, model_id: str) -> Lease:
        """Make ``model_id`` ready and count one request in flight on it until the lease is released."""
        slot = self.admit(model_id)
        if self._open(slot) and not (self._strict and self._queued_before(model_id, len(self._queue))):
            self._enter(slot)  # the fast path: ready, and nothing stops it
            return Lease(slot, self._leave)
        loop = asyncio.get_running_loop()
        ticket = Ticket(model_id, slot, self.config.scheduler.priority.get(model_id, 0), loop.time(),
                        loop.create_future())
        waits_for = self._waits_for(model_id, slot)
        self._queue.add(ticket, by_priority=not self._strict)
        self._pump()
        try:
            await ticket.future
        except asyncio.CancelledError:
            self._withdraw(ticket)
            raise
        lease = Lease(slot, self._leave)
        lease.waited, lease.waited_for = loop.time() - ticket.arrived, waits_for
        return lease

    def _waits_for(self, model_id: str, slot: ModelSlot) -> str:
        """What a request that must wait for ``model_id`` waits for (see :class:`Lease`)."""
        if slot.process.state is ProcessState.READY:
            return "queue"
        swap = self._swaps.get(model_id)
        if swap is not None:
            return "swap" if swap.victims else "start"
        return "swap" if self.evictions_for(model_id) else "start"

    def _grant(self, ticket: Ticket) -> None:
        self._queue.remove(ticket)
        self._enter(ticket.slot)
        ticket.future.set_result(None)

    @staticmethod
    def _admit(model_id: str, slot: ModelSlot) -> None:
        """429 when the model's requests (queued plus in flight) reach its concurrencyLimit."""
        limit = slot.process.spec.concurrency_limit
        if slot.inflight + slot.waiting >= limit:
            raise TooManyRequests(
                f"model '{model_id}' has reached its concurrency limit of {limit} requests", retry_after=1
            )

    def acquire_ready(self, model_id: str) -> Lease | None:
        """A lease on ``model_id`` only if it is ready and nothing is stopping or replacing it;
        None otherwise. Never starts, swaps or queues (``upstream.ignorePaths``, ComfyUI's paths)."""
        if self._closing:
            raise ShuttingDown("swapproxy is shutting down")
        slot = self.slot(model_id)
        if not self._open(slot):
            return None
        self._admit(model_id, slot)
        self._enter(slot)
        return Lease(slot, self._leave)

    def _fail(self, model_id: str, err: BaseException) -> None:
        """Every ticket waiting for ``model_id`` gets ``err``."""
        for ticket in self._queue.of(model_id):
            self._queue.remove(ticket)
            ticket.future.set_exception(err)
            ticket.future.exception()  # marked as seen: a waiter that already left must not log it

    def _withdraw(self, ticket: Ticket) -> None:
        """The waiter left: give back its place (or the lease it was just granted)."""
        if ticket.granted:
            self._leave(ticket.slot)
            return
        if ticket not in self._queue:
            return  # failed (the error was for it) or already given up
        ticket.future.cancel()
        self._queue.remove(ticket)
        swap = self._swaps.get(ticket.model)
        if swap is not None and not swap.stopping and swap.task is not None and not self._queue.of(ticket.model):
            swap.task.cancel()  # its last waiter left before anything was stopped: abandon it
        self._pump()

    async def load(self, model_id: str) -> None:
        """An operator's explicit load: clears an open circuit breaker, then starts the model."""
        self.failures.clear(self.slot(model_id).process)
        (await self.acquire(model_id)).release()

    def _leave(self, slot: ModelSlot) -> None:
        """A request is finished (or gave up): one fewer in flight on ``slot``."""
        assert slot.inflight > 0, "release without a matching acquire"
        slot.inflight -= 1
        if slot.inflight == 0:
            slot.last_used = asyncio.get_running_loop().time()
            slot.idle.set()
            if self.slots.get(slot.process.name) is slot:
                self._arm_ttl(slot.process.name, slot)
            if self._queue:
                self._pump()  # a model that had to drain may be idle now

    def _enter(self, slot: ModelSlot) -> None:
        slot.inflight += 1
        slot.idle.clear()
        if slot.ttl_handle is not None:
            slot.ttl_handle.cancel()
            slot.ttl_handle = None

    async def _restart(self, model_id: str) -> None:
        (await self.acquire(model_id)).release()

    def _on_state(self, proc: ProcessLike, old: ProcessState, new: ProcessState) -> None:
        if new is ProcessState.READY and proc.spawned_at is not None and proc.ready_at is not None:
            self.learned.record_start(proc.spec, proc.ready_at - proc.spawned_at)

    # -- deciding swaps ---------------------------------------------------------------------
    def _pump(self) -> None:
        """Serve what can be served, and start the swaps that may start now. Never waits."""
        if self._closing or not self._queue:
            return
        for ticket in self._queue:
            if self._open(ticket.slot) and not (self._strict and self._queued_before(ticket.model,
                                                                                     self._queue.index(ticket))):
                self._grant(ticket)
        waiting = self._queue.by_model()
        now = asyncio.get_running_loop().time()
        strict = self._strict
        cap = 0.0 if strict else self.config.scheduler.max_wait
        wake: float | None = None
        victims_of: dict[str, list[ModelSlot]] = {}

        def involved(model_id: str) -> set[str]:
            if model_id not in victims_of:
                victims_of[model_id] = self._victims(model_id, self._plan(model_id))
            return {model_id, *(v.process.name for v in victims_of[model_id])}

        for model_id in order_models(waiting, now, cap, strict, self._expected_start):
            slot = self.slots.get(model_id)
            if model_id in self._swaps or slot is None or slot.evicting:
                continue  # joined a swap under way, or being stopped by someone: wait for that
            the_plan = self._plan(model_id)
            victims = victims_of[model_id] = self._victims(model_id, the_plan)
            if self._collides(model_id, victims):
                continue
            first = min(t.arrived for t in waiting[model_id])
            starving = now - first >= cap
            busy = any(v.inflight for v in victims) or (slot.pending is not None and slot.inflight > 0)
            # A model whose last request ended a moment ago is likely to get the next one from the
            # same client (one that sends requests one after another): let it linger a little.
            lingering = [] if strict else [v.last_used + self._linger(v) for v in victims
                                           if not v.inflight and now < v.last_used + self._linger(v)]
            if (busy or lingering) and not starving:
                wake = min(wake or first + cap, first + cap, *lingering)
                continue  # let them drain on their own for now; they keep serving meanwhile
            others = {m: t for m, t in waiting.items() if m not in self._swaps}
            if not starving and overtakes_too_long(model_id, others, now, cap, self._expected_start(model_id),
                                                   involved):
                continue
            if strict and self._queued_before(model_id, self._queue.index(waiting[model_id][0])):
                continue  # strict: an earlier request for a model we compete with goes first
            self._start_swap(model_id, slot, victims, the_plan.overlap)
        self._arm_wake(wake)

    def _linger(self, slot: ModelSlot) -> float:
        """How long after its last request a model is kept for the next one before a swap stops it:
        a tenth of what starting it again would cost (learned), at most a second; 50 ms when unknown."""
        start = self.learned.expected_start(slot.process.spec)
        return LINGER_UNKNOWN if start is None else min(LINGER_SHARE * start, LINGER_MAX)

    def _expected_start(self, model_id: str) -> float | None:
        slot = self.slots.get(model_id)
        return None if slot is None else self.learned.expected_start(slot.process.spec)

    def _collides(self, model_id: str, victims: list[ModelSlot]) -> bool:
        """Whether another swap under way stops our model, starts one of our victims, or shares one."""
        names = {v.process.name for v in victims}
        for swap in self._swaps.values():
            theirs = {v.process.name for v in swap.victims}
            if swap.target in names or model_id in theirs or names & theirs:
                return True
        return False

    def _arm_wake(self, when: float | None) -> None:
        if self._wake is not None:
            self._wake.cancel()
            self._wake = None
        if when is not None:
            self._wake = asyncio.get_running_loop().call_at(when + 0.001, self._pump)

    # -- running swaps ----------------------------------------------------------------------
    def _start_swap(self, model_id: str, slot: ModelSlot, victims: list[ModelSlot], overlap: bool) -> None:
        replacing = slot.pending is not None
        drained = [*victims, slot] if replacing else list(victims)
        self._mark(drained)  # closed to new requests from now on
        swap = Swap(model_id, slot, victims, overlap and not replacing)
        self._swaps[model_id] = swap
        swap.task = self.background.spawn(self._run_swap(swap, drained, replacing))

    async def _run_swap(self, swap: Swap, drained: list[ModelSlot], replacing: bool) -> None:
        model_id, slot = swap.target, swap.slot
        failure: SwapProxyError | None = None
        stops: asyncio.Future[list[None]] | None = None
        try:
            for victim in drained:
                await victim.idle.wait()  # a swap never cuts a request
            swap.stopping = True
            stops = asyncio.ensure_future(self._stop_victims(swap, replacing))
            if not swap.overlap:
                await stops
            if slot.pending is not None and slot.process.state in _GONE:
                self._swap_in_pending(slot)
            await slot.process.start()
            self._grant_ready(model_id)
            await stops  # with overlap, the old ones finish stopping meanwhile
        except SwapProxyError as err:  # the start failed, or swapproxy is shutting down
            failure = err
        finally:
            self._unmark(drained)
            del self._swaps[model_id]
            if failure is not None:
                self._fail(model_id, failure)
            self._pump()

    async def _stop_victims(self, swap: Swap, replacing: bool) -> list[None]:
        """Stop the swap's victims (and the target's old process, after a reload changed it), then say so."""
        model_id = swap.target
        names = tuple(v.process.name for v in swap.victims)
        if names:
            logger.info("swap to %s: stopping %s", model_id, ", ".join(names))
        stops = [self._stop_gracefully(v, f"swap to {model_id}") for v in swap.victims]
        if replacing:
            stops.append(swap.slot.process.stop(f"config of {model_id} changed"))
        done = await asyncio.gather(*stops)
        if names:
            self._announce(StopEvent(StopCause.SWAP, f"swap to {model_id}", names, model_id))
        return done

    def _grant_ready(self, model_id: str) -> None:
        slot = self.slots.get(model_id)
        if slot is not None and self._open(slot):
            for ticket in self._queue.of(model_id):
                if not (self._strict and self._queued_before(model_id, self._queue.index(ticket))):
                    self._grant(ticket)

    # -- lifecycle --------------------------------------------------------------------------------
    async def preload(self, models: Iterable[str]) -> None:
        """Start models at startup as if a request had asked (the rules apply)."""
        try:
            for model_id in models:
                try:
                    (await self.acquire(model_id)).release()
                except Exception as exc:  # a failed preload is logged; swapproxy keeps serving
                    logger.error("preload of %s failed: %s", model_id, exc)
        finally:
            self.preloaded.set()

    def close(self) -> None:
        """Refuse new requests and starts from now on (503); timers, swaps and restarts are cancelled."""
        self._closing = True
        self.failures.closing = True
        self._arm_wake(None)
        for slot in self.slots.values():
            if slot.ttl_handle is not None:
                slot.ttl_handle.cancel()
        for model_id in self._queue.by_model():
            self._fail(model_id, ShuttingDown("swapproxy is shutting down"))
        self.background.cancel_all()

    async def shutdown(self) -> None:
        """Stop every upstream now (in-flight requests are not waited for)."""
        self.close()
        procs = [slot.process for slot in (*self.slots.values(), *self._retired)]
        procs += [slot.pending for slot in self.slots.values() if slot.pending is not None]
        await asyncio.gather(*(proc.shutdown() for proc in procs), return_exceptions=True)
