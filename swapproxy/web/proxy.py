"""The streaming forwarder: one request to one upstream, bytes in both directions.

One shared :class:`aiohttp.ClientSession` serves every upstream. Nothing is
buffered or re-parsed here: the request body goes out as given, response
bytes are written to the client the moment they arrive (``iter_any``), SSE
included. Hop-by-hop headers are dropped both ways.

aiohttp defaults that would break a proxy, and what this module does instead:
``auto_decompress=False`` (a gzip body stays gzip, matching its header),
``total=None`` timeouts (a long generation is not cut at 5 minutes), an
unlimited connector (1,000 open streams do not queue behind 100 sockets), and
no auto-added ``User-Agent``/``Accept-Encoding`` the client did not send.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections.abc import AsyncIterable, Callable
from typing import Any, TypedDict, TypeVar, Unpack

import aiohttp
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError
from multidict import CIMultiDict
from yarl import URL

from ..config import ModelConfig
from ..errors import BadRequest, SwapProxyError, UpstreamConnectFailed, UpstreamTimeout, UpstreamUnreachable
from ..redact import redact_url
from . import sse
from .runtime import RESPONDING_KEY

__all__ = ["make_client_session", "open_upstream", "relay", "forward", "drop_client", "HOP_BY_HOP", "Outgoing", "Body"]

logger = logging.getLogger(__name__)

HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "trailers",
     "transfer-encoding", "upgrade"}
)
# aiohttp's server decodes a gzip/deflate request body, so its Content-Encoding no longer applies.
_REQUEST_DROP = HOP_BY_HOP | {"host", "content-length", "content-encoding"}
_RESPONSE_DROP = HOP_BY_HOP | {"content-length"}

Body = bytes | AsyncIterable[bytes] | None
E = TypeVar("E", bound=BaseException)
#: Responses of known length up to this size are read whole and sent in one write
#: (headers and body together); anything larger, or of unknown length, streams.
SMALL_BODY = 64 * 1024
OnChunk = Callable[[bytes], None]
#: After a broken response, how long the client gets to read what is still buffered for it
#: (the error event) before its connection is dropped anyway.
FLUSH_GRACE = 5.0
#: One ClientTimeout per connect limit in use (made once, not per request).
_TIMEOUTS: dict[float | None, aiohttp.ClientTimeout] = {}


def make_client_session() -> aiohttp.ClientSession:
    """The one client session all upstream traffic and health probes share."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, enable_cleanup_closed=False),
        auto_decompress=False,
        timeout=aiohttp.ClientTimeout(total=None),
        skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
        cookie_jar=aiohttp.DummyCookieJar(),
    )


def _connection_tokens(headers: Any) -> set[str]:
    tokens: set[str] = set()
    for value in headers.getall("Connection", ()):
        tokens.update(t.strip().lower() for t in value.split(","))
    return tokens


def _dropped(base: frozenset[str], headers: Any) -> frozenset[str]:
    """``base`` plus the header names ``headers``' Connection header lists."""
    return base | _connection_tokens(headers) if "Connection" in headers else base


def request_headers(request: web.Request) -> CIMultiDict[str]:
    """Client headers minus hop-by-hop ones (and any the Connection header names).

    A header value that is not valid UTF-8 is refused (400) rather than sent on
    truncated: aiohttp would cut it at the first undecodable byte.
    """
    drop = _dropped(_REQUEST_DROP, request.headers)
    headers: CIMultiDict[str] = CIMultiDict()
    for name, value in request.headers.items():
        if name.lower() in drop:
            continue
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise BadRequest(f"header {name!r} is not valid UTF-8") from None
        headers.add(name, value)
    return headers


class Outgoing(TypedDict, total=False):
    """How the request going upstream differs from the client's (each key optional)."""

    path_qs: str | None  # path and query to ask for (default: the client's, as it came)
    body: Body  # the body to send (default: none)
    headers: CIMultiDict[str] | None  # the headers to send (default: the client's, hop-by-hop dropped)


async def open_upstream(
    request: web.Request,
    session: aiohttp.ClientSession,
    spec: ModelConfig,
    *,
    path_qs: str | None = None,
    body: Body = None,
    headers: CIMultiDict[str] | None = None,
) -> aiohttp.ClientResponse:
    """Send the request upstream (as :class:`Outgoing` describes) and return once the response headers are in."""
    url = URL(spec.proxy + (path_qs if path_qs is not None else request.raw_path), encoded=True)
    if headers is None:
        headers = request_headers(request)
    if spec.upstream_api_key:
        # The model's own key replaces whatever the client sent: clients need not know it.
        headers["Authorization"] = f"Bearer {spec.upstream_api_key}"
        headers["x-api-key"] = spec.upstream_api_key
    connect = spec.connect_timeout or None
    timeout = _TIMEOUTS.get(connect)
    if timeout is None:
        timeout = _TIMEOUTS[connect] = aiohttp.ClientTimeout(total=None, sock_connect=connect, connect=connect)
    header_timeout = spec.response_header_timeout or None
    sending = session.request(request.method, url, headers=headers, data=body, allow_redirects=False, timeout=timeout)
    try:
        if header_timeout is None:  # no timeout context at all: this runs for every request
            return await sending
        async with asyncio.timeout(header_timeout):
            return await sending
    except aiohttp.ConnectionTimeoutError:
        raise UpstreamConnectFailed(
            f"model '{spec.id}': could not connect to upstream {redact_url(spec.proxy)} within {connect:g}s",
            timed_out=True) from None
    except asyncio.TimeoutError:
        raise UpstreamTimeout(
            f"model '{spec.id}': upstream {redact_url(spec.proxy)} sent no response within {header_timeout or 0:g}s"
        ) from None
    except aiohttp.ClientConnectorError as exc:
        raise UpstreamConnectFailed(f"model '{spec.id}': upstream {redact_url(spec.proxy)} is unreachable: "
                                    f"{exc.os_error}") from None
    except (aiohttp.ClientError, OSError) as exc:
        ours = _in_chain(exc, SwapProxyError)
        if ours is not None:  # the body we were sending refused to go on (over maxRequestBodyMB)
            raise ours from None
        if _in_chain(exc, RequestPayloadError) is not None:  # the client's body, not the upstream, is at fault
            raise BadRequest("request body could not be read (does it match its Content-Encoding?)") from None
        raise UpstreamUnreachable(
            f"model '{spec.id}': upstream {redact_url(spec.proxy)} failed before responding: {exc.__class__.__name__}: {exc}"
        ) from None


def _in_chain(exc: BaseException, kind: type[E]) -> E | None:
    """The first exception of type ``kind`` among ``exc`` and its causes (e.g. a bad gzip body, a 413)."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return None
        if isinstance(seen, kind):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _response_pairs(upstream: aiohttp.ClientResponse) -> list[tuple[str, str]]:
    src = upstream.headers
    drop = _dropped(_RESPONSE_DROP, src)
    return [(k, v) for k, v in src.items() if k.lower() not in drop]


def response_headers(upstream: aiohttp.ClientResponse) -> CIMultiDict[str]:
    headers = CIMultiDict(_response_pairs(upstream))
    if upstream.content_type == "text/event-stream":
        headers["X-Accel-Buffering"] = "no"  # tell nginx & co. not to buffer the stream
    return headers


def drop_client(request: web.Request) -> None:
    """Close the client's connection with its body unterminated: a broken response, not a short one.

    What is still buffered for the client (an error event) goes first if it reads it
    within :data:`FLUSH_GRACE` seconds; one that does not read is then reset, not kept for ever.
    """
    transport = request.transport
    if transport is None:
        return
    transport.close()
    if transport.get_write_buffer_size():
        asyncio.get_running_loop().call_later(FLUSH_GRACE, _reset, transport)


def _reset(transport: asyncio.BaseTransport) -> None:
    """Drop a connection now: RST, not a FIN that waits (in the kernel) behind unread data."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:  # already closed (the client read it all in time): nothing to reset
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except (OSError, AttributeError):
            pass
    if isinstance(transport, asyncio.WriteTransport):
        transport.abort()


class _Stalled(Exception):
    """No byte went from the upstream to the client within ``timeouts.responseIdle``."""


async def _relay_watched(
    upstream: aiohttp.ClientResponse, resp: web.StreamResponse, on_chunk: OnChunk | None, idle: float
) -> None:
    """:func:`relay`'s loop under an idle limit: each chunk passed on pushes the deadline back."""
    loop = asyncio.get_running_loop()
    deadline = asyncio.timeout(idle)
    try:
        async with deadline:
            async for chunk in upstream.content.iter_any():
                await resp.write(chunk)
                if on_chunk is not None:
                    on_chunk(chunk)
                deadline.reschedule(loop.time() + idle)
    except TimeoutError:
        if not deadline.expired():  # an aiohttp timeout, not ours: handled as a broken upstream
            raise
        raise _Stalled(f"no data passed for {idle:g}s (timeouts.responseIdle)") from None


async def relay(
    upstream: aiohttp.ClientResponse,
    resp: web.StreamResponse,
    *,
    is_sse: bool,
    on_chunk: OnChunk | None = None,
    idle: float = 0.0,
) -> str | None:
    """Copy the upstream body to ``resp`` chunk by chunk.

    Returns None when the whole body went through, else why it was cut: ``"upstream"``
    (the upstream broke off), ``"idle"`` (``idle`` passed without progress) or
    ``"client"`` (writing to the client failed). ``on_chunk`` (e.g. the metrics' token
    tap) sees each chunk after it was written.
    With ``idle`` > 0, a response that makes no progress for that many seconds (the
    upstream sends nothing, or the client takes nothing) is cut, so that a hung
    upstream does not hold its model, and every swap waiting on it, for ever.
    """
    try:
        if idle > 0:
            await _relay_watched(upstream, resp, on_chunk, idle)
        elif on_chunk is None:  # two loops, so the common case pays nothing for the hook
            async for chunk in upstream.content.iter_any():
                await resp.write(chunk)
        else:
            async for chunk in upstream.content.iter_any():
                await resp.write(chunk)
                on_chunk(chunk)
    except _Stalled as exc:
        logger.warning("upstream %s: response cut, %s", redact_url(str(upstream.url)), exc)
        if is_sse:
            event = sse.error_event(f"response cut: {exc}", "upstream_error", "upstream_timeout")
            try:  # the client may be the one not reading: do not wait on it again
                async with asyncio.timeout(1.0):
                    await resp.write(event)
            except (ConnectionError, TimeoutError):
                pass
        return "idle"
    except ConnectionResetError:
        # Writing to our client failed: it went away (aiohttp's ClientConnectionResetError is
        # also a ClientConnectionError, so this must come first). Not the upstream's fault.
        logger.debug("client went away mid-response from %s", upstream.url)
        return "client"
    except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, asyncio.TimeoutError) as exc:
        logger.warning("upstream %s broke off mid-response: %s", redact_url(str(upstream.url)), exc)
        if is_sse:
            event = sse.error_event(f"upstream connection lost mid-stream: {exc.__class__.__name__}",
                                    "upstream_error", "upstream_disconnected")
            try:
                await resp.write(event)
            except ConnectionError:
                pass
        return "upstream"
    return None


async def _small_response(
    upstream: aiohttp.ClientResponse, spec: ModelConfig, on_chunk: OnChunk | None
) -> web.Response:
    """A small body of known length goes out with its headers in one write, not two."""
    idle = spec.response_idle_timeout
    deadline = asyncio.timeout(idle) if idle > 0 else None  # none at all on the common path
    try:
        if deadline is None:
            body = await upstream.read()
        else:
            async with deadline:
                body = await upstream.read()
    except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, asyncio.TimeoutError) as exc:
        upstream.close()
        if deadline is not None and deadline.expired():  # our own limit, not an aiohttp timeout
            raise UpstreamTimeout(
                f"model '{spec.id}': upstream {redact_url(spec.proxy)} sent its headers, then not its whole body within "
                f"{idle:g}s (timeouts.responseIdle)"
            ) from None
        raise UpstreamUnreachable(
            f"model '{spec.id}': upstream {redact_url(spec.proxy)} broke off mid-response: {exc.__class__.__name__}"
        ) from None
    upstream.release()
    if on_chunk is not None:
        on_chunk(body)
    resp = web.Response(status=upstream.status, reason=upstream.reason, body=body)
    resp.headers.extend(_response_pairs(upstream))  # one header copy, not two (Response(headers=) copies)
    return resp


async def forward(
    request: web.Request,
    session: aiohttp.ClientSession,
    spec: ModelConfig,
    *,
    on_chunk: OnChunk | None = None,
    on_cut: Callable[[str], None] | None = None,
    into: web.StreamResponse | None = None,
    **outgoing: Unpack[Outgoing],
) -> web.StreamResponse:
    """Proxy ``request`` to ``spec``'s upstream and stream the answer back.

    ``on_cut`` hears why (see :func:`relay`) when a streamed body is broken off.
    ``into``: an event stream already sent to the client (200 and its headers, as the
    loading state does); the upstream's events are relayed into it, and an upstream
    error status becomes an error event there (its own error object), as the status line is gone.
    """
    upstream = await open_upstream(request, session, spec, **outgoing)
    length = upstream.content_length
    if into is None and length is not None and length <= SMALL_BODY and upstream.content_type != "text/event-stream":
        return await _small_response(upstream, spec, on_chunk)
    complete = False
    try:
        if into is not None:
            resp, is_sse = into, True
            if upstream.status != 200:  # the upstream's own error object, then the end (as llama-server ends)
                await resp.write(sse.upstream_error_event(upstream.status, await upstream.read()))
                complete = True
                await resp.write_eof()
                return resp
        else:
            resp = web.StreamResponse(status=upstream.status, reason=upstream.reason,
                                      headers=response_headers(upstream))
            if upstream.content_length is not None and "Transfer-Encoding" not in upstream.headers:
                resp.content_length = upstream.content_length
            request[RESPONDING_KEY] = True
            await resp.prepare(request)
            is_sse = upstream.content_type == "text/event-stream"
        cut = await relay(upstream, resp, is_sse=is_sse, on_chunk=on_chunk, idle=spec.response_idle_timeout)
        complete = cut is None
        if cut is not None and on_cut is not None:
            on_cut(cut)
        if complete:
            await resp.write_eof()
        else:
            drop_client(request)  # never wait on a client that may be the one not reading
        return resp
    finally:
        if complete:
            upstream.release()
        else:
            upstream.close()  # drop the connection: the upstream sees the client go
