"""The measuring clients: aiohttp request helpers, load loops, SSE readers, and a lean raw HTTP/1.1 client.

The load loops (:func:`warm`, :func:`open_loop`, :func:`closed_loop`) take a
"session" and a request callable ``req(session) -> ok``: the session is an
aiohttp ``ClientSession`` (proxy.py) or a raw :class:`Pool` (perf.py), whose
per-request CPU cost is about a fifth of aiohttp's, so that the client is not
what is measured.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp

JSON_HEADERS = {"Content-Type": "application/json"}
S = TypeVar("S")
Request = Callable[[aiohttp.ClientSession], Awaitable[bool]]


@dataclass(frozen=True)
class LoadPlan:
    """How much load a run puts on, full or ``--quick``; each benchmark adds its own counts."""

    name: str
    open_seconds: float  # open loop, per side/column, split over `rounds`
    rounds: int  # direct and the proxies alternate round by round
    sse_rate: float  # paced SSE: events per second
    sse_tokens: int  # paced SSE: token events per stream


# -- aiohttp -------------------------------------------------------------------------------------
def session(limit: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit),
                                 timeout=aiohttp.ClientTimeout(total=60))


def chat_body(model: str, **extra: Any) -> bytes:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}).encode()


def post(url: str, body: bytes) -> Request:
    async def do(s: aiohttp.ClientSession) -> bool:
        try:
            async with s.post(url, data=body, headers=JSON_HEADERS) as resp:
                await resp.read()
                return resp.status == 200
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
            return False
    return do


def get(url: str) -> Request:
    async def do(s: aiohttp.ClientSession) -> bool:
        try:
            async with s.get(url) as resp:
                await resp.read()
                return resp.status == 200
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
            return False
    return do


# -- load loops ----------------------------------------------------------------------------------
async def warm(s: S, req: Callable[[S], Awaitable[bool]], conns: int) -> None:
    """Open `conns` pooled connections (and run a few requests)."""
    for _ in range(2):
        await asyncio.gather(*(req(s) for _ in range(conns)))


async def open_loop(s: S, req: Callable[[S], Awaitable[bool]], rate: float, seconds: float,
                    lat: list[float]) -> tuple[int, float]:
    """Send at fixed times; latency from the *scheduled* time. Returns (errors, worst send lag)."""
    loop = asyncio.get_running_loop()
    errors = 0
    lag = 0.0

    async def one(due: float) -> None:
        nonlocal errors
        ok = await req(s)
        if ok:
            lat.append(loop.time() - due)
        else:
            errors += 1

    tasks = []
    t0 = loop.time() + 0.01
    for i in range(max(1, round(rate * seconds))):
        due = t0 + i / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        lag = max(lag, loop.time() - due)
        tasks.append(asyncio.create_task(one(due)))
    await asyncio.gather(*tasks)
    return errors, lag


async def closed_loop(s: S, req: Callable[[S], Awaitable[bool]], conns: int,
                      seconds: float) -> tuple[int, int, float]:
    """`conns` workers back to back for `seconds`: (ok, errors, wall seconds)."""
    loop = asyncio.get_running_loop()
    ok = err = 0
    stop_at = loop.time() + seconds

    async def worker() -> None:
        nonlocal ok, err
        while loop.time() < stop_at:
            if await req(s):
                ok += 1
            else:
                err += 1

    t0 = loop.time()
    await asyncio.gather(*(worker() for _ in range(conns)))
    return ok, err, loop.time() - t0


# -- SSE -----------------------------------------------------------------------------------------
async def read_events(resp: aiohttp.ClientResponse, sink: Callable[[float, bytes], None]) -> None:
    """Split the body into SSE events; each is stamped with its chunk's arrival time."""
    buf = b""
    async for chunk in resp.content.iter_any():
        now = time.monotonic()
        buf += chunk
        while (i := buf.find(b"\n\n")) >= 0:
            sink(now, buf[:i])
            buf = buf[i + 2:]


async def paced_times(s: aiohttp.ClientSession, url: str, body: bytes, n_tokens: int) -> list[float] | None:
    """Arrival times of a paced stream's token events; None if the stream was wrong."""
    times: list[float] = []
    try:
        async with s.post(url, data=body, headers=JSON_HEADERS) as resp:
            if resp.status != 200:
                return None
            await read_events(resp, lambda t, _ev: times.append(t))
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
        return None
    return times[:n_tokens] if len(times) == n_tokens + 2 else None  # tokens, finish chunk, [DONE]


async def count_events(s: aiohttp.ClientSession, url: str, body: bytes) -> tuple[int, float | None, float]:
    """POST ``body`` to ``url``: (events, first event's arrival, last event's arrival) of the SSE answer."""
    n = 0
    first: float | None = None
    last = 0.0
    prev = b""
    async with s.post(url, data=body, headers=JSON_HEADERS) as resp:
        async for chunk in resp.content.iter_any():
            k = (prev + chunk).count(b"\n\n")
            if k:
                now = time.monotonic()
                if first is None:
                    first = now
                last = now
                n += k
            prev = chunk[-1:]
    return n, first, last


# -- the raw client: keep-alive HTTP/1.1 on asyncio.Protocol --------------------------------------
class HttpConn(asyncio.Protocol):
    """One keep-alive client connection, one request at a time; bodies by Content-Length or chunked."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.fut: asyncio.Future[int] | None = None
        self.head = -1  # where the body starts, once the head is in
        self.length = 0
        self.chunked = False
        self.close_after = False
        self.scan = 0
        self.status = 0
        self.lost = False
        self.idle_since = 0.0  # loop time it was opened or last went back to the pool

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.fut is not None and not self.fut.done():
            self.fut.set_exception(ConnectionResetError("connection closed mid-response"))

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.fut is not None:
            self._parse()

    def _parse(self) -> None:
        buf = self.buf
        if self.head < 0:
            i = buf.find(b"\r\n\r\n")
            if i < 0:
                return
            self.head = self.scan = i + 4
            lines = bytes(buf[:i]).split(b"\r\n")
            self.status = int(lines[0][9:12])
            self.length, self.chunked = 0, False
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    self.length = int(value)
                elif name == b"transfer-encoding":
                    self.chunked = b"chunked" in value.lower()
                elif name == b"connection":
                    self.close_after = b"close" in value.lower()
        if self.chunked:
            end = self._chunked_end()
            if end < 0:
                return
        else:
            end = self.head + self.length
            if len(buf) < end:
                return
        del buf[:end]
        self.head = -1
        fut, self.fut = self.fut, None
        assert fut is not None
        if not fut.done():
            fut.set_result(self.status)

    def _chunked_end(self) -> int:
        buf, pos = self.buf, self.scan
        while True:
            nl = buf.find(b"\r\n", pos)
            if nl < 0:
                break
            size = int(bytes(buf[pos:nl]).split(b";", 1)[0], 16)
            end = nl + 2 + size + 2
            if len(buf) < end:
                break
            if size == 0:
                return end  # no trailers here
            pos = end
        self.scan = pos
        return -1

    def send(self, data: bytes) -> asyncio.Future[int]:
        assert self.transport is not None
        self.fut = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return self.fut


#: Seconds a pooled connection may sit idle and still be used: under swapproxy's keep-alive
#: timeout (30 s), as a browser's or an SDK's pool does, so that a request is not written into a
#: connection the server is closing (it was lost with no byte, or hung until the timeout); one
#: lost anyway before any byte of its answer is tried once more (see Pool.request).
REUSE_IDLE = 20.0


class Pool:
    """``conns`` keep-alive connections to one host:port; a request takes whichever is idle."""

    def __init__(self, port: int, conns: int, timeout: float = 15.0) -> None:
        self.port = port
        self.conns = conns
        self.timeout = timeout
        self.idle: deque[HttpConn] = deque()
        self.waiters: deque[asyncio.Future[None]] = deque()
        self.all: list[HttpConn] = []

    async def _connect(self) -> HttpConn:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(HttpConn, "127.0.0.1", self.port)
        assert conn.transport is not None
        conn.transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.idle_since = loop.time()
        self.all.append(conn)
        return conn

    async def _replace(self, conn: HttpConn) -> HttpConn:
        if conn.transport is not None:
            conn.transport.close()
        if conn in self.all:
            self.all.remove(conn)
        conn.lost = True
        return await self._connect()

    async def __aenter__(self) -> Pool:
        for _ in range(self.conns):
            self.idle.append(await self._connect())
        return self

    async def __aexit__(self, *exc: object) -> None:
        for conn in self.all:
            if conn.transport is not None:
                conn.transport.close()

    async def request(self, data: bytes) -> bool:
        """One request on an idle connection: True for a 200. A connection the server closed before
        any byte of the answer (its idle close, as the request went out) gets the request once more
        on a new one; anything else that fails counts as one failed request, never an exception."""
        while not self.idle:
            waiter = asyncio.get_running_loop().create_future()
            self.waiters.append(waiter)
            await waiter
        conn = self.idle.pop()
        ok = False
        try:
            for attempt in (1, 2):
                if (conn.lost or conn.transport is None or conn.transport.is_closing()
                        or conn.idle_since < asyncio.get_running_loop().time() - REUSE_IDLE):
                    conn = await self._replace(conn)  # the server closed it, or may be closing it now
                try:
                    ok = await self._send(conn, data)
                    break
                except ConnectionResetError:
                    if attempt == 2 or conn.buf or conn.head >= 0:
                        raise
        except OSError:  # ConnectionResetError, TimeoutError, a refused reconnect
            ok = False
        finally:
            if conn.lost or conn.close_after or conn.fut is not None:
                try:
                    conn = await self._replace(conn)
                except OSError:
                    pass  # kept, closed: the next request on it tries to connect again
            conn.idle_since = asyncio.get_running_loop().time()
            self.idle.append(conn)  # the pool keeps its size, so no waiter waits for good
            if self.waiters:
                self.waiters.popleft().set_result(None)
        return ok

    async def _send(self, conn: HttpConn, data: bytes) -> bool:
        fut = conn.send(data)
        handle = asyncio.get_running_loop().call_later(self.timeout, _expire, fut)
        try:
            return await fut == 200
        finally:
            handle.cancel()


def _expire(fut: asyncio.Future[int]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError("no complete response in time"))


def http_request(method: str, path: str, port: int, body: bytes = b"") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
    if body or method == "POST":
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return (head + "\r\n").encode() + body


def raw_req(data: bytes) -> Callable[[Pool], Awaitable[bool]]:
    async def do(pool: Pool) -> bool:
        return await pool.request(data)
    return do
