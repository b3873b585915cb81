"""Shared test helpers: configs around the fake llama-server, a live swapproxy, waits.

Everything here uses real processes and real sockets. Waits are bounded
condition checks (an event, or a condition polled every few ms up to a
deadline), never fixed sleeps.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import random
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest
import yaml
from aiohttp import web

from support import bindable, ephemeral_low
from swapproxy.web.app import make_app
from swapproxy.web.runtime import RUNTIME, Runtime
from swapproxy.config import Config, parse_config

ROOT = Path(__file__).resolve().parents[1]
FAKE = ROOT / "tests" / "fake_llama_server.py"
PY = sys.executable
STATE_DIR = Path(tempfile.gettempdir()) / f"swapproxy-tests-{os.getpid()}"
#: How often wait_until re-checks its condition (a poll with a deadline, not a fixed wait).
POLL_INTERVAL = 0.005


def fake_cmd(*flags: str) -> str:
    """A model ``cmd`` that runs the fake llama-server on ${PORT}."""
    return " ".join([PY, str(FAKE), "--port", "${PORT}", *flags])


#: Listening ports for the tests come from below the kernel's ephemeral range, where no
#: outgoing connection (there are thousands in a run) can take one between our check and
#: the server's bind. Each xdist worker walks its own slice of 16000..31000 with a cursor
#: that starts at a random place, so two workers (or two tests in a row) do not pick the
#: same port, and a second run beside this one rarely does.
_REGION_LOW, _REGION_SIZE = 16000, 15000  # scripts/bench/ports.py takes 31000 and up
_WORKERS = max(int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1), 1)
_WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0) % _WORKERS
_SLICE = _REGION_SIZE // _WORKERS
_SLICE_BASE = _REGION_LOW + _WORKER * _SLICE
_USE_SLICES = _REGION_LOW + _REGION_SIZE <= ephemeral_low() and _SLICE >= 50
_cursor = random.randrange(_SLICE) if _SLICE > 0 else 0


def free_port_block(n: int) -> int:
    """A start port with ``n`` consecutive ports free right now (see _SLICE)."""
    global _cursor
    for _ in range(200):
        if _USE_SLICES and n <= _SLICE:
            if _cursor + n > _SLICE:
                _cursor = 0
            base = _SLICE_BASE + _cursor
            _cursor += n
        else:  # an unusual ephemeral range: ask the kernel for one
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                base = s.getsockname()[1]
            if base + n >= 65000:
                continue
        if all(bindable(port) for port in range(base, base + n)):
            return base
    raise RuntimeError("no free port block")


def make_config(models: Mapping[str, Mapping[str, Any]], **top: Any) -> Config:
    """A Config from plain dicts, through the real YAML parser."""
    doc: dict[str, Any] = {
        "startPort": free_port_block(len(models) + 1),
        "healthCheckTimeout": 15,
        "stateDir": str(STATE_DIR),  # pid records of this test session, not the user's
    }
    doc.update(top)
    doc["models"] = {k: dict(v) for k, v in models.items()}
    return parse_config(yaml.safe_dump(doc, sort_keys=False), file="test-config.yaml")


async def wait_until(
    cond: Callable[[], bool | Awaitable[bool]], timeout: float = 5.0, what: str = "condition"
) -> None:
    """Poll ``cond`` (plain or async) every few ms until true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = cond()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(POLL_INTERVAL)


def pid_gone(pid: int) -> bool:
    try:
        proc = psutil.Process(pid)
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def wait_gone(pid: int, timeout: float = 5.0) -> None:
    await wait_until(lambda: pid_gone(pid), timeout, f"pid {pid} to exit")


async def wait_http_ok(url: str, timeout: float = 15.0, what: str = "HTTP 200") -> None:
    """Poll ``url`` until it answers 200 (connection refused counts as not yet)."""
    async with aiohttp.ClientSession() as http:
        async def ok() -> bool:
            try:
                async with http.get(url) as resp:
                    return resp.status == 200
            except aiohttp.ClientError:
                return False

        await wait_until(ok, timeout, what)


async def start_cli(cfg: Path, listen: int, *extra: str, env: Mapping[str, str] | None = None,
                    output: int = asyncio.subprocess.DEVNULL) -> asyncio.subprocess.Process:
    """``python -m swapproxy -c cfg --listen 127.0.0.1:listen`` as a real process, once it answers /health."""
    proc = await asyncio.create_subprocess_exec(
        PY, "-m", "swapproxy", "-c", str(cfg), "--listen", f"127.0.0.1:{listen}", *extra,
        cwd=ROOT, env=dict(env) if env is not None else None, stdout=output, stderr=asyncio.subprocess.STDOUT,
    )
    try:
        await wait_http_ok(f"http://127.0.0.1:{listen}/health", 15, "swapproxy listening")
    except BaseException:
        proc.kill()
        await proc.wait()
        raise
    return proc


class Proxy:
    """A running swapproxy on a real socket, with a client session."""

    def __init__(self, app: web.Application, url: str, session: aiohttp.ClientSession) -> None:
        self.app = app
        self.url = url
        self.http = session

    @property
    def runtime(self) -> Runtime:
        return self.app[RUNTIME]

    @property
    def swapper(self):  # type: ignore[no-untyped-def]
        """The scheduler (the name the tests were written with)."""
        return self.app[RUNTIME].scheduler

    def pid(self, model: str) -> int | None:
        return self.swapper.slot(model).process.pid

    async def post(self, path: str, payload: Any, **kw: Any) -> aiohttp.ClientResponse:
        return await self.http.post(self.url + path, json=payload, **kw)

    async def chat(self, model: str, **extra: Any) -> tuple[int, Any]:
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}
        async with self.http.post(self.url + "/v1/chat/completions", json=body) as resp:
            data = await resp.json(content_type=None)
            return resp.status, data


async def start_proxy(config: Config) -> tuple[web.AppRunner, Proxy]:
    app = make_app(config)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    port = free_port_block(1)
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
    return runner, Proxy(app, f"http://127.0.0.1:{port}", session)


@pytest.fixture
async def proxy_factory() -> AsyncIterator[Callable[[Config], Any]]:
    """``proxy = await proxy_factory(config)``; everything is torn down after the test."""
    started: list[tuple[web.AppRunner, Proxy]] = []

    async def factory(config: Config) -> Proxy:
        runner, proxy = await start_proxy(config)
        started.append((runner, proxy))
        return proxy

    yield factory
    for runner, proxy in reversed(started):
        await proxy.http.close()
        await runner.cleanup()
