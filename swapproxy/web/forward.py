"""One forwarding path for every proxied request: lease the model, forward, observe, release.

:func:`leased_forward` takes a lease on the model (the scheduler makes it
ready first), labels the request with its model for the metrics, and
publishes the model's in-flight counts; :func:`observed_forward` runs
:func:`~swapproxy.web.proxy.forward` with a :class:`~swapproxy.metrics.TokenTap`
on the relayed bytes and records the response's metrics — in this one place,
whether the response is plain, streamed, or an event stream the loading state
opened first.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..config import ModelConfig
from ..metrics import TokenTap
from ..status import model_status
from .proxy import forward
from .runtime import MODEL_KEY, START_KEY, Runtime, route_label, runtime

__all__ = ["leased_forward", "observed_forward", "publish_inflight"]


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


async def leased_forward(request: web.Request, model_id: str, spec: ModelConfig, **kwargs: Any) -> web.StreamResponse:
    """:func:`observed_forward` under a lease on ``model_id`` (the scheduler makes it ready first).

    The lease is taken and released inline rather than through a context manager:
    this runs for every request, and generator-based context managers cost more
    than the lease itself.
    """
    rt = runtime(request)
    request[MODEL_KEY] = model_id
    try:
        lease = await rt.scheduler.acquire(model_id)
        try:
            publish_inflight(rt, model_id)
            return await observed_forward(request, spec, **kwargs)
        finally:
            lease.release()
    finally:
        publish_inflight(rt, model_id)


async def observed_forward(request: web.Request, spec: ModelConfig, **kwargs: Any) -> web.StreamResponse:
    """:func:`forward` with a token tap; the response's metrics are taken after its last byte."""
    rt = runtime(request)
    tap = TokenTap()
    metrics = rt.metrics
    resp = await forward(request, rt.session, spec, on_chunk=tap,
                         on_cut=lambda reason: metrics.count_cut(spec.id, reason), **kwargs)
    started = request.get(START_KEY, tap.first_at or 0.0)
    metrics.observe_response(spec.id, route_label(request), tap, started, resp.content_type == "text/event-stream")
    return resp
