"""Helpers the tests share (``from support import ...``); the fixtures themselves are in conftest.py.

Everything here uses real processes and real sockets: configs around the fake
llama-server, a live swapproxy (in-process on a real socket, or ``python -m
swapproxy`` as a child process), ports, event-stream helpers. Waits are bounded
condition checks (an event, or a condition polled every few ms up to a
deadline), never fixed sleeps. Nothing here imports from scripts/, nor does
scripts/ import from here.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import random
import shutil
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import yaml
from aiohttp import web

from swapproxy.config import Config, parse_config
from swapproxy.web.app import make_app
from swapproxy.web.runtime import RUNTIME, Runtime


# -- ports ---------------------------------------------------------------------------------------
# The same two checks as scripts/bench/ports.py (the benchmarks' copy): the tests take their
# ports from 16000..31000, below the kernel's ephemeral range; the benchmarks take 31000 and up.
def ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (where outgoing connections take theirs)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def bindable(port: int) -> bool:
    """Whether a loopback socket can bind ``port`` right now."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


# -- configs, waits and a live swapproxy ----------------------------------------------------------
ROOT = Path(__file__).resolve().parents[1]
FAKE = ROOT / "tests" / "fake_llama_server.py"
PY = sys.executable
STATE_DIR = Path(tempfile.gettempdir()) / f"swapproxy-tests-{os.getpid()}"
#: How often wait_until re-checks its condition (a poll with a deadline, not a fixed wait).
POLL_INTERVAL = 0.005


def fake_cmd(*flags: str) -> str:
    """A model ``cmd`` that runs the fake llama-server on ${PORT}."""
    return " ".join([PY, str(FAKE), "--port", "${PORT}", *flags])


def fake(model_name: str, /, *flags: str, **extra: Any) -> dict[str, Any]:
    """One model entry: the fake llama-server as ``model_name`` with ``flags``, plus model keys ``extra``."""
    return {"cmd": fake_cmd("--model-name", model_name, *flags), **extra}


def models(*names: str, flags: tuple[str, ...] = (), **extra: Any) -> dict[str, dict[str, Any]]:
    """Model entries for ``names``, each the fake llama-server with the same flags and keys."""
    return {name: fake(name, *flags, **extra) for name in names}


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


#: Top-level keys for a config whose swaps close the models to stop at once (``maxWait: 0``):
#: for tests of the drain itself, which would otherwise wait out the scheduler's patience first.
NO_WAIT: dict[str, Any] = {"routing": {"scheduler": {"settings": {"fifo": {"maxWait": 0}}}}}


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


def cli_argv(cfg: Path, listen: int, *extra: str) -> list[str]:
    """The command line of a swapproxy child process serving ``cfg`` on 127.0.0.1:``listen``."""
    return [PY, "-m", "swapproxy", "-c", str(cfg), "--listen", f"127.0.0.1:{listen}", *extra]


async def start_cli(cfg: Path, listen: int, *extra: str, env: Mapping[str, str] | None = None,
                    output: int = asyncio.subprocess.DEVNULL) -> asyncio.subprocess.Process:
    """``python -m swapproxy -c cfg --listen 127.0.0.1:listen`` as a real process, once it answers /health."""
    proc = await asyncio.create_subprocess_exec(
        *cli_argv(cfg, listen, *extra),
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


async def start_proxy(config: Config, **app_options: Any) -> tuple[web.AppRunner, Proxy]:
    """swapproxy in this process on a real socket; ``app_options`` go to make_app (e.g. ``gpus``)."""
    app = make_app(config, **app_options)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    port = free_port_block(1)
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
    return runner, Proxy(app, f"http://127.0.0.1:{port}", session)



@dataclass
class CliProxy:
    """A swapproxy child process (for synchronous tests): its port, pid and output file."""

    port: int
    pid: int
    log: Path


@contextlib.contextmanager
def running_cli(doc: Mapping[str, Any], folder: Path, *extra: str, timeout: float = 30.0) -> Iterator[CliProxy]:
    """``python -m swapproxy`` on config ``doc`` until the block ends (SIGTERM by PID, SIGKILL if it hangs).

    Returns once it answers /health; its output goes to ``folder/swapproxy.log``.
    """
    config = folder / "swapproxy.yaml"
    config.write_text(json.dumps(dict(doc)))  # JSON is YAML
    port = free_port_block(1)
    log = folder / "swapproxy.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cli_argv(config, port, *extra), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout
        while True:
            assert proc.poll() is None, f"swapproxy exited: {log.read_text()}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except (OSError, urllib.error.URLError):
                pass
            assert time.monotonic() < deadline, f"swapproxy not up: {log.read_text()}"
            time.sleep(POLL_INTERVAL)  # a poll of /health under the deadline above, as wait_until polls
        yield CliProxy(port, proc.pid, log)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()


# -- event streams and gated streams ---------------------------------------------------------------
def sse(*objs: Any) -> bytes:
    """An event stream's bytes: one ``data:`` event per object (bytes are taken as they are)."""
    return b"".join(b"data: " + (o if isinstance(o, bytes) else json.dumps(o).encode()) + b"\n\n" for o in objs)


async def sse_events(resp: aiohttp.ClientResponse) -> AsyncIterator[dict[str, Any]]:
    """The JSON ``data:`` payloads of a server-sent event stream, one per event."""
    data: list[bytes] = []
    while True:
        line = await resp.content.readline()
        if not line:
            return
        line = line.rstrip(b"\r\n")
        if line.startswith(b"data:"):
            data.append(line[5:].strip())
        elif not line and data:
            yield json.loads(b"\n".join(data))
            data = []


async def open_gated_stream(proxy: Proxy, model: str) -> aiohttp.ClientResponse:
    """Start a streamed chat that the fake holds open until released; return once chunk 1 is in."""
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": True, "x_gate": True}
    resp = await proxy.http.post(proxy.url + "/v1/chat/completions", json=body)
    assert resp.status == 200
    first = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 10)
    assert first.startswith(b"data: ")
    return resp


async def release_all(proxy: Proxy, model: str, resp: aiohttp.ClientResponse) -> bytes:
    """Let the gated stream(s) on ``model``'s fake run to their end; return the rest of ``resp``."""
    port = proxy.swapper.slot(model).process.spec.port
    async with proxy.http.post(f"http://127.0.0.1:{port}/debug/release?n=1000") as r:
        assert r.status == 200
    rest = await asyncio.wait_for(resp.content.read(), 10)
    resp.release()
    return rest


# -- the fake llama-server on its own --------------------------------------------------------------
#: Upper bound for anything a FakeServer test waits on; they normally take milliseconds.
FAKE_TIMEOUT = 5.0
LISTENING_RE = re.compile(r"server is listening on http://(\[[^\]]+\]|[^:/\s]+):(\d+)")


class FakeServer:
    """One fake llama-server child process, with its output collected line by line."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.port: int | None = None
        self._new_line = asyncio.Event()
        assert proc.stdout is not None and proc.stderr is not None
        self._readers = [
            asyncio.create_task(self._pump(proc.stdout, self.stdout)),
            asyncio.create_task(self._pump(proc.stderr, self.stderr)),
        ]

    @property
    def url(self) -> str:
        assert self.port is not None, "server is not listening"
        return f"http://127.0.0.1:{self.port}"

    async def _pump(self, stream: asyncio.StreamReader, lines: list[str]) -> None:
        while raw := await stream.readline():
            lines.append(raw.decode(errors="replace").rstrip("\n"))
            self._new_line.set()
        self._new_line.set()

    async def wait_for_line(self, lines: list[str], pattern: str) -> re.Match[str]:
        """The first line of ``lines`` matching ``pattern``, waiting up to FAKE_TIMEOUT."""
        deadline = time.monotonic() + FAKE_TIMEOUT
        while True:
            for line in lines:
                if m := re.search(pattern, line):
                    return m
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.proc.returncode is not None and all(r.done() for r in self._readers):
                raise AssertionError(f"no line matching {pattern!r}; stdout={self.stdout!r} stderr={self.stderr!r}")
            self._new_line.clear()
            try:
                await asyncio.wait_for(self._new_line.wait(), min(remaining, 0.1))
            except asyncio.TimeoutError:
                pass

    async def wait_listening(self) -> int:
        m = await self.wait_for_line(self.stderr, LISTENING_RE.pattern)
        self.port = int(m.group(2))
        return self.port

    async def wait_exit(self) -> int:
        rc = await asyncio.wait_for(self.proc.wait(), FAKE_TIMEOUT)
        await asyncio.wait_for(asyncio.gather(*self._readers), FAKE_TIMEOUT)
        return rc

    async def kill(self) -> None:
        if self.proc.returncode is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)  # the whole group: grandchildren too
            except ProcessLookupError:
                pass
        await self.proc.wait()
        for task in self._readers:
            task.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)


Spawn = Callable[..., Awaitable[FakeServer]]


# -- a small GGUF file ------------------------------------------------------------------------------
def write_gguf(path: Path, *, arch: str = "llama", layers: int = 2, context: int = 2048, sliding_window: int = 0,
               file_type: int | None = None, size_label: str | None = None, name: str | None = None) -> Path:
    """A tiny GGUF (llama.cpp's own writer; 2 layers unless told, one 64x64 f32 tensor: 4,096
    parameters, 16 KiB) for tests that read one."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(layers)
    writer.add_embedding_length(64)
    writer.add_feed_forward_length(128)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_context_length(context)
    if sliding_window:
        writer.add_sliding_window(sliding_window)
    if file_type is not None:
        writer.add_file_type(file_type)
    if size_label is not None:
        writer.add_size_label(size_label)
    if name is not None:
        writer.add_name(name)
    writer.add_token_list([f"t{i}".encode() for i in range(100)])
    writer.add_tensor("w", np.zeros((64, 64), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# -- the UI tests --------------------------------------------------------------------------------
async def screenshot(page: Any, name: str) -> None:
    """With ``SWAPPROXY_UI_SCREENSHOTS=DIR``, save the whole page as ``DIR/<name>.png`` (for a person)."""
    folder = os.environ.get("SWAPPROXY_UI_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)


# -- things outside the repository some tests need -------------------------------------------------
#: Where scripts/install_llama.py caches the real llama-server and model (the ``llama`` marker's tests).
CACHE = Path(os.environ.get("SWAPPROXY_CACHE", Path.home() / ".cache" / "swapproxy"))
LLAMA_SERVER = CACHE / "bin" / "llama-server"
MODEL = CACHE / "models" / "gemma-3-270m-q4_k_m.gguf"
#: llama-swap's own config files, beside the repository (the ``compat`` marker's tests).
COMPAT = ROOT.parent / "shared" / "compat"
#: The system's chromium for the UI test (Playwright never downloads a browser here).
BROWSER = os.environ.get("SWAPPROXY_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
