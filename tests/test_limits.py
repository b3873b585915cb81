"""Resource bounds (issue 14, items 3, 10, 11): bodies, connections, log bytes.

* ``maxRequestBodyMB`` counts the bytes that go on to the upstream, not a compressed
  ``Content-Length``: a small gzip body may hold far more;
* a connection that sends no request, sends its headers too slowly, or idles between
  requests is closed after a bounded time (aiohttp's keep-alive timer, set by swapproxy);
* log buffers and the responses built from them are capped in bytes, and a client that
  stops reading a log stream is dropped, not buffered for.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import socket
from typing import Any

import pytest

from support import fake, make_config, models, wait_until
from swapproxy.logs import MAX_BUFFER_BYTES
from swapproxy.web import proxy as proxy_module
from swapproxy.web import streams

TCP_ESTABLISHED = 1

LIMIT_MB = 0.0625  # 64 KiB
LIMIT = int(LIMIT_MB * 1024 * 1024)


# -- item 3: the body limit counts what is forwarded --------------------------------------------------
async def test_gzip_bodies_are_counted_as_forwarded(proxy_factory: Any) -> None:
    proxy = await proxy_factory(make_config(models("a"), maxRequestBodyMB=LIMIT_MB))
    big = gzip.compress(b"0" * (4 * LIMIT))  # ~1 KiB on the wire, 256 KiB once decoded
    assert len(big) < LIMIT // 16
    gz = {"Content-Encoding": "gzip", "Content-Type": "application/json"}

    async def post(path: str, data: Any, headers: dict[str, str]) -> tuple[int, Any]:
        async with proxy.http.post(proxy.url + path, data=data, headers=headers) as resp:
            return resp.status, await resp.json(content_type=None)

    async def chunked(body: bytes) -> Any:  # no Content-Length: the other passthrough path
        yield body

    for path, data in (("/upstream/a/debug/echo", big), ("/upstream/a/debug/echo", chunked(big)),
                       ("/v1/chat/completions", big), ("/completion", big)):
        status, answer = await post(path, data, gz)
        assert status == 413 and answer["error"]["code"] == "request_too_large", (path, status, answer)
    # under the limit, a gzip body still reaches the model whole (decoded)
    small = json.dumps({"model": "a", "pad": "x" * 1000}).encode()
    status, answer = await post("/upstream/a/debug/echo", gzip.compress(small), gz)
    assert status == 200 and base64.b64decode(answer["body_b64"]) == small


# -- item 10: connections that send no request, or idle, are closed ------------------------------------
async def _closed_by_server(reader: asyncio.StreamReader, within: float) -> bool:
    """Whether the server closes the connection within ``within`` s (whatever it sent first is read)."""
    try:
        async with asyncio.timeout(within):
            while await reader.read(65536):
                pass
        return True
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


async def test_silent_slow_and_idle_connections_are_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    from support import free_port_block, wait_http_ok
    from swapproxy import server
    from swapproxy.listen import Address

    monkeypatch.setattr(server, "IDLE_TIMEOUT", 0.5, raising=False)
    monkeypatch.setattr(server, "_tune_gc", lambda: None)  # serving in the test process: leave its GC alone
    port = free_port_block(1)
    stop = asyncio.Event()
    serving = asyncio.create_task(server.serve(make_config(models("a")), [Address("127.0.0.1", port)], stop))
    try:
        await wait_http_ok(f"http://127.0.0.1:{port}/health", 15, "swapproxy listening")
        # 1. a connection that never sends a byte
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await _closed_by_server(reader, 10), "a silent connection was kept open"
        writer.close()
        # 2. headers sent one byte every 0.1 s: 5 s of them would never finish in time
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        trickle = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"x" * 50 + b"\r\n\r\n"

        async def send_slowly() -> None:
            for i in range(len(trickle)):
                writer.write(trickle[i:i + 1])
                await writer.drain()
                await asyncio.sleep(0.1)  # the slow client's pace, not a wait for the server

        sender = asyncio.create_task(send_slowly())
        assert await _closed_by_server(reader, 10), "a connection trickling its headers was kept open"
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        writer.close()
        # 3. a keep-alive connection that idles after its response
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200")
        assert await _closed_by_server(reader, 10), "an idle keep-alive connection was kept open"
        writer.close()
        # and the server answers as before
        await wait_http_ok(f"http://127.0.0.1:{port}/health", 5)
    finally:
        stop.set()
        await asyncio.wait_for(serving, 30)


# -- item 11: log bytes are capped; a client that does not read is dropped -----------------------------
BIG = 60_000  # characters per line: under the 64 KiB at which swapproxy cuts a line


def big_printer(count: int) -> Any:
    return make_config({"a": fake("a", "--big-line", str(BIG), "--big-line-count", str(count))})


async def test_log_buffers_and_responses_are_capped_in_bytes(proxy_factory: Any) -> None:
    proxy = await proxy_factory(big_printer(150))  # ~9 MB of output at start-up
    rt = proxy.runtime
    async with proxy.http.get(proxy.url + "/upstream/a/load") as resp:
        assert resp.status == 200
    model_log = proxy.swapper.slot("a").process.log
    await wait_until(lambda: any(line.endswith(" 149") for line in model_log.tail()), 10, "the last big line")
    async with proxy.http.get(proxy.url + "/logs") as resp:
        text = await resp.text()
    assert (2 << 20) // 2 < len(text) <= (2 << 20) + 2000, len(text)  # the newest lines, up to the cap
    assert " 149\n" in text
    assert model_log.size <= MAX_BUFFER_BYTES and rt.all_log.size <= 2 << 20
    async with proxy.http.get(proxy.url + "/api/events?logs=1000") as resp:
        snapshot = await resp.content.readuntil(b"\n\n")
    assert len(snapshot) <= streams.SNAPSHOT_LOG_BYTES + 10_000, len(snapshot)


async def test_log_and_event_clients_that_stop_reading_are_dropped(proxy_factory: Any,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(streams, "WRITE_STALL", 0.5, raising=False)
    monkeypatch.setattr(proxy_module, "FLUSH_GRACE", 0.2)
    proxy = await proxy_factory(big_printer(300))  # ~18 MB that nobody reads
    rt = proxy.runtime
    port = int(proxy.url.rsplit(":", 1)[1])
    loop = asyncio.get_running_loop()
    socks = []
    try:
        for path in ("/logs/stream?no-history", "/logs/stream/upstream?no-history", "/api/events?logs=0"):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            await loop.sock_connect(sock, ("127.0.0.1", port))
            await loop.sock_sendall(sock, f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            socks.append(sock)  # and never read from it
        await wait_until(lambda: len(rt.all_log._subscribers) == 1 and len(rt.upstream_log._subscribers) == 1
                         and rt.events.subscriber_count == 1, 10, "the streams to subscribe")
        async with proxy.http.get(proxy.url + "/upstream/a/load") as resp:
            assert resp.status == 200

        def dropped(sock: socket.socket) -> bool:
            return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0] != TCP_ESTABLISHED

        await wait_until(lambda: all(dropped(s) for s in socks), 20, "swapproxy to drop the clients that stopped reading")
        await wait_until(lambda: not rt.all_log._subscribers and not rt.upstream_log._subscribers
                         and rt.events.subscriber_count == 0, 10, "their subscriptions to end")
    finally:
        for sock in socks:
            sock.close()
    async with proxy.http.get(proxy.url + "/health") as resp:
        assert resp.status == 200
