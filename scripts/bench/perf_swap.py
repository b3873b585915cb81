"""perf.py's section 4: what swapproxy adds to a swap, against this script doing the same swap itself.

Both columns swap two fakes with ``--startup-delay D`` (A loaded, a request for B);
each swap's instants come from swapproxy's /api/events (``state_since`` of A's
``stopping`` and B's ``starting``), a pidfd on A (its exit) and B's own
``/debug/stats`` (``ready_at_monotonic``), so that the overhead is the swap minus
D, minus A's stop time and minus B's own start-up.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from .client import JSON_HEADERS, chat_body, read_events
from .meters import pct
from .perf_env import SWAP_MODELS, Env, rotated
from .ports import free_ports
from .procs import FAKE, PY
from .report import COLS, Line, verdict


class ExitWatch:
    """The moment a process (not necessarily our child) exits, from a pidfd."""

    def __init__(self, pid: int) -> None:
        self.fd = os.pidfd_open(pid)
        loop = asyncio.get_running_loop()
        self.exited: asyncio.Future[float] = loop.create_future()
        loop.add_reader(self.fd, self._on_exit)

    def _on_exit(self) -> None:
        if not self.exited.done():
            self.exited.set_result(time.monotonic())
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            asyncio.get_running_loop().remove_reader(self.fd)
            os.close(self.fd)
            self.fd = -1


@dataclass
class SwapStats:
    total: list[float] = field(default_factory=list)
    a_stop: list[float] = field(default_factory=list)
    b_boot: list[float] = field(default_factory=list)
    literal: list[float] = field(default_factory=list)  # total − D − A's stop time
    overhead: list[float] = field(default_factory=list)  # ... also minus B's own start-up
    parts: list[tuple[float, float, float]] = field(default_factory=list)  # the overhead's three gaps
    errors: int = 0

    def add(self, d: float, t_req: float, t_fb: float, t_term: float, a_exit: float, t_spawn: float,
            b_ready: float) -> None:
        total, a_stop, b_boot = t_fb - t_req, a_exit - t_term, (b_ready - d) - t_spawn
        self.total.append(total)
        self.a_stop.append(a_stop)
        self.b_boot.append(b_boot)
        self.literal.append(total - d - a_stop)
        self.overhead.append(total - d - a_stop - b_boot)
        # request -> stop A; A's exit -> start B; B ready -> first byte (they sum to the overhead)
        self.parts.append((t_term - t_req, t_spawn - a_exit, t_fb - b_ready))


async def ready_at(s: aiohttp.ClientSession, port: int) -> float:
    async with s.get(f"http://127.0.0.1:{port}/debug/stats") as resp:
        return float((await resp.json())["ready_at_monotonic"])


class DirectSwapper:
    """The floor: this script swaps two fakes itself (SIGTERM, pidfd, spawn, "model loaded", request)."""

    def __init__(self, env: Env, tmp: Path, s: aiohttp.ClientSession) -> None:
        self.d = env.plan.swap_delay
        self.ports = free_ports(2)
        self.log = (tmp / "direct-swap.log").open("ab")
        self.s = s
        self.procs: list[asyncio.subprocess.Process] = []
        self.watchers: list[asyncio.Future[None]] = []
        self.out = SwapStats()

    async def _spawn(self, port: int) -> tuple[asyncio.subprocess.Process, asyncio.Future[None]]:
        proc = await asyncio.create_subprocess_exec(
            PY, str(FAKE), "--port", str(port), "--tokens", "1", "--startup-delay", f"{self.d:g}",
            stdout=asyncio.subprocess.PIPE, stderr=self.log, stdin=asyncio.subprocess.DEVNULL,
            start_new_session=True)
        self.procs.append(proc)
        loaded: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def watch() -> None:  # also keeps the pipe drained
            assert proc.stdout is not None
            async for line in proc.stdout:
                if b"model loaded" in line and not loaded.done():
                    loaded.set_result(None)
            if not loaded.done():
                loaded.set_exception(RuntimeError("fake exited before loading"))
        self.watchers.append(asyncio.ensure_future(watch()))
        return proc, loaded

    async def setup(self) -> None:
        self.cur, loaded = await self._spawn(self.ports[0])
        self.cur_port = self.ports[0]
        await loaded

    async def swap(self, record: bool) -> None:
        nxt_port = self.ports[1] if self.cur_port == self.ports[0] else self.ports[0]
        watch = ExitWatch(self.cur.pid)
        t_req = time.monotonic()
        self.cur.send_signal(signal.SIGTERM)
        t_term = time.monotonic()
        a_exit = await watch.exited
        await self.cur.wait()
        t_spawn = time.monotonic()
        self.cur, loaded = await self._spawn(nxt_port)
        await loaded
        async with self.s.post(f"http://127.0.0.1:{nxt_port}/v1/chat/completions", data=chat_body("b", max_tokens=1),
                               headers=JSON_HEADERS) as resp:
            t_fb = time.monotonic()
            await resp.read()
            ok = resp.status == 200
        b_ready = await ready_at(self.s, nxt_port)
        self.cur_port = nxt_port
        if record:
            if ok:
                self.out.add(self.d, t_req, t_fb, t_term, a_exit, t_spawn, b_ready)
            else:
                self.out.errors += 1

    async def close(self) -> None:
        for p in self.procs:
            if p.returncode is None:
                p.kill()
                await p.wait()
        for w in self.watchers:
            w.cancel()
        self.log.close()


class ProxySwapper:
    """B's first byte through swapproxy, decomposed with its /api/events and the fakes' own clocks."""

    def __init__(self, env: Env, s: aiohttp.ClientSession) -> None:
        self.env = env
        self.d = env.plan.swap_delay
        self.s = s
        self.base = f"http://127.0.0.1:{env.proxy_port}"
        self.offset = statistics.median(time.time() - time.monotonic() for _ in range(9))  # wall -> monotonic
        self.events: list[dict[str, Any]] = []
        self.got = asyncio.Event()
        self.out = SwapStats()

    def _on_event(self, _t: float, raw: bytes) -> None:
        for line in raw.split(b"\n"):
            if line.startswith(b"data:"):
                ev = json.loads(line[5:])
                if ev.get("type") == "state":
                    self.events.append(ev)
                    self.got.set()

    def _find(self, model: str, state: str) -> dict[str, Any] | None:
        return next((e for e in self.events if e.get("model") == model and e.get("state") == state), None)

    async def setup(self) -> None:
        self.stream = await self.s.get(self.base + "/api/events?logs=0")
        self.reader = asyncio.ensure_future(read_events(self.stream, self._on_event))
        async with self.s.get(self.base + "/running?details=1") as resp:
            details = (await resp.json())["details"]
        self.cur = next(m for m in SWAP_MODELS if m in details and details[m]["state"] == "ready")
        self.pid = int(details[self.cur]["pid"])

    async def swap(self, record: bool) -> None:
        cur = self.cur
        nxt = SWAP_MODELS[1] if cur == SWAP_MODELS[0] else SWAP_MODELS[0]
        watch = ExitWatch(self.pid)
        self.events.clear()
        t_req = time.monotonic()
        async with self.s.post(self.base + "/v1/chat/completions", data=chat_body(nxt, max_tokens=1),
                               headers=JSON_HEADERS) as resp:
            t_fb = time.monotonic()
            await resp.read()
            ok = resp.status == 200
        a_exit = await asyncio.wait_for(watch.exited, 10)
        b_ready = await ready_at(self.s, self.env.ports[nxt])
        deadline = time.monotonic() + 5
        while not (self._find(cur, "stopping") and self._find(nxt, "starting") and self._find(nxt, "ready")):
            self.got.clear()
            await asyncio.wait_for(self.got.wait(), max(0.01, deadline - time.monotonic()))
        stopping, starting, ready = self._find(cur, "stopping"), self._find(nxt, "starting"), self._find(nxt, "ready")
        assert stopping is not None and starting is not None and ready is not None
        self.cur, self.pid = nxt, int(ready["pid"])
        if record:
            if ok:
                # swapproxy decided to stop A (SIGTERM follows) / began to start B: its own clock, wall time
                t_term, t_spawn = stopping["state_since"] - self.offset, starting["state_since"] - self.offset
                self.out.add(self.d, t_req, t_fb, t_term, a_exit, t_spawn, b_ready)
            else:
                self.out.errors += 1

    async def close(self) -> None:
        self.reader.cancel()
        self.stream.close()


async def section_swap(env: Env, tmp: Path) -> None:
    plan, report = env.plan, env.report
    sec = "4 swap"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as s:
        swappers: dict[str, DirectSwapper | ProxySwapper] = {"direct": DirectSwapper(env, tmp, s),
                                                             "swapproxy": ProxySwapper(env, s)}
        try:
            for sw in swappers.values():
                await sw.setup()
            for i in range(plan.swaps + 1):  # the two alternate swap by swap; the first is a warm-up
                for c in rotated(list(swappers), i):
                    await swappers[c].swap(record=i > 0)
        finally:
            for sw in swappers.values():
                await sw.close()
    direct, proxied = swappers["direct"].out, swappers["swapproxy"].out
    res = {"direct": direct, "swapproxy": proxied}
    scen = f"A loaded → B's first byte, fake D={plan.swap_delay:g}s, {plan.swaps} swaps"

    def row(metric: str, pick: Callable[[SwapStats], list[float]], q: float) -> Line:
        values = {c: pct(pick(res[c]), q) * 1000 if c in res and pick(res[c]) else math.nan for c in COLS}
        return report.add(sec, scen, metric, values, "added", digits=1)

    row("total ms, median", lambda r: r.total, 0.5)
    row("A's stop (SIGTERM → exit) ms, median", lambda r: r.a_stop, 0.5)
    row("B's own start-up (spawn → listening) ms, median", lambda r: r.b_boot, 0.5)
    row("total − D − A stop ms, median (includes B's start-up)", lambda r: r.literal, 0.5)
    m = row("overhead ms, median (total − D − A stop − B start-up)", lambda r: r.overhead, 0.5)
    m.target, m.verdict = "≤ 30 ms", verdict(pct(proxied.overhead, 0.5) * 1000 <= 30)
    p = row("overhead ms, p95", lambda r: r.overhead, 0.95)
    p.target, p.verdict = "≤ 60 ms", verdict(pct(proxied.overhead, 0.95) * 1000 <= 60)
    for c, r in res.items():
        if r.overhead:
            worst = max(range(len(r.overhead)), key=r.overhead.__getitem__)
            g = [x * 1000 for x in r.parts[worst]]
            report.notes.append(
                f"swap, {c}: overhead by swap (ms): {' '.join(f'{x * 1000:.0f}' for x in r.overhead)}; the worst, "
                f"{r.overhead[worst] * 1000:.1f} ms = {g[0]:.1f} (request -> stop A) + {g[1]:.1f} (A's exit -> "
                f"start B) + {g[2]:.1f} (B ready -> first byte)")
    if direct.errors or proxied.errors:
        report.add(sec, scen, "errors", {"direct": float(direct.errors), "swapproxy": float(proxied.errors)}, digits=0)
    report.notes.append(
        "swap: instants for swapproxy come from its /api/events (state_since of A's 'stopping' and B's "
        "'starting'), a pidfd on A (its exit) and B's /debug/stats (ready_at_monotonic); swapproxy's spawn "
        "work (port check, fork/exec) is counted in 'B's own start-up', and its /api/events subscriber makes "
        "each state change also take an RSS snapshot of the model. The direct column is this script doing "
        "the same swap itself (SIGTERM, pidfd, spawn, wait for the 'model loaded' line, request): the floor")

