"""The small servers the benchmarks put beside or in place of swapproxy, each run as its own process.

* ``--serve-upstream --port P``: a minimal asyncio.Protocol HTTP/1.1 server with
  canned answers (/health, */completions, /debug/pid), much cheaper per request
  than the aiohttp fake llama-server, so that a proxy's own cost shows;
* ``--serve-relay TO --port P``: a byte-level (L4) relay to 127.0.0.1:TO, no
  HTTP parsing: what one more Python process hop costs by itself;
* ``--serve-forwarder TO --port P``: a bare aiohttp forwarder to 127.0.0.1:TO
  (one route, one ClientSession): the floor of the design swapproxy is built on.

They run as ``python scripts/bench/servers.py ...`` (swapproxy starts the upstream
as a model's ``cmd``), so this file imports nothing from its own package.
Each stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys

import aiohttp

#: The canned chat completion (also what nginx answers as the ``static`` upstream in perf.py).
CHAT_BODY = json.dumps({
    "id": "chatcmpl-raw", "object": "chat.completion", "created": 0, "model": "raw",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "tok0 "}, "finish_reason": "length"}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}, separators=(",", ":")).encode()


def _http_response(body: bytes, status: str = "200 OK") -> bytes:
    head = f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


_RESP_HEALTH = _http_response(b'{"status":"ok"}')
_RESP_CHAT = _http_response(CHAT_BODY)
_RESP_PID = _http_response(json.dumps({"pid": os.getpid()}).encode())
_RESP_404 = _http_response(b'{"error":"not found"}', "404 Not Found")
_RESP_501 = _http_response(b'{"error":"chunked bodies not supported"}', "501 Not Implemented")


class _FastUpstream(asyncio.Protocol):
    """HTTP/1.1 keep-alive with Content-Length bodies only; answers from canned bytes."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            request_line, *header_lines = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
            length, close = 0, False
            for line in header_lines:
                name, _, value = line.partition(":")
                key = name.strip().lower()
                if key == "content-length":
                    length = int(value.strip())
                elif key == "connection":
                    close = value.strip().lower() == "close"
                elif key == "transfer-encoding":
                    self.transport.write(_RESP_501)
                    self.transport.close()
                    return
            if len(self.buf) < end + 4 + length:
                return
            del self.buf[: end + 4 + length]
            parts = request_line.split(" ")
            path = parts[1].split("?", 1)[0] if len(parts) > 1 else "/"
            if path in ("/health", "/v1/health"):
                self.transport.write(_RESP_HEALTH)
            elif path.endswith("/completions"):
                self.transport.write(_RESP_CHAT)
            elif path == "/debug/pid":
                self.transport.write(_RESP_PID)
            else:
                self.transport.write(_RESP_404)
            if close:
                self.transport.close()
                return


class _RelayBack(asyncio.Protocol):
    """Upstream side of one relayed connection: bytes go back to the client as they come."""

    def __init__(self, client: asyncio.Transport) -> None:
        self.client = client

    def data_received(self, data: bytes) -> None:
        self.client.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.close()


class _Relay(asyncio.Protocol):
    """A byte-level (L4) relay: one upstream connection per client connection, no HTTP parsing.

    The control experiment: what one more asyncio process hop costs on this
    machine, with no proxy logic at all.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.transport: asyncio.Transport | None = None
        self.peer: asyncio.BaseTransport | None = None
        self.pending: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        asyncio.ensure_future(self._connect(transport))

    async def _connect(self, client: asyncio.Transport) -> None:
        loop = asyncio.get_running_loop()
        try:
            peer, _ = await loop.create_connection(lambda: _RelayBack(client), "127.0.0.1", self.target_port)
        except OSError:
            client.close()
            return
        assert isinstance(peer, asyncio.Transport)
        self.peer = peer
        if self.pending:
            peer.write(b"".join(self.pending))
            self.pending.clear()
        if client.is_closing():
            peer.close()

    def data_received(self, data: bytes) -> None:
        if isinstance(self.peer, asyncio.Transport):
            self.peer.write(data)
        else:
            self.pending.append(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None:
            self.peer.close()


def _stop_on_signal() -> asyncio.Event:
    """An event that SIGTERM or SIGINT sets (from now on)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def serve_upstream(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_FastUpstream, "127.0.0.1", port, reuse_address=True, backlog=1024)
    stop = _stop_on_signal()
    print(f"main: server is listening on http://127.0.0.1:{port} - starting the main loop", file=sys.stderr, flush=True)
    await stop.wait()
    server.close()


async def serve_relay(port: int, target_port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Relay(target_port), "127.0.0.1", port, reuse_address=True,
                                      backlog=1024)
    await _stop_on_signal().wait()
    server.close()


async def serve_forwarder(port: int, target_port: int) -> None:
    """The floor of an aiohttp proxy: one route, one ClientSession, body and answer passed as bytes."""
    from aiohttp import web

    session = aiohttp.ClientSession(auto_decompress=False, connector=aiohttp.TCPConnector(limit=0))
    base = f"http://127.0.0.1:{target_port}"

    async def forward(request: web.Request) -> web.Response:
        body = await request.read()
        async with session.post(base + request.path, data=body, headers={"Content-Type": "application/json"}) as up:
            return web.Response(body=await up.read(), status=up.status, content_type=up.content_type)

    app = web.Application()
    app.router.add_post("/{tail:.*}", forward)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
    await _stop_on_signal().wait()
    await runner.cleanup()
    await session.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serve-upstream", action="store_true")
    parser.add_argument("--serve-relay", metavar="TO_PORT", type=int)
    parser.add_argument("--serve-forwarder", metavar="TO_PORT", type=int)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    if args.serve_upstream:
        asyncio.run(serve_upstream(args.port))
    elif args.serve_relay is not None:
        asyncio.run(serve_relay(args.port, args.serve_relay))
    elif args.serve_forwarder is not None:
        asyncio.run(serve_forwarder(args.port, args.serve_forwarder))
    else:
        parser.error("one of --serve-upstream, --serve-relay, --serve-forwarder")
    return 0


if __name__ == "__main__":
    sys.exit(main())
