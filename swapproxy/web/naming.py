"""The model a request's name leads to, read from what the app knows now.

:func:`swapproxy.routing.route` is pure; this module gives it the app's state:
the active profile, and a selector's choice, made by
:class:`~swapproxy.selectors.SelectorState` from each target's process state and
load as the scheduler reports them. The choice is made and reserved in one
synchronous step, so requests arriving together spread as the rules say. A
target that is a peer's model is seen through the peers' health
(:class:`~swapproxy.peers.PeerMonitor`): loaded there, or not, or unreachable.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

from ..config import SelectorConfig
from ..history import Note
from ..routing import Route, route
from ..selectors import Reservation, TargetStatus
from ..states import ProcessState
from .runtime import Runtime

__all__ = ["route_request", "target_status", "Release"]

#: What ends a selector's reservation (None: the name went through no selector).
Release = Callable[[], None] | None


def target_status(rt: Runtime, model_id: str) -> TargetStatus:
    """A selector's view of one target: a local model's process state and the requests in flight on
    it or waiting; a peer model's (``peer/model``) state on its peer."""
    slot = rt.scheduler.slots.get(model_id)
    if slot is not None:
        return TargetStatus(slot.process.state, slot.inflight + slot.waiting)
    route = rt.config.peer_route(model_id)
    if route is None:  # a reload removed it since the selector was resolved
        return TargetStatus(ProcessState.STOPPED, available=False)
    return rt.peers.target(route)


def route_request(rt: Runtime, requested: str | None, avoid: Collection[str] = (),
                  note: Note | None = None) -> tuple[Route, Release]:
    """Where ``requested`` leads now; the release, when a selector reserved its choice, must be
    called once the request is over. A selector passes over the targets in ``avoid`` (model ids,
    or ``peer/model``: those this request failed to reach). The request's history ``note`` gets
    the name (a name that leads nowhere is recorded too) and the selector it went through."""
    if note is not None:
        note.model = requested or ""
    reservation: Reservation | None = None

    def pick(selector: SelectorConfig) -> str:
        nonlocal reservation
        index, reservation = rt.selectors.pick(selector, lambda model_id: target_status(rt, model_id), avoid)
        return selector.targets[index]

    found = route(rt.config, requested, profile=rt.profile, pick=pick)
    if note is not None:
        note.model, note.selector = found.model_id, found.selector
    return found, (reservation.release if reservation is not None else None)
