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
from typing import Any

import pytest

from support import make_config, models

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

    monkeypatch.setattr(server, "IDLE_TIMEOUT", 0.5, raising=False)
    monkeypatch.setattr(server, "_tune_gc", lambda: None)  # serving in the test process: leave its GC alone
    port = free_port_block(1)
    stop = asyncio.Event()
    serving = asyncio.create_task(server.serve(make_config(models("a")), "127.0.0.1", port, stop))
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
