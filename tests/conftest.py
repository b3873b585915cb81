"""The tests' fixtures (every one of them); the helpers they use are in support.py."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from support import (BROWSER, COMPAT, FAKE, FAKE_TIMEOUT, LLAMA_SERVER, MODEL, FakeServer, Proxy, Spawn,
                     start_proxy)
from swapproxy.config import Config


@pytest.fixture
async def proxy_factory() -> AsyncIterator[Callable[[Config], Any]]:
    """``proxy = await proxy_factory(config)``; everything is torn down after the test."""
    started: list[tuple[web.AppRunner, Proxy]] = []

    async def factory(config: Config, **app_options: Any) -> Proxy:
        runner, proxy = await start_proxy(config, **app_options)
        started.append((runner, proxy))
        return proxy

    yield factory
    for runner, proxy in reversed(started):
        await proxy.http.close()
        await runner.cleanup()


@pytest.fixture
async def spawn() -> AsyncIterator[Spawn]:
    """Start fake servers (``--port 0`` unless given); all are killed afterwards."""
    started: list[FakeServer] = []

    async def _spawn(*args: str, wait_listening: bool = True) -> FakeServer:
        argv = list(args) if "--port" in args else ["--port", "0", *args]
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(FAKE), *argv,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # own process group, so kill() can take it all
            limit=1 << 20,  # allow the --big-line line
        )
        server = FakeServer(proc)
        started.append(server)
        if wait_listening:
            await server.wait_listening()
        return server

    try:
        yield _spawn
    finally:
        for server in started:
            await server.kill()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=FAKE_TIMEOUT)) as s:
        yield s


@pytest.fixture(scope="module")
def llama() -> tuple[Path, Path]:
    """The real llama-server and model (scripts/install_llama.py); missing ones fail, never skip."""
    missing = [str(p) for p in (LLAMA_SERVER, MODEL) if not p.exists()]
    if missing:
        pytest.fail(f"real llama-server or model missing ({', '.join(missing)}); run: python3 scripts/install_llama.py")
    return LLAMA_SERVER, MODEL


@pytest.fixture(scope="module")
def compat() -> Path:
    """The folder of llama-swap's own config files; missing, the compat tests fail, never skip."""
    if not COMPAT.is_dir():
        pytest.fail(f"llama-swap compat configs not found at {COMPAT}; these tests (-m compat) "
                    f"expect the shared/ folder checked out beside the repository")
    return COMPAT


@pytest.fixture
async def page() -> AsyncIterator[Any]:
    """A page in headless chromium. Without chromium: skipped, or failed under SWAPPROXY_REQUIRE_BROWSER."""
    required = bool(os.environ.get("SWAPPROXY_REQUIRE_BROWSER"))
    if BROWSER is None:
        if required:
            pytest.fail("no chromium found, but SWAPPROXY_REQUIRE_BROWSER is set")
        pytest.skip("no chromium on this machine (apt-get install chromium)")
    if required:
        from playwright.async_api import async_playwright
    else:
        async_playwright = pytest.importorskip("playwright.async_api").async_playwright
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=BROWSER, args=["--no-sandbox", "--disable-gpu"])
        try:
            context = await browser.new_context(viewport={"width": 1280, "height": 860})
            yield await context.new_page()
        finally:
            await browser.close()
