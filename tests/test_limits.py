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
