"""Requests for a peer's model: forwarded to the peer, never leased or swapped here; a dead peer fails fast.

:func:`peer_forward` sends one request to the peer that serves the route's model: to its
``proxy`` base URL with the request's path appended, with the peer's key in place of the
client's (``Authorization: Bearer`` and ``x-api-key``), its timeouts, and (:func:`peer_body`)
its filters applied to a JSON body whose ``model`` becomes the id the peer knows. It is listed
in flight and counted in the metrics under ``peer/model``, as a local model's request is under
its id; it takes no lease: peers never swap here.

A peer known to be down (:class:`~swapproxy.peers.PeerMonitor`) gets 503 with ``Retry-After``
at once, without a connection attempt; a connection that fails marks it down and answers the
same. :func:`with_failover` routes a request through its selector again when the target it
chose was a peer that could not be reached (nothing was sent): the next target takes it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Unpack

from aiohttp import web

from ..errors import PeerUnavailable, UpstreamConnectFailed
from ..peers import DOWN_INTERVAL, PROBE_INTERVAL
from ..redact import redact_url
from ..routing import Route, rewrite_body
from .forward import observed_forward, tracked
from .naming import Release, route_request
from .proxy import Outgoing
from .runtime import Runtime, note_of, runtime

__all__ = ["peer_body", "peer_forward", "with_failover", "Serve"]

logger = logging.getLogger(__name__)

#: Seconds a client is told to wait before it retries a peer that is down: about one probe.
RETRY_AFTER = max(round(PROBE_INTERVAL), round(DOWN_INTERVAL), 1)
#: Serves one routed request (local or peer); it calls the release itself, however it ends.
Serve = Callable[[Route, Release], Awaitable[web.StreamResponse]]


def peer_body(rt: Runtime, found: Route, obj: dict[str, Any]) -> bytes | None:
    """The JSON body for the peer: its filters applied (``setParamsByID`` by the name the request
    uses), ``model`` the peer's own id; None when the client's bytes can go as they are."""
    assert found.peer is not None
    spec = rt.config.peers[found.peer.peer].spec(found.peer.model)
    send_as = found.peer.model if obj.get("model") != found.peer.model else None
    return rewrite_body(obj, spec, found.name, send_as=send_as)


async def peer_forward(request: web.Request, found: Route, release: Release = None,
                       **outgoing: Unpack[Outgoing]) -> web.StreamResponse:
    """Forward the request to the peer that serves ``found`` (a peer's route); 503 at once when it is down."""
    rt = runtime(request)
    route = found.peer
    assert route is not None
    peer = rt.config.peers[route.peer]
    spec = peer.spec(route.model)

    async def serve() -> web.StreamResponse:
        health = rt.peers.health(peer.id)
        if health.up is False:
            raise PeerUnavailable(f"peer '{peer.id}' ({redact_url(peer.proxy)}) is down: {health.error}",
                                  retry_after=RETRY_AFTER)
        try:
            resp = await observed_forward(request, spec, **outgoing)
        except UpstreamConnectFailed as exc:
            rt.peers.mark_down(peer.id, exc.message)
            raise PeerUnavailable(f"peer '{peer.id}' is down: {exc.message}", retry_after=RETRY_AFTER) from None
        if resp.status < 400:
            rt.peers.served(route)
        return resp

    return await tracked(request, spec.id, serve, release)


async def with_failover(request: web.Request, requested: str | None, serve: Serve) -> web.StreamResponse:
    """Route ``requested`` and ``serve`` it; when a ``warm`` or ``spillover`` selector chose a peer
    that could not be reached, route it again without that target, until one serves or none is left."""
    rt = runtime(request)
    note = note_of(request)
    tried: list[str] = []
    while True:
        found, release = route_request(rt, requested, tried, note)
        try:
            return await serve(found, release)
        except PeerUnavailable as exc:
            selector = rt.config.selectors.get(found.selector) if found.selector is not None else None
            if selector is None or selector.strategy == "pin" or found.model_id in tried:
                raise
            tried.append(found.model_id)
            if len(set(tried)) >= len(set(selector.target_ids)):
                raise
            logger.info("selector %s: %s (%s); trying its next target", selector.id, found.model_id, exc.message)
