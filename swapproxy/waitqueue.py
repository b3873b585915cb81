"""The requests that wait for a model, and which model to serve next. No I/O, no clocks of its own.

:class:`WaitQueue` keeps the :class:`~swapproxy.slots.Ticket` of every waiting
request in serving order: by priority, then by arrival (``strict``: by arrival
only). :func:`order_models` ranks the models that wait, and
:func:`overtakes_too_long` guards an older waiter from being overtaken past its
``maxWait``; both are pure, so the scheduler's choices are unit-testable.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .slots import Swap, Ticket

__all__ = ["WaitQueue", "QueuedModel", "order_models", "overtakes_too_long"]


class WaitQueue:
    """Tickets in serving order; each ticket counts in its slot's ``waiting`` while it is here."""

    def __init__(self) -> None:
        self._tickets: list[Ticket] = []

    def add(self, ticket: Ticket, *, by_priority: bool) -> None:
        """Before the first ticket of a lower priority (or at the end, when not ``by_priority``)."""
        ticket.slot.waiting += 1
        if by_priority:
            for i, other in enumerate(self._tickets):
                if other.priority < ticket.priority:
                    self._tickets.insert(i, ticket)
                    return
        self._tickets.append(ticket)

    def remove(self, ticket: Ticket) -> None:
        self._tickets.remove(ticket)
        ticket.slot.waiting -= 1

    def __contains__(self, ticket: object) -> bool:
        return ticket in self._tickets

    def __iter__(self) -> Iterator[Ticket]:
        return iter(list(self._tickets))  # a copy: callers remove as they go

    def __len__(self) -> int:
        return len(self._tickets)

    def index(self, ticket: Ticket) -> int:
        return self._tickets.index(ticket)

    def before(self, position: int) -> list[Ticket]:
        return self._tickets[:position]

    def of(self, model_id: str) -> list[Ticket]:
        """The tickets waiting for ``model_id``, in serving order."""
        return [t for t in self._tickets if t.model == model_id]

    def by_model(self) -> dict[str, list[Ticket]]:
        """Every waiting model's tickets, models in the order of their first ticket."""
        out: dict[str, list[Ticket]] = {}
        for ticket in self._tickets:
            out.setdefault(ticket.model, []).append(ticket)
        return out


@dataclass(frozen=True)
class QueuedModel:
    """A model requests wait for, as ``/running?details=1`` lists it under ``queue``."""

    model: str
    waiting: int  # its requests in the queue
    oldest_wait_s: float  # how long the first of them has waited
    priority: int  # the highest of theirs (fifo's settings.fifo.priority)
    swap: Swap | None  # the swap under way to it; None: not begun (its victims still serve, or it waits its turn)

    @classmethod
    def of(cls, model: str, tickets: Sequence[Ticket], now: float, swap: Swap | None) -> QueuedModel:
        return cls(model, len(tickets), max(now - min(t.arrived for t in tickets), 0.0),
                   max(t.priority for t in tickets), swap)

    def as_json(self) -> dict[str, Any]:
        swap = None if self.swap is None else {
            "phase": "stopping" if self.swap.stopping else "draining",  # draining: the models it stops still serve
            "stops": [victim.process.name for victim in self.swap.victims], "overlap": self.swap.overlap}
        return {"model": self.model, "waiting": self.waiting, "oldest_wait_s": round(self.oldest_wait_s, 3),
                "priority": self.priority, "swap": swap}


def order_models(waiting: Mapping[str, Sequence[Ticket]], now: float, cap: float, strict: bool,
                 expected_start: Callable[[str], float | None]) -> list[str]:
    """The waiting models, the one to serve first first.

    ``strict``: by the arrival of each model's first request. Otherwise the
    models whose oldest request has waited ``cap`` seconds come first, by
    arrival; then the highest priority; then the most waiting requests per
    second of expected start time (1 s when not known); then arrival.
    """
    first = {m: min(t.arrived for t in tickets) for m, tickets in waiting.items()}
    if strict:
        return sorted(waiting, key=first.__getitem__)
    starving = sorted((m for m in waiting if now - first[m] >= cap), key=first.__getitem__)
    rest = [m for m in waiting if now - first[m] < cap]
    priority = {m: max(t.priority for t in waiting[m]) for m in rest}
    rest.sort(key=lambda m: (-priority[m], -len(waiting[m]) / (expected_start(m) or 1.0), first[m]))
    return starving + rest


def overtakes_too_long(model_id: str, waiting: Mapping[str, Sequence[Ticket]], now: float, cap: float,
                       estimate: float | None, involved: Callable[[str], set[str]]) -> bool:
    """Whether starting ``model_id`` now (its start expected to take ``estimate`` s; None: unknown)
    would keep an older waiter of no lower priority, for a model it competes with (their
    ``involved`` sets — the model and what it must stop — meet), waiting past ``cap``."""
    mine = involved(model_id)
    first = min(t.arrived for t in waiting[model_id])
    priority = max(t.priority for t in waiting[model_id])
    for other, tickets in waiting.items():
        if other == model_id or min(t.arrived for t in tickets) >= first:
            continue
        if max(t.priority for t in tickets) < priority:
            continue  # a higher priority goes first (until the other passes its maxWait)
        if mine & involved(other) and (estimate is None or now + estimate > min(t.arrived for t in tickets) + cap):
            return True
    return False
