"""WebSocket passthrough for ``/upstream/<model>/...`` and ``/comfyui/...``.

ComfyUI's page and llama-server's tools open WebSockets to their server. The
upstream side is opened first, with the client's headers (hop-by-hop and the
handshake's own ``Sec-WebSocket-*`` left out) and its offered subprotocols,
so a refusal reaches the client as an HTTP error; then the client's upgrade is
accepted with the subprotocol the upstream chose, and messages are relayed both
ways (text, binary, ping, pong) until either side closes, whose close code the
other side gets.

With ``compat.ignoreWebsockets`` (always for ``comfyui_auto``, as in llama-swap)
a WebSocket never starts its model (409 while it is not ready) and holds no
lease: it counts toward neither concurrency, nor TTL, nor a swap's drain; an
eviction simply cuts it. Without it, a WebSocket is a request like any other.
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from ..config import ModelConfig
from ..errors import Conflict, UpstreamUnreachable
from ..states import ProcessState
from .proxy import request_headers
from .runtime import RESPONDING_KEY, runtime

__all__ = ["is_websocket_upgrade", "relay_websocket", "unleased_websocket"]

logger = logging.getLogger(__name__)

_HANDSHAKE = ("sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions", "sec-websocket-protocol",
              "sec-websocket-accept")


def _tokens(value: str) -> set[str]:
    return {t.strip().lower() for t in value.split(",")}


def is_websocket_upgrade(request: web.Request) -> bool:
    """``Connection: upgrade`` and ``Upgrade: websocket`` (case-insensitive, comma lists allowed)."""
    headers = request.headers
    connection = set().union(*(_tokens(v) for v in headers.getall("Connection", ())))
    upgrade = set().union(*(_tokens(v) for v in headers.getall("Upgrade", ())))
    return "upgrade" in connection and "websocket" in upgrade


def _upstream_headers(request: web.Request) -> CIMultiDict[str]:
    headers = request_headers(request)
    for name in _HANDSHAKE:
        headers.popall(name, None)
    return headers


async def _pump(src: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
                dst: web.WebSocketResponse | aiohttp.ClientWebSocketResponse) -> None:
    """Relay ``src``'s messages to ``dst`` until ``src`` closes."""
    async for msg in src:
        if msg.type is aiohttp.WSMsgType.TEXT:
            await dst.send_str(msg.data)
        elif msg.type is aiohttp.WSMsgType.BINARY:
            await dst.send_bytes(msg.data)
        elif msg.type is aiohttp.WSMsgType.PING:
            await dst.ping(msg.data)
        elif msg.type is aiohttp.WSMsgType.PONG:
            await dst.pong(msg.data)
        elif msg.type is aiohttp.WSMsgType.ERROR:
            break


async def relay_websocket(request: web.Request, spec: ModelConfig, path_qs: str) -> web.WebSocketResponse:
    """Open ``path_qs`` on ``spec``'s upstream as a WebSocket, accept the client's, relay until one closes."""
    rt = runtime(request)
    url = spec.proxy.replace("http", "ws", 1) + path_qs
    offered = [p.strip() for v in request.headers.getall("Sec-WebSocket-Protocol", ()) for p in v.split(",")
               if p.strip()]
    headers = _upstream_headers(request)
    if spec.upstream_api_key:
        headers["Authorization"] = f"Bearer {spec.upstream_api_key}"
        headers["x-api-key"] = spec.upstream_api_key
    try:
        upstream = await rt.session.ws_connect(url, headers=headers, protocols=offered, autoping=False,
                                               max_msg_size=rt.max_body, compress=0)
    except aiohttp.WSServerHandshakeError as exc:
        raise UpstreamUnreachable(f"model '{spec.id}': upstream refused the WebSocket: {exc.status} "
                                  f"{exc.message}") from None
    except (aiohttp.ClientError, OSError) as exc:
        raise UpstreamUnreachable(f"model '{spec.id}': upstream {spec.proxy} is unreachable: {exc}") from None
    client = web.WebSocketResponse(protocols=(upstream.protocol,) if upstream.protocol else (), autoping=False,
                                   max_msg_size=rt.max_body, compress=False)
    try:
        request[RESPONDING_KEY] = True
        await client.prepare(request)
        pumps = [asyncio.ensure_future(_pump(client, upstream)), asyncio.ensure_future(_pump(upstream, client))]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
        code = client.close_code if client.closed else upstream.close_code
        await asyncio.gather(client.close(code=code or 1000), upstream.close(code=code or 1000),
                             return_exceptions=True)
    finally:
        if not upstream.closed:
            await upstream.close()
    return client


async def unleased_websocket(request: web.Request, spec: ModelConfig, path_qs: str) -> web.WebSocketResponse:
    """``compat.ignoreWebsockets``: relay only while the model is ready; no lease, never a start."""
    if runtime(request).scheduler.slot(spec.id).process.state is not ProcessState.READY:
        raise Conflict(f"model '{spec.id}' is not loaded; ignored websocket requests cannot start it")
    return await relay_websocket(request, spec, path_qs)
