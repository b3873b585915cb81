#!/usr/bin/env python3
"""What does going through swapproxy cost? Direct vs proxied, side by side, in one run.

Starts swapproxy as a real subprocess (``python -m swapproxy -c <tmp config>
--listen 127.0.0.1:<port> --log-level warn``) with four upstreams, all
preloaded, and talks to each of them both DIRECTLY (its own port: startPort
+ its index, as ${PORT} is handed out) and THROUGH the proxy. Direct and
proxied requests hit the very same upstream process (the pids are checked).

Upstreams:

* ``fake``   tests/fake_llama_server.py ``--tokens 1``: non-stream chat, /health;
* ``raw``    a minimal asyncio.Protocol HTTP/1.1 server in this very script
  (``--serve-upstream``), much cheaper per request than the aiohttp fake, so
  the proxy's own cost shows instead of the fake's;
* ``paced``  the fake with ``--tokens 50 --token-rate 50``: SSE pacing;
* ``gated``  the fake, streams with ``"x_gate": true``: one event per
  ``POST /debug/release`` on the fake's own port.

CONTROL rows put something that is not swapproxy between the client and ``raw``:
a byte-level relay (``--serve-relay``, asyncio.Protocol, no HTTP parsing): what
any extra Python process hop costs by itself on this machine (sockets,
wake-ups); and a bare aiohttp forwarder (``--serve-forwarder``: an aiohttp
server whose one handler re-sends the body through one shared ClientSession,
no routing, no headers work, no metrics): the floor of the design swapproxy is
built on. swapproxy's own share is its figure minus the forwarder's.

Measurements (direct and proxy alternate in rounds so they share the noise of
a busy machine):

1. added latency of small non-stream requests: sequential on 1 connection
   (interleaved request by request), and open loop at a fixed offered rate over
   32 connections, latency measured from each request's *scheduled* send time
   (no coordinated omission);
2. maximum req/s, closed loop, 32 connections, with the CPU each process used
   (CPU µs per request is the figure least disturbed by a shared machine);
3. SSE: lateness of paced events against the nominal schedule (anchored at
   ``min_i(arrival_i - i/R)``, so a late first event does not make the rest
   look early), 1 stream and 64 concurrent; and the gated test: time from a
   release to the event's arrival, direct vs proxy, which is the cleanest
   per-event added delay and also shows whether an event is held back.

The client runs in this process, on the same (2) cores as swapproxy and the
upstreams: every figure includes that contention.

Usage::

    python scripts/bench_proxy.py            # full run, about 2 minutes
    python scripts/bench_proxy.py --quick    # scaled down, under ~30 s
    python scripts/bench_proxy.py --profile-proxy /tmp/proxy.prof   # swapproxy under cProfile
    mkdir -p /tmp/head && git archive HEAD swapproxy | tar -x -C /tmp/head
    python scripts/bench_proxy.py --src /tmp/head   # benchmark another tree's swapproxy package

Output: one table (columns direct, proxy, proxy−direct, proxy/direct, target,
verdict) and notes. Targets, PASS/MISS: added latency ≤ 1 ms p50 and ≤ 5 ms
p99 below saturation; ≤ 1 ms p99 added per SSE event; no event held back.
Absolute times mean little on a shared machine: read the differences, the
ratios, the paired Δ and the CPU µs per request (the "other tenants" rows say
how much of the machine the rest of the world was using meanwhile).

The models get ``concurrencyLimit: 1000``: swapproxy's default of 10 would
answer 429 to 32 connections. The proxy is stopped with SIGTERM (which stops
its upstreams) by pid when the run ends, however it ends.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import aiohttp
import psutil  # type: ignore[import-untyped]
from ports import free_port_block  # scripts/ is on sys.path: this file's own directory

ROOT = Path(__file__).resolve().parents[1]
THIS = Path(__file__).resolve()
PY = sys.executable

# --------------------------------------------------------------------------- #
# The fast upstream (``--serve-upstream``): no aiohttp, canned answers.
# --------------------------------------------------------------------------- #

_CHAT_BODY = json.dumps({
    "id": "chatcmpl-raw", "object": "chat.completion", "created": 0, "model": "raw",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "tok0 "}, "finish_reason": "length"}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}, separators=(",", ":")).encode()


def _http_response(body: bytes, status: str = "200 OK") -> bytes:
    head = f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


_RESP_HEALTH = _http_response(b'{"status":"ok"}')
_RESP_CHAT = _http_response(_CHAT_BODY)
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


async def _serve_upstream(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_FastUpstream, "127.0.0.1", port, reuse_address=True, backlog=1024)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"main: server is listening on http://127.0.0.1:{port} - starting the main loop", file=sys.stderr, flush=True)
    await stop.wait()
    server.close()


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


async def _serve_forwarder(port: int, target_port: int) -> None:
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
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()
    await session.close()


async def _serve_relay(port: int, target_port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Relay(target_port), "127.0.0.1", port, reuse_address=True,
                                      backlog=1024)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()


# --------------------------------------------------------------------------- #
# Numbers
# --------------------------------------------------------------------------- #


def pct(values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1), linear interpolation; nan when empty."""
    if not values:
        return math.nan
    s = sorted(values)
    k = (len(s) - 1) * q
    lo = math.floor(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def ms(v: float) -> str:
    return "n/a" if math.isnan(v) else f"{v * 1000:.3f}"


def signed_ms(v: float) -> str:
    return "n/a" if math.isnan(v) else f"{v * 1000:+.3f}"


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b and not math.isnan(a) and not math.isnan(b) else "n/a"


@dataclass
class Row:
    section: str
    scenario: str
    metric: str
    direct: str = ""
    proxy: str = ""
    delta: str = ""
    ratio: str = ""
    target: str = ""
    verdict: str = ""


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def latency(self, section: str, scenario: str, direct: Sequence[float], proxy: Sequence[float],
                targets: tuple[float | None, float | None], errors: int = 0) -> None:
        """p50 and p99 rows (seconds in, ms out); target = max added seconds, None = none."""
        for q, name, target in ((0.5, "p50 ms", targets[0]), (0.99, "p99 ms", targets[1])):
            d, p = pct(direct, q), pct(proxy, q)
            verdict = ""
            if target is not None:
                verdict = "PASS" if p - d <= target else "MISS"
            self.rows.append(Row(section, scenario, name, ms(d), ms(p), signed_ms(p - d), ratio(p, d),
                                 f"≤ {target * 1000:+g} ms" if target is not None else "", verdict))
        if errors:
            self.rows.append(Row(section, scenario, "errors", delta=str(errors), verdict="MISS"))

    def render(self) -> str:
        header = Row("section", "scenario", "metric", "direct", "proxy", "proxy−direct", "proxy/direct",
                     "target", "verdict")
        cols = list(header.__dict__)
        table = [header, *self.rows]
        widths = {c: max(len(str(getattr(r, c))) for r in table) for c in cols}
        lines = []
        for i, r in enumerate(table):
            cells = [str(getattr(r, c)).ljust(widths[c]) for c in cols]
            lines.append("| " + " | ".join(cells) + " |")
            if i == 0:
                lines.append("|" + "|".join("-" * (widths[c] + 2) for c in cols) + "|")
        return "\n".join(lines)


# --------------------------------------------------------------------------- #
# Setup: config, swapproxy subprocess
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class Plan:
    name: str
    seq_requests: int
    seq_warmup: int
    rate: float
    conns: int
    open_seconds: float  # per side, split over `rounds`
    max_seconds: float  # per side, split over `rounds`
    rounds: int
    sse_rate: float
    sse_tokens: int
    sse_single_rounds: int
    sse_streams: int
    sse_multi_rounds: int
    gated_tokens: int
    gated_rounds: int


FULL = Plan("full", seq_requests=500, seq_warmup=50, rate=200.0, conns=32, open_seconds=5.0, max_seconds=5.0,
            rounds=10, sse_rate=50.0, sse_tokens=50, sse_single_rounds=5, sse_streams=64, sse_multi_rounds=3,
            gated_tokens=20, gated_rounds=40)
QUICK = Plan("quick", seq_requests=120, seq_warmup=20, rate=200.0, conns=32, open_seconds=0.8, max_seconds=0.8,
             rounds=4, sse_rate=50.0, sse_tokens=50, sse_single_rounds=1, sse_streams=64, sse_multi_rounds=1,
             gated_tokens=20, gated_rounds=5)

MODELS = ("fake", "raw", "paced", "gated")


FAKE = ROOT / "tests" / "fake_llama_server.py"


def fake_cmd(*flags: str) -> str:
    """A model cmd running the fake llama-server on ${PORT} (as tests/conftest.py's fake_cmd)."""
    return " ".join([PY, str(FAKE), "--port", "${PORT}", *flags])



def write_config(plan: Plan, directory: Path) -> tuple[Path, int, dict[str, str]]:
    """The config file, the proxy's port, and each model's direct base URL.

    ${PORT} is handed out from startPort upward in config order; bench() checks
    that each direct URL answers with the pid swapproxy reports for that model.
    """
    base = free_port_block(len(MODELS) + 1)
    cmds = {
        "fake": fake_cmd("--model-name", "fake", "--tokens", "1"),
        "raw": f"{PY} {THIS} --serve-upstream --port ${{PORT}}",
        "paced": fake_cmd("--model-name", "paced", "--tokens", str(plan.sse_tokens),
                          "--token-rate", f"{plan.sse_rate:g}"),
        "gated": fake_cmd("--model-name", "gated", "--tokens", str(plan.gated_tokens)),
    }
    doc: dict[str, Any] = {
        "startPort": base,
        "healthCheckTimeout": 60,
        "logToStdout": "none",
        "hooks": {"on_startup": {"preload": list(MODELS)}},
        # All four run at once: one group that neither swaps nor excludes.
        "groups": {"bench": {"swap": False, "exclusive": False, "members": list(MODELS)}},
        # concurrencyLimit defaults to 10: 32 connections / 64 streams would get 429s.
        "models": {m: {"cmd": cmds[m], "concurrencyLimit": 1000, "ttl": 0} for m in MODELS},
    }
    path = directory / "bench.yaml"
    path.write_text(json.dumps(doc, indent=2))  # JSON is YAML
    return path, base + len(MODELS), {m: f"http://127.0.0.1:{base + i}" for i, m in enumerate(MODELS)}


def describe_source(src: Path) -> str:
    """Where the swapproxy under test comes from: path, and git commit (+dirty) if it is a checkout."""
    try:
        sha = subprocess.run(["git", "-C", str(src), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(src), "status", "--porcelain", "--", "swapproxy"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return f"{src} (not a git checkout)"
    return f"{src} (git {sha}{', swapproxy/ has uncommitted changes' if dirty else ''})"


def start_proxy(src: Path, config: Path, port: int, log: Path, profile: str | None) -> subprocess.Popen[bytes]:
    argv = [PY]
    if profile:
        argv += ["-m", "cProfile", "-o", profile]
    argv += ["-m", "swapproxy", "-c", str(config), "--listen", f"127.0.0.1:{port}", "--log-level", "warn"]
    env = dict(os.environ, PYTHONPATH=str(src))
    with log.open("wb") as out:
        return subprocess.Popen(argv, cwd=src, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)


def terminate(proc: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM ``proc`` by pid if it still runs; SIGKILL after ``grace`` seconds; always reaped."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def stop_proxy(proc: subprocess.Popen[bytes], upstream_pids: Sequence[int]) -> None:
    """SIGTERM the proxy by pid (it stops its upstreams), SIGKILL what is left after a grace period."""
    terminate(proc, 20)
    deadline = time.monotonic() + 5
    for pid in upstream_pids:
        while time.monotonic() < deadline:
            try:
                if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                    break
            except psutil.NoSuchProcess:
                break
            time.sleep(0.05)
        else:
            try:
                os.kill(pid, signal.SIGKILL)
                print(f"warning: upstream pid {pid} outlived swapproxy; killed it", file=sys.stderr)
            except ProcessLookupError:
                pass


# --------------------------------------------------------------------------- #
# Client side
# --------------------------------------------------------------------------- #

JSON_HEADERS = {"Content-Type": "application/json"}
Request = Callable[[aiohttp.ClientSession], Awaitable[bool]]


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


@dataclass(frozen=True)
class Target:
    label: str
    model: str  # whose upstream process serves it
    direct: Request
    proxy: Request  # through swapproxy, or through a control (see Relay) when `control`
    control: bool = False
    control_pid: int = 0


async def warm(s: aiohttp.ClientSession, req: Request, conns: int) -> None:
    """Open `conns` pooled connections (and run a few requests)."""
    for _ in range(2):
        await asyncio.gather(*(req(s) for _ in range(conns)))


async def sequential(t: Target, n: int, warmup: int) -> tuple[list[float], list[float], list[float], int]:
    """Interleaved direct/proxy requests on one connection each: (direct, proxy, paired Δ, errors)."""
    d_lat: list[float] = []
    p_lat: list[float] = []
    errors = 0
    async with session(1) as sd, session(1) as sp:
        for _ in range(warmup):
            await t.direct(sd)
            await t.proxy(sp)
        for i in range(n):
            pair: dict[str, float] = {}
            order = (("d", t.direct, sd), ("p", t.proxy, sp))
            for side, req, s in (order if i % 2 == 0 else order[::-1]):
                t0 = time.perf_counter()
                ok = await req(s)
                pair[side] = time.perf_counter() - t0
                errors += not ok
            d_lat.append(pair["d"])
            p_lat.append(pair["p"])
    return d_lat, p_lat, [p - d for d, p in zip(d_lat, p_lat)], errors


async def open_loop(s: aiohttp.ClientSession, req: Request, rate: float, seconds: float,
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


_TICK = os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds every process on the machine has used (all CPUs, /proc/stat), 0 if unknown."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()[1:]
    except OSError:
        return 0.0
    ticks = [int(x) for x in fields[:8]]  # user nice system idle iowait irq softirq steal
    return (sum(ticks) - ticks[3] - ticks[4]) / _TICK


class CpuMeter:
    """CPU seconds (user + system) of named processes, this one as 'client', and the machine's."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.procs["client"] = psutil.Process()

    def sample(self) -> dict[str, float]:
        out = {"machine": machine_busy_seconds()}
        for name, p in self.procs.items():
            t = p.cpu_times()
            out[name] = t.user + t.system
        return out


@dataclass
class Tally:
    """One side's closed-loop totals over its rounds."""

    ok: int = 0
    err: int = 0
    wall: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)

    def add(self, ok: int, err: int, wall: float, before: dict[str, float], after: dict[str, float]) -> None:
        self.ok += ok
        self.err += err
        self.wall += wall
        for k, v in after.items():
            self.cpu[k] = self.cpu.get(k, 0.0) + v - before[k]

    @property
    def rps(self) -> float:
        return self.ok / self.wall if self.wall else math.nan

    def ours(self) -> float:
        return sum(v for k, v in self.cpu.items() if k != "machine")

    def cpu_pct(self, who: str | None) -> float:
        """% of one core used by `who` (None: all measured processes; "others": the rest of the machine)."""
        if who is None:
            used = self.ours()
        elif who == "others":
            used = max(0.0, self.cpu.get("machine", 0.0) - self.ours())
        else:
            used = self.cpu.get(who, 0.0)
        return 100 * used / self.wall if self.wall else math.nan

    def us_per_req(self, who: str) -> float:
        return 1e6 * self.cpu.get(who, 0.0) / max(1, self.ok)

    def busiest(self) -> str:
        return max((k for k in self.cpu if k != "machine"), key=lambda k: self.cpu[k])


async def closed_loop(s: aiohttp.ClientSession, req: Request, conns: int, seconds: float) -> tuple[int, int, float]:
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


# -- SSE -------------------------------------------------------------------------------------


async def read_events(resp: aiohttp.ClientResponse, sink: Callable[[float, bytes], None]) -> None:
    """Split the body into SSE events; each is stamped with its chunk's arrival time."""
    buf = b""
    async for chunk in resp.content.iter_any():
        now = time.monotonic()
        buf += chunk
        while (i := buf.find(b"\n\n")) >= 0:
            sink(now, buf[:i])
            buf = buf[i + 2:]


async def paced_stream(s: aiohttp.ClientSession, url: str, body: bytes, n_tokens: int,
                       rate: float) -> list[float] | None:
    """Lateness of each token event vs the nominal schedule; None if the stream was wrong."""
    times: list[float] = []
    try:
        async with s.post(url, data=body, headers=JSON_HEADERS) as resp:
            if resp.status != 200:
                return None
            await read_events(resp, lambda t, _ev: times.append(t))
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
        return None
    if len(times) != n_tokens + 2:  # tokens, finish chunk, [DONE]
        return None
    shifted = [t - i / rate for i, t in enumerate(times[:n_tokens])]
    anchor = min(shifted)
    return [x - anchor for x in shifted]


@dataclass
class GatedResult:
    delays: list[float] = field(default_factory=list)
    held_back: int = 0  # releases whose event did not arrive within the timeout
    unreleased: int = 0  # events that arrived without a release of their own
    broken: int = 0


async def gated_stream(s: aiohttp.ClientSession, ctl: aiohttp.ClientSession, url: str, body: bytes,
                       release_url: str, n_tokens: int, out: GatedResult, timeout: float = 1.0) -> None:
    """One gated stream: release one event at a time, time release → arrival."""
    q: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
    try:
        async with s.post(url, data=body, headers=JSON_HEADERS) as resp:
            if resp.status != 200:
                out.broken += 1
                return
            reader = asyncio.create_task(read_events(resp, lambda t, ev: q.put_nowait((t, ev))))
            try:
                try:
                    await asyncio.wait_for(q.get(), timeout)  # the first event needs no release
                except asyncio.TimeoutError:
                    out.held_back += 1
                for _ in range(n_tokens + 1):  # the other tokens, the finish chunk, [DONE]
                    await asyncio.sleep(0.001)  # let anything unreleased show up first
                    while not q.empty():
                        q.get_nowait()
                        out.unreleased += 1
                    t0 = time.monotonic()
                    async with ctl.post(release_url) as r:
                        await r.read()
                    try:
                        arrived, _ = await asyncio.wait_for(q.get(), timeout)
                    except asyncio.TimeoutError:
                        out.held_back += 1
                        continue
                    out.delays.append(arrived - t0)
                await asyncio.wait_for(reader, timeout)
            finally:
                reader.cancel()
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
        out.broken += 1


# --------------------------------------------------------------------------- #
# The run
# --------------------------------------------------------------------------- #


async def wait_ready(proxy_url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 90) -> dict[str, int]:
    """Poll the proxy's /health until every model runs; their pids."""
    deadline = time.monotonic() + timeout
    async with session(1) as s:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"swapproxy exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                async with s.get(proxy_url + "/health") as resp:
                    models = (await resp.json()).get("models", {})
                if all(m in models for m in MODELS):
                    return {m: int(models[m]["pid"]) for m in MODELS}
            except (aiohttp.ClientError, OSError, ValueError):
                pass
            await asyncio.sleep(0.05)
    raise RuntimeError(f"models not ready after {timeout}s:\n{log.read_text()[-3000:]}")


@dataclass(frozen=True)
class Relay:
    url: str
    pid: int


async def bench(plan: Plan, proxy_url: str, direct: dict[str, str], pids: dict[str, int], proxy_pid: int,
                relay: Relay, forwarder: Relay, report: Report) -> None:
    # Direct and proxied requests must reach the same process.
    async with session(1) as s:
        for m in MODELS:
            async with s.get(direct[m] + "/debug/pid") as resp:
                got = (await resp.json())["pid"]
            if got != pids[m]:
                raise RuntimeError(f"{m}: direct port answers pid {got}, swapproxy runs pid {pids[m]}")
    report.notes.append("direct and proxied requests reach the same upstream process (pids checked): yes")

    chat = "/v1/chat/completions"
    targets = [
        Target("POST chat, fake", "fake", post(direct["fake"] + chat, chat_body("fake", max_tokens=1)),
               post(proxy_url + chat, chat_body("fake", max_tokens=1))),
        Target("GET /health, fake", "fake", get(direct["fake"] + "/health"), get(proxy_url + "/upstream/fake/health")),
        Target("POST chat, raw", "raw", post(direct["raw"] + chat, chat_body("raw", max_tokens=1)),
               post(proxy_url + chat, chat_body("raw", max_tokens=1))),
        Target("CONTROL: raw via L4 byte relay", "raw", post(direct["raw"] + chat, chat_body("raw", max_tokens=1)),
               post(relay.url + chat, chat_body("raw", max_tokens=1)), control=True, control_pid=relay.pid),
        Target("CONTROL: raw via bare aiohttp forwarder", "raw",
               post(direct["raw"] + chat, chat_body("raw", max_tokens=1)),
               post(forwarder.url + chat, chat_body("raw", max_tokens=1)), control=True, control_pid=forwarder.pid),
    ]
    for control in (relay, forwarder):  # plain subprocesses: wait until they listen
        for _ in range(200):
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", int(control.url.rsplit(":", 1)[1]))
                writer.close()
                break
            except OSError:
                await asyncio.sleep(0.05)

    # 1a. sequential, 1 connection
    sec = "1 latency"
    for t in targets:
        d, p, paired, errors = await sequential(t, plan.seq_requests, plan.seq_warmup)
        scen = f"seq 1 conn x{plan.seq_requests}: {t.label}"
        report.latency(sec, scen, d, p, (None, None) if t.control else (0.001, 0.005), errors)
        report.rows.append(Row(sec, scen, "paired Δ p50 ms", delta=signed_ms(pct(paired, 0.5))))

    # 1b. open loop, fixed rate
    worst_lag = 0.0
    for t in targets:
        lat: dict[str, list[float]] = {"d": [], "p": []}
        errors = 0
        async with session(plan.conns) as sd, session(plan.conns) as sp:
            await warm(sd, t.direct, plan.conns)
            await warm(sp, t.proxy, plan.conns)
            for r in range(plan.rounds):
                order = [("d", t.direct, sd), ("p", t.proxy, sp)]
                for side, req, s in (order if r % 2 == 0 else order[::-1]):
                    e, lag = await open_loop(s, req, plan.rate, plan.open_seconds / plan.rounds, lat[side])
                    errors += e
                    worst_lag = max(worst_lag, lag)
        scen = f"open {plan.rate:g} req/s, {plan.conns} conns, {plan.open_seconds:g}s: {t.label}"
        report.latency(sec, scen, lat["d"], lat["p"], (None, None) if t.control else (0.001, 0.005), errors)
    report.notes.append(f"open loop: worst client send lag {worst_lag * 1000:.1f} ms behind schedule "
                        "(counted in the latency: it is measured from the scheduled time)")

    # 2. max req/s, closed loop
    sec = "2 max req/s"
    cores = os.cpu_count() or 1
    max_rps: dict[str, float] = {}
    for t in targets:
        meter = CpuMeter({"proxy": t.control_pid if t.control else proxy_pid, "upstream": pids[t.model]})
        tally = {"d": Tally(), "p": Tally()}
        async with session(plan.conns) as sd, session(plan.conns) as sp:
            for req, s in ((t.direct, sd), (t.proxy, sp)):
                await warm(s, req, plan.conns)
                await closed_loop(s, req, plan.conns, 0.2)
            for r in range(plan.rounds):
                order = [("d", t.direct, sd), ("p", t.proxy, sp)]
                for side, req, s in (order if r % 2 == 0 else order[::-1]):
                    before = meter.sample()
                    ok, err, wall = await closed_loop(s, req, plan.conns, plan.max_seconds / plan.rounds)
                    tally[side].add(ok, err, wall, before, meter.sample())
        td, tp = tally["d"], tally["p"]
        max_rps[t.label] = tp.rps
        scen = f"{plan.conns} conns, closed, {plan.max_seconds:g}s: {t.label}"
        report.rows.append(Row(sec, scen, "req/s", f"{td.rps:.0f}", f"{tp.rps:.0f}", f"{tp.rps - td.rps:+.0f}",
                               ratio(tp.rps, td.rps)))
        if td.err + tp.err:
            report.rows.append(Row(sec, scen, "errors", delta=str(td.err + tp.err), verdict="MISS"))
        for who in ("client", "proxy", "upstream"):
            report.rows.append(Row(sec, scen, f"CPU % {who}", f"{td.cpu_pct(who):.0f}", f"{tp.cpu_pct(who):.0f}",
                                   f"{tp.cpu_pct(who) - td.cpu_pct(who):+.0f}"))
        for who in ("client", "proxy", "upstream"):
            report.rows.append(Row(sec, scen, f"CPU µs/req {who}", f"{td.us_per_req(who):.0f}",
                                   f"{tp.us_per_req(who):.0f}", f"{tp.us_per_req(who) - td.us_per_req(who):+.0f}",
                                   ratio(tp.us_per_req(who), td.us_per_req(who))))
        report.rows.append(Row(sec, scen, "CPU % ours (sum)", f"{td.cpu_pct(None):.0f}", f"{tp.cpu_pct(None):.0f}"))
        report.rows.append(Row(sec, scen, f"CPU % other tenants (of {cores * 100})", f"{td.cpu_pct('others'):.0f}",
                               f"{tp.cpu_pct('others'):.0f}"))
        bd, bp = td.busiest(), tp.busiest()
        proxy_us = tp.us_per_req("proxy") - td.us_per_req("proxy")  # its log reading happens in both modes
        note = (f"{t.label}: busiest process direct = {bd} ({td.cpu_pct(bd):.0f}% of a core), proxied = {bp} "
                f"({tp.cpu_pct(bp):.0f}%); ours {td.cpu_pct(None):.0f}% / {tp.cpu_pct(None):.0f}%, other tenants "
                f"{td.cpu_pct('others'):.0f}% / {tp.cpu_pct('others'):.0f}% of {cores * 100}%. "
                f"{t.label.removeprefix('CONTROL: raw via ') if t.control else 'swapproxy'} costs {proxy_us:.0f} "
                "CPU µs per proxied request "
                f"→ one-core ceiling ≈ {1e6 / max(proxy_us, 1e-9):.0f} req/s")
        if td.us_per_req("proxy") >= 5 and not t.control:
            note += (f". Even direct requests cost swapproxy {td.us_per_req('proxy'):.0f} µs each: it reads the "
                     "upstream's per-request log line from its stdout pipe")
        if max(td.cpu_pct(bd), tp.cpu_pct(bp)) < 85:
            note += (". No process of ours reached 85% of a core: the limit is the CPU share the other tenants "
                     "left and the latency of the client → proxy → upstream chain, not one saturated process")
        if t.model == "fake" and max(td.cpu_pct("upstream"), tp.cpu_pct("upstream")) >= 85:
            note += (f". The fake upstream is a bottleneck ({td.cpu_pct('upstream'):.0f}% / "
                     f"{tp.cpu_pct('upstream'):.0f}% of its one core): the req/s ratio understates the proxy's cost")
        report.notes.append(note)

    # Was the open loop below saturation?
    real = [t for t in targets if not t.control]
    shares = ", ".join(f"{t.label} {100 * plan.rate / max_rps[t.label]:.0f}%" for t in real)
    report.notes.append(f"open-loop rate {plan.rate:g} req/s as a share of the proxied max req/s: {shares}"
                        + (" (≥ 50%: near saturation, the 'below saturation' target does not apply)"
                           if any(max_rps[t.label] < 2 * plan.rate for t in real) else " (below saturation)"))

    # 3. SSE
    sec = "3 SSE"
    paced_body = chat_body("paced", stream=True)
    paced_urls = {"d": direct["paced"] + "/v1/chat/completions", "p": proxy_url + "/v1/chat/completions"}
    for n_streams, rounds in ((1, plan.sse_single_rounds), (plan.sse_streams, plan.sse_multi_rounds)):
        late: dict[str, list[float]] = {"d": [], "p": []}
        tally = {"d": Tally(), "p": Tally()}
        meter = CpuMeter({"proxy": proxy_pid, "upstream": pids["paced"]})
        broken = 0
        async with session(n_streams) as sd, session(n_streams) as sp:
            sessions = {"d": sd, "p": sp}
            for r in range(rounds):
                for side in ("dp" if r % 2 == 0 else "pd"):
                    before, t0 = meter.sample(), time.monotonic()
                    results = await asyncio.gather(*(
                        paced_stream(sessions[side], paced_urls[side], paced_body, plan.sse_tokens, plan.sse_rate)
                        for _ in range(n_streams)))
                    events = (plan.sse_tokens + 2) * sum(x is not None for x in results)
                    tally[side].add(events, 0, time.monotonic() - t0, before, meter.sample())
                    for stream in results:
                        if stream is None:
                            broken += 1
                        else:
                            late[side].extend(stream)
        scen = (f"paced {plan.sse_rate:g} ev/s x{plan.sse_tokens}, {n_streams} stream(s) x{rounds} round(s): "
                "event lateness vs schedule")
        report.latency(sec, scen, late["d"], late["p"], (None, 0.001), broken)
        d_max, p_max = max(late["d"], default=math.nan), max(late["p"], default=math.nan)
        report.rows.append(Row(sec, scen, "max ms", ms(d_max), ms(p_max), signed_ms(p_max - d_max)))
        td, tp = tally["d"], tally["p"]
        report.rows.append(Row(sec, scen, "CPU µs/event proxy", f"{td.us_per_req('proxy'):.0f}",
                               f"{tp.us_per_req('proxy'):.0f}",
                               f"{tp.us_per_req('proxy') - td.us_per_req('proxy'):+.0f}"))
        report.rows.append(Row(sec, scen, "CPU % other tenants", f"{td.cpu_pct('others'):.0f}",
                               f"{tp.cpu_pct('others'):.0f}"))

    gated_body = chat_body("gated", stream=True, x_gate=True)
    gated_urls = {"d": direct["gated"] + "/v1/chat/completions", "p": proxy_url + "/v1/chat/completions"}
    release_url = direct["gated"] + "/debug/release"
    res = {"d": GatedResult(), "p": GatedResult()}
    async with session(1) as sd, session(1) as sp, session(1) as ctl:
        sessions = {"d": sd, "p": sp}
        for r in range(plan.gated_rounds):
            for side in ("dp" if r % 2 == 0 else "pd"):
                await gated_stream(sessions[side], ctl, gated_urls[side], gated_body, release_url,
                                   plan.gated_tokens, res[side])
        async with ctl.get(direct["gated"] + "/debug/stats") as resp:
            leftover = (await resp.json())["gate_credits"]
    scen = f"gated: release → event arrives, {plan.gated_rounds} stream(s) x{plan.gated_tokens + 1} events"
    report.latency(sec, scen, res["d"].delays, res["p"].delays, (None, 0.001),
                   res["d"].broken + res["p"].broken)
    held = {side: res[side].held_back + res[side].unreleased for side in "dp"}
    report.rows.append(Row(sec, scen, "events held back", str(held["d"]), str(held["p"]),
                           target="0", verdict="PASS" if held["p"] == 0 and leftover == 0 else "MISS"))
    if leftover:
        report.notes.append(f"gated: {leftover} release credit(s) left over at the end (an event went missing)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="scaled-down run, under ~30 s")
    parser.add_argument("--profile-proxy", metavar="FILE", help="run swapproxy under cProfile, stats to FILE")
    parser.add_argument("--src", metavar="DIR", type=Path, default=ROOT,
                        help="run the swapproxy package found in DIR (default: this checkout), e.g. an "
                             "unpacked `git archive` of another commit")
    parser.add_argument("--serve-upstream", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--serve-relay", metavar="TO_PORT", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--serve-forwarder", metavar="TO_PORT", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_upstream:
        asyncio.run(_serve_upstream(args.port))
        return 0
    if args.serve_relay is not None:
        asyncio.run(_serve_relay(args.port, args.serve_relay))
        return 0
    if args.serve_forwarder is not None:
        asyncio.run(_serve_forwarder(args.port, args.serve_forwarder))
        return 0

    plan = QUICK if args.quick else FULL
    began = time.monotonic()
    load = os.getloadavg()

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    report = Report()
    with tempfile.TemporaryDirectory(prefix="bench_proxy_") as tmp:
        config, port, direct = write_config(plan, Path(tmp))
        proxy_url = f"http://127.0.0.1:{port}"
        log = Path(tmp) / "swapproxy.log"
        relay_port = free_port_block(2)
        forwarder_port = relay_port + 1
        raw_port = int(direct["raw"].rsplit(":", 1)[1])
        controls = {
            name: subprocess.Popen([PY, str(THIS), f"--serve-{name}", str(raw_port), "--port", str(cport)],
                                   stdin=subprocess.DEVNULL)
            for name, cport in (("relay", relay_port), ("forwarder", forwarder_port))
        }
        proc = start_proxy(args.src.resolve(), config, port, log, args.profile_proxy)
        pids: dict[str, int] = {}
        try:
            async def run() -> None:
                pids.update(await wait_ready(proxy_url, proc, log))
                report.notes.append(f"setup (swapproxy + 4 upstreams preloaded): {time.monotonic() - began:.1f}s")
                relay_at = Relay(f"http://127.0.0.1:{relay_port}", controls["relay"].pid)
                forwarder_at = Relay(f"http://127.0.0.1:{forwarder_port}", controls["forwarder"].pid)
                await bench(plan, proxy_url, direct, pids, proc.pid, relay_at, forwarder_at, report)

            asyncio.run(run())
        finally:
            stop_proxy(proc, list(pids.values()))
            for control in controls.values():
                terminate(control, 5)
        tail = log.read_text().strip()

    print(f"swapproxy bench_proxy ({plan.name} mode): direct vs through swapproxy, same upstream processes")
    print(f"host: {os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at start; "
          f"Python {platform.python_version()}, aiohttp {aiohttp.__version__}")
    print(f"swapproxy under test: {describe_source(args.src.resolve())}")
    print("client: aiohttp in this process, on the same cores as swapproxy and the upstreams (its CPU is in every "
          "figure); upstreams: fake = tests/fake_llama_server.py (aiohttp), raw = minimal asyncio.Protocol server")
    print("latency/lateness in ms; 'paired Δ' = median of per-pair (proxy − direct) of interleaved requests\n")
    print(report.render())
    print()
    for note in report.notes:
        print(f"- {note}")
    if tail:
        print(f"- swapproxy log (warn+):\n{tail[-2000:]}")
    print(f"- run took {time.monotonic() - began:.0f}s")
    if args.profile_proxy:
        import pstats

        print(f"\nswapproxy cProfile ({args.profile_proxy}), top 25 by own time:")
        pstats.Stats(args.profile_proxy).sort_stats("tottime").print_stats(25)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # SIGINT or SIGTERM: swapproxy was already stopped in main()'s finally
        print("bench_proxy: interrupted; swapproxy and its upstreams were stopped", file=sys.stderr)
        sys.exit(130)
