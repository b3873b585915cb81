"""The model a request's name leads to, read from what the app knows now.

:func:`swapproxy.routing.route` is pure; this module gives it the app's state:
the active profile, and a selector's choice, made by
:class:`~swapproxy.selectors.SelectorState` from each target's process state and
load as the scheduler reports them. The choice is made and reserved in one
synchronous step, so requests arriving together spread as the rules say.
"""

from __future__ import annotations

from collections.abc import Callable

from ..config import SelectorConfig
from ..routing import Route, route
from ..scheduler import Scheduler
from ..selectors import Reservation, TargetStatus
from aiohttp import web

from .runtime import note_of, runtime

__all__ = ["route_request", "target_status", "Release"]

#: What ends a selector's reservation (None: the name went through no selector).
Release = Callable[[], None] | None


def target_status(scheduler: Scheduler, model_id: str) -> TargetStatus:
    """A selector's view of one model: its process state, and the requests in flight on it or waiting."""
    slot = scheduler.slot(model_id)
    return TargetStatus(slot.process.state, slot.inflight + slot.waiting)


def route_request(request: web.Request, requested: str | None) -> tuple[Route, Release]:
    """Where ``requested`` leads now; the release, when a selector reserved its choice, must be
    called once the request is over. The request's history notes the name (a name that leads
    nowhere is recorded too) and the selector it went through."""
    rt = runtime(request)
    note = note_of(request)
    if note is not None:
        note.model = requested or ""
    scheduler = rt.scheduler
    reservation: Reservation | None = None

    def pick(selector: SelectorConfig) -> str:
        nonlocal reservation
        index, reservation = rt.selectors.pick(selector, lambda model_id: target_status(scheduler, model_id))
        return selector.targets[index]

    found = route(scheduler.config, requested, profile=rt.profile, pick=pick)
    if note is not None:
        note.model, note.selector = found.model_id, found.selector
    return found, (reservation.release if reservation is not None else None)
