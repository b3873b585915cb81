"""One forwarding path for every proxied request: lease the model, forward, observe, release.

:func:`leased_forward` takes a lease on the model (the scheduler makes it
ready first), labels the request with its model for the metrics, registers it
among the requests in flight (where an operator may cut it) and publishes the
model's in-flight counts; :func:`observed_forward` runs
:func:`~swapproxy.web.proxy.forward` with a :class:`~swapproxy.tokens.TokenTap`
on the relayed bytes and records the response's metrics — in this one place,
whether the response is plain, streamed, or an event stream the loading state
opened first.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ..captures import Material
from ..config import ModelConfig
from ..errors import Conflict, RequestCancelled
from ..history import Note
from ..inflight import InflightRequest
from ..tokens import TokenTap, tail_counts
from ..scheduler import Lease, Scheduler
from ..status import model_status
from .proxy import forward
from .runtime import MODEL_KEY, RESPONDING_KEY, START_KEY, Runtime, note_of, route_label, runtime

__all__ = ["leased_forward", "note_lease", "observed_forward", "publish_inflight", "publish_request",
           "raise_if_operator_cancel", "record_request", "take_lease", "tracked"]


def publish_request(rt: Runtime, op: str, entry: InflightRequest) -> None:
    """Announce a request that starts or ends (the UI's list of requests in flight)."""
    if rt.events.subscriber_count:
        rt.events.publish({"type": "request", "op": op, "request": entry.as_json()})


def raise_if_operator_cancel(request: web.Request, entry: InflightRequest) -> None:
    """Called on CancelledError: an operator's cancel before the response began becomes a 503
    envelope (the task is uncancelled); otherwise the cancellation goes on, and the client's
    connection is cut mid-response."""
    task = entry.task
    if entry.cancelled and not request.get(RESPONDING_KEY) and task is not None and task.uncancel() == 0:
        raise RequestCancelled(f"request {entry.id} was cancelled by an operator") from None


def publish_inflight(rt: Runtime, model_id: str) -> None:
    """Publish ``model_id``'s in-flight and waiting counts (and its TTL left) on the event bus."""
    events = rt.events
    if not events.subscriber_count:
        return
    scheduler = rt.scheduler
    if model_id not in scheduler.slots:  # removed by a reload while the request ran
        return
    status = model_status(scheduler, model_id)
    events.publish({"type": "inflight", "model": model_id, "inflight": status.inflight, "waiting": status.waiting,
                    "queue_depth": scheduler.queue_depth(), "ttl_remaining_s": status.ttl_remaining_s})


async def tracked(request: web.Request, model_id: str, serve: Callable[[], Awaitable[web.StreamResponse]],
                  release: Callable[[], None] | None = None) -> web.StreamResponse:
    """Run ``serve()`` as a request in flight on ``model_id``: labelled for the metrics, listed
    where an operator may cut it; ``release`` (a selector's reservation) is called at the end."""
    rt = runtime(request)
    request[MODEL_KEY] = model_id
    note = note_of(request)
    if note is not None:
        note.model = model_id
    entry = rt.inflight.add(model_id, request.method, request.path, request.remote)
    try:
        return await serve()
    except asyncio.CancelledError:
        raise_if_operator_cancel(request, entry)
        raise
    finally:
        rt.inflight.remove(entry)
        if release is not None:
            release()
        publish_inflight(rt, model_id)


async def take_lease(scheduler: Scheduler, model_id: str, refuse_start: str | None = None) -> Lease:
    """A lease on ``model_id``: made ready first, or with ``refuse_start`` (why), only if it is
    ready already (409 otherwise: nothing is started or swapped)."""
    if refuse_start is None:
        return await scheduler.acquire(model_id)
    lease = scheduler.acquire_ready(model_id)
    if lease is None:
        raise Conflict(f"model '{model_id}' is not loaded; {refuse_start}")
    return lease


async def leased_forward(request: web.Request, model_id: str, spec: ModelConfig, *,
                         release: Callable[[], None] | None = None, refuse_start: str | None = None,
                         **kwargs: Any) -> web.StreamResponse:
    """:func:`observed_forward` under a lease on ``model_id`` (the scheduler makes it ready first),
    :func:`tracked`. With ``refuse_start`` (why), a model that is not ready is not started: 409.

    The lease is taken and released inline rather than through a context manager:
    this runs for every request, and generator-based context managers cost more
    than the lease itself.
    """
    rt = runtime(request)

    async def serve() -> web.StreamResponse:
        lease = await take_lease(rt.scheduler, model_id, refuse_start)
        note_lease(request, lease)
        try:
            publish_inflight(rt, model_id)
            return await observed_forward(request, spec, **kwargs)
        finally:
            lease.release()

    return await tracked(request, model_id, serve, release)


def note_lease(request: web.Request, lease: Lease) -> None:
    """Note in the request's history what its lease says: how long it waited, and for what."""
    note = note_of(request)
    if note is None:
        return
    if lease.waited_for is not None:
        note.waited_for, note.wait_ms = lease.waited_for, lease.waited * 1000
    scheduler = runtime(request).scheduler.config.scheduler
    if scheduler.use == "fifo":
        note.priority = scheduler.priority.get(lease.process.name, 0)


async def observed_forward(request: web.Request, spec: ModelConfig, **kwargs: Any) -> web.StreamResponse:
    """:func:`forward` with a token tap; the response's metrics are taken after its last byte, and
    its token counts parsed once for the metrics, the slot cache and the request history."""
    rt = runtime(request)
    note = note_of(request)
    cap = rt.history.body_cap if note is not None else 0
    tap = TokenTap(cap=cap)
    metrics = rt.metrics
    resp = await forward(request, rt.session, spec, on_chunk=tap,
                         on_cut=lambda reason: metrics.count_cut(spec.id, reason), **kwargs)
    started = request.get(START_KEY, tap.first_at or 0.0)
    counts = tail_counts(tap.tail, sse=resp.content_type == "text/event-stream", complete=tap.complete) \
        if tap.total else None
    metrics.observe_response(spec.id, route_label(request), tap, started, counts)
    if rt.slot_cache.awaits(spec.id):  # the first answer after a restore: did llama-server reuse it?
        rt.slot_cache.observe(spec.id, counts.cache_n if counts is not None else None)
    if note is not None:
        note.tap, note.counts = tap, counts
        body = kwargs.get("body")
        if cap and isinstance(body, bytes):
            note.req_body = body
    return resp


def record_request(request: web.Request, note: Note, status: int, resp: web.StreamResponse | None,
                   seconds: float) -> None:
    """Hand the ended request's record to the history (references only: it is worked out off the loop)."""
    history = runtime(request).history
    tap = note.tap
    ttfb = None
    if tap is not None and tap.first_at is not None:
        ttfb = max(tap.first_at - request.get(START_KEY, tap.first_at), 0.0) * 1000
    error_body: bytes | None = None
    reason: str | None = None  # for an error's message only
    if status >= 400:
        reason = resp.reason if resp is not None else _NO_RESPONSE.get(status)
        if isinstance(resp, web.Response) and isinstance(resp.body, bytes):
            error_body = resp.body  # swapproxy's own envelope, or a small upstream answer
        elif tap is not None and tap.complete:
            error_body = bytes(tap.tail)
    headers = resp.headers if resp is not None else None
    material = None
    if history.body_cap:
        material = Material(request.path, status, request.headers, note.req_body, headers, tap)
    # the Content-Type header as sent: the history's thread takes its media type (parsing it here
    # cost as much as the rest of this function)
    history.record((time.time(), note.model, request.method, request.path, status, reason,
                    headers.get("Content-Type", "") if headers is not None else "", seconds * 1000, ttfb,
                    note.counts, note.waited_for, note.wait_ms, note.priority, note.selector, error_body, note.error,
                    material))


#: Why a request that ended without a response did (see the metrics middleware's statuses).
_NO_RESPONSE = {499: "client went away", 500: "internal error in swapproxy"}
