"""proxy.py's measurements: 1 added latency, 2 max req/s with each process's CPU, 3 SSE lateness and gated delay.

Direct and proxied requests alternate (request by request, or round by round)
so that they share the noise of a busy machine. What each row means: proxy.py's
docstring.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from dataclasses import dataclass, field

import aiohttp

from .client import (
    JSON_HEADERS,
    LoadPlan,
    Request,
    chat_body,
    closed_loop,
    get,
    open_loop,
    paced_times,
    post,
    read_events,
    session,
    warm,
)
from .meters import Meter, Tally, lateness, pct
from .procs import wait_listening
from .report import ProxyReport, Row, ms, ratio, signed_ms

MODELS = ("fake", "raw", "paced", "gated")


@dataclass(frozen=True)
class Plan(LoadPlan):
    seq_requests: int
    seq_warmup: int
    rate: float
    conns: int
    max_seconds: float  # per side, split over `rounds`
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


@dataclass(frozen=True)
class Target:
    label: str
    model: str  # whose upstream process serves it
    direct: Request
    proxy: Request  # through swapproxy, or through a control (see Relay) when `control`
    control: bool = False
    control_pid: int = 0


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


async def paced_stream(s: aiohttp.ClientSession, url: str, body: bytes, n_tokens: int,
                       rate: float) -> list[float] | None:
    """Lateness of each token event vs the nominal schedule; None if the stream was wrong."""
    times = await paced_times(s, url, body, n_tokens)
    return None if times is None else lateness([times], rate, steady=False)


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


@dataclass(frozen=True)
class Relay:
    url: str
    pid: int


async def bench(plan: Plan, proxy_url: str, direct: dict[str, str], pids: dict[str, int], proxy_pid: int,
                relay: Relay, forwarder: Relay, report: ProxyReport) -> None:
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
        await wait_listening(int(control.url.rsplit(":", 1)[1]))

    await section_latency(plan, targets, report)
    max_rps = await section_max_rps(plan, targets, pids, proxy_pid, report)
    # Was the open loop below saturation?
    real = [t for t in targets if not t.control]
    shares = ", ".join(f"{t.label} {100 * plan.rate / max_rps[t.label]:.0f}%" for t in real)
    report.notes.append(f"open-loop rate {plan.rate:g} req/s as a share of the proxied max req/s: {shares}"
                        + (" (≥ 50%: near saturation, the 'below saturation' target does not apply)"
                           if any(max_rps[t.label] < 2 * plan.rate for t in real) else " (below saturation)"))

    await section_sse(plan, proxy_url, direct, pids, proxy_pid, report)


async def section_latency(plan: Plan, targets: list[Target], report: ProxyReport) -> None:
    """1: small requests, sequential on one connection, and open loop at a fixed rate."""
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


async def section_max_rps(plan: Plan, targets: list[Target], pids: dict[str, int], proxy_pid: int,
                          report: ProxyReport) -> dict[str, float]:
    """2: closed-loop req/s and each process's CPU; returns the proxied req/s by target."""
    # 2. max req/s, closed loop
    sec = "2 max req/s"
    cores = os.cpu_count() or 1
    max_rps: dict[str, float] = {}
    for t in targets:
        meter = Meter({"proxy": [t.control_pid if t.control else proxy_pid], "upstream": [pids[t.model]]})
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
    return max_rps


async def section_sse(plan: Plan, proxy_url: str, direct: dict[str, str], pids: dict[str, int], proxy_pid: int,
                      report: ProxyReport) -> None:
    """3: paced streams' event lateness (1 and many streams), and the gated release → event delay."""
    # 3. SSE
    sec = "3 SSE"
    paced_body = chat_body("paced", stream=True)
    paced_urls = {"d": direct["paced"] + "/v1/chat/completions", "p": proxy_url + "/v1/chat/completions"}
    for n_streams, rounds in ((1, plan.sse_single_rounds), (plan.sse_streams, plan.sse_multi_rounds)):
        late: dict[str, list[float]] = {"d": [], "p": []}
        tally = {"d": Tally(), "p": Tally()}
        meter = Meter({"proxy": [proxy_pid], "upstream": [pids["paced"]]})
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

