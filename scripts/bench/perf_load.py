"""perf.py's load sections: 1 small non-stream requests, 2 SSE, 3 many open streams, 5 memory and CPU.

Each section takes the run's Env, alternates the columns (direct, nginx,
swapproxy) round by round so that they share the machine's noise, and adds its
rows to env.report. What each row means: perf.py's docstring.
"""

from __future__ import annotations

import asyncio
import math
import os
import statistics
import time

import aiohttp

from .client import JSON_HEADERS, chat_body, closed_loop, count_events, open_loop, paced_times, raw_req, warm
from .meters import Tally, cpu_diff, lateness, pct, rss_mb, tree
from .perf_env import HOLD_RATE, Env, open_pools, rotated, rss_sampler
from .report import COLS, verdict


# -- 1. small non-stream requests ----------------------------------------------------------------
async def section_latency(env: Env) -> None:
    plan, report, cols = env.plan, env.report, env.cols
    sec = "1 non-stream"
    for model in ("static", "fake"):
        reqs = {c: raw_req(env.chat(c, model, max_tokens=1)) for c in cols}
        label = f"{model} upstream"
        # 1 connection, interleaved request by request
        lat: dict[str, list[float]] = {c: [] for c in cols}
        errors = dict.fromkeys(cols, 0)
        async with open_pools(env, model, 1) as pools:
            for c in cols:
                for _ in range(50):
                    await reqs[c](pools[c])
            for i in range(plan.seq):
                for c in rotated(cols, i):
                    t0 = time.perf_counter()
                    ok = await reqs[c](pools[c])
                    lat[c].append(time.perf_counter() - t0)
                    errors[c] += not ok
        report.latency(sec, f"{label}: 1 conn, sequential x{plan.seq}", lat, p50=0.5, p99=None, errors=errors)

        # open loop at fixed rates over 32 connections
        rates = (200.0, 1000.0) if model == "static" else (200.0,)
        for rate in rates:
            lat = {c: [] for c in cols}
            errors = dict.fromkeys(cols, 0)
            lag = 0.0
            async with open_pools(env, model, 32) as pools:
                for c in cols:
                    await warm(pools[c], reqs[c], 32)
                for r in range(plan.rounds):
                    for c in rotated(cols, r):
                        e, lg = await open_loop(pools[c], reqs[c], rate, plan.open_seconds / plan.rounds, lat[c])
                        errors[c] += e
                        lag = max(lag, lg)
            report.latency(sec, f"{label}: open loop {rate:g} req/s, 32 conns, {plan.open_seconds:g}s", lat,
                           p50=1.0, p99=5.0, errors=errors)
            if lag > 0.002:
                report.notes.append(f"open loop {rate:g} req/s ({model}): the client fell up to {lag * 1000:.1f} ms "
                                    "behind its schedule (that delay is in the latency of every column it hit)")

        # closed loop, max req/s
        conn_counts = (32, 256) if model == "static" else (32,)
        for conns in conn_counts:
            meter = env.meter(model)
            tally = {c: Tally() for c in cols}
            async with open_pools(env, model, conns) as pools:
                sampler = asyncio.ensure_future(rss_sampler(env, f"closed loop, {conns} conns"))
                try:
                    for c in cols:
                        await warm(pools[c], reqs[c], conns)
                        await closed_loop(pools[c], reqs[c], conns, 0.2)
                    for r in range(plan.rounds):
                        for c in rotated(cols, r):
                            before = meter.sample()
                            n, err, w = await closed_loop(pools[c], reqs[c], conns, plan.closed_seconds / plan.rounds)
                            tally[c].add(n, err, w, before, meter.sample())
                finally:
                    sampler.cancel()
            scen = f"{label}: closed loop, {conns} conns, {plan.closed_seconds:g}s"
            report.add(sec, scen, "req/s", {c: tally[c].rps for c in cols}, "ratio", digits=0)
            if any(tally[c].err for c in cols):
                report.errors(sec, scen, {c: tally[c].err for c in cols}, cols)
            # The proxy's own CPU per request: swapproxy's process, nginx's master + worker.
            us = {c: math.nan for c in COLS}
            for c in ("nginx", "swapproxy"):
                if c in cols and tally[c].ok:
                    us[c] = tally[c].us_per_req(c)
            report.add(sec, scen, "proxy CPU µs/req", us, digits=0)
            ceiling = {c: 1e6 / us[c] if us[c] and not math.isnan(us[c]) else math.nan for c in COLS}
            line = report.add(sec, scen, "one-core ceiling req/s (1e6 / CPU µs)", ceiling, digits=0)
            if model == "static":
                line.target, line.verdict = "≥ 2000", verdict(ceiling["swapproxy"] >= 2000)
            busiest = {c: tally[c].busiest() for c in cols}
            report.notes.append(
                f"{scen}: busiest process " + ", ".join(
                    f"{c}: {busiest[c]} {tally[c].cpu_pct(busiest[c]):.0f}% of a core" for c in cols)
                + "; other tenants used " + ", ".join(f"{tally[c].cpu_pct('others'):.0f}%" for c in cols)
                + f" of {100 * (os.cpu_count() or 1)}% meanwhile")
            if model == "static" and conns == 32:
                env.cpu_per_1000.update({c: us[c] / 1000 for c in ("nginx", "swapproxy")})


# -- 2. SSE --------------------------------------------------------------------------------------
async def section_sse(env: Env) -> None:
    plan, report, cols = env.plan, env.report, env.cols
    sec = "2 SSE"
    body = chat_body("paced", stream=True)
    for n_streams in (1, 64):
        runs: dict[str, list[list[list[float]]]] = {c: [] for c in cols}  # rounds of streams of arrival times
        broken = dict.fromkeys(cols, 0)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
            for c in cols:  # warm up the connections
                await asyncio.gather(*(paced_times(s, env.full_url(c, "paced", "/v1/chat/completions"), body,
                                                   plan.sse_tokens) for _ in range(min(n_streams, 8))))
            for r in range(plan.sse_rounds):
                for c in rotated(cols, r):
                    results = await asyncio.gather(*(
                        paced_times(s, env.full_url(c, "paced", "/v1/chat/completions"), body, plan.sse_tokens)
                        for _ in range(n_streams)))
                    broken[c] += sum(x is None for x in results)
                    runs[c].append([x for x in results if x is not None])
        scen = (f"paced {plan.sse_rate:g} ev/s x{plan.sse_tokens}, "
                + (f"{n_streams} streams started together" if n_streams > 1 else "1 stream"))
        steady = {c: [x for run in runs[c] for x in lateness(run, plan.sse_rate, steady=n_streams > 1)]
                  for c in cols}
        report.latency(sec, f"{scen}: event lateness vs schedule", steady, p50=None, p99=1.0, errors=broken)
        if n_streams > 1:
            ends = {c: [x for run in runs[c] for x in lateness(run, plan.sse_rate, steady=False)] for c in cols}
            scen = f"{scen}, and ended together: with each stream's last event"
            report.add(sec, scen, "p99 ms", {c: pct(ends[c], 0.99) * 1000 if ends.get(c) else math.nan for c in COLS},
                       "added")
            report.add(sec, scen, "max ms", {c: max(ends[c]) * 1000 if ends.get(c) else math.nan for c in COLS},
                       "added")

    # unpaced: events/s of one stream, and the proxy's CPU per event
    burst = chat_body("burst", stream=True)
    rate: dict[str, list[float]] = {c: [] for c in cols}
    cpu_ev: dict[str, float] = {}
    broken = dict.fromkeys(cols, 0)
    meter = env.meter("burst")
    async with aiohttp.ClientSession() as s:
        for r in range(plan.sse_rounds + 1):
            for c in rotated(cols, r):
                before = meter.sample()
                n, first, last = await count_events(s, env.full_url(c, "burst", "/v1/chat/completions"), burst)
                diff = cpu_diff(before, meter.sample())
                if n != plan.burst_tokens + 2 or first is None:
                    broken[c] += 1
                    continue
                if r == 0:
                    continue  # warm-up
                rate[c].append((n - 1) / (last - first) if last > first else math.nan)
                if c != "direct":
                    cpu_ev[c] = cpu_ev.get(c, 0.0) + diff[c] / n
    scen = f"unpaced stream, {plan.burst_tokens + 2} events, median of {plan.sse_rounds}"
    values = {c: statistics.median(rate[c]) if rate[c] else math.nan for c in cols}
    line = report.add(sec, scen, "events/s", values, "ratio", digits=0)
    ratio = values["swapproxy"] / values["direct"]
    line.target, line.verdict = "≥ 0.9x direct", verdict(ratio >= 0.9)
    report.add(sec, scen, "proxy CPU µs/event",
               {c: 1e6 * cpu_ev[c] / plan.sse_rounds if c in cpu_ev else math.nan for c in COLS}, digits=1)
    if any(broken.values()):
        report.errors(sec, scen, broken, cols)

    # time to first event: request sent -> first event in, sequential, interleaved
    small = chat_body("burst", stream=True, max_tokens=4)
    ttfe: dict[str, list[float]] = {c: [] for c in cols}
    broken = dict.fromkeys(cols, 0)
    async with aiohttp.ClientSession() as s:
        for i in range(plan.ttfe + 3):
            for c in rotated(cols, i):
                t0 = time.monotonic()
                n, first, _ = await count_events(s, env.full_url(c, "burst", "/v1/chat/completions"), small)
                if n != 6 or first is None:
                    broken[c] += 1
                elif i >= 3:
                    ttfe[c].append(first - t0)
    # the 1-connection added-latency target applies: a stream's first event is its response
    report.latency(sec, f"time to first event, 1 conn, x{plan.ttfe}", ttfe, p50=0.5, p99=None, errors=broken)


# -- 3. many open streams ------------------------------------------------------------------------
async def hold_streams(env: Env, col: str) -> tuple[int, float, float, float, float]:
    """(errors, seconds all were open together, swapproxy RSS MB at 256 open, peak RSS MB, nginx peak RSS MB)."""
    plan = env.plan
    n = plan.hold_streams
    ramp_budget = 1.0 + n / 400  # seconds to open them all (it takes less)
    tokens = math.ceil((ramp_budget + plan.hold_seconds) * HOLD_RATE) + 1
    body = chat_body("hold", stream=True, max_tokens=tokens)
    url = env.full_url(col, "hold", "/v1/chat/completions")
    opened = 0
    reached_256 = asyncio.Event()
    all_open = asyncio.Event()
    firsts: list[float] = []
    ends: list[float] = []
    errors = 0
    rss_256 = math.nan
    peak = 0.0
    nginx_peak = 0.0

    async def one(s: aiohttp.ClientSession) -> None:
        nonlocal opened, errors
        try:
            async with s.post(url, data=body, headers=JSON_HEADERS) as resp:
                if resp.status != 200:
                    errors += 1
                    return
                count = 0
                prev = b""
                async for chunk in resp.content.iter_any():
                    k = (prev + chunk).count(b"\n\n")
                    if k and count == 0:
                        firsts.append(time.monotonic())
                        opened += 1
                        if opened >= min(256, n):
                            reached_256.set()
                        if opened >= n:
                            all_open.set()
                    count += k
                    prev = chunk[-1:]
                ends.append(time.monotonic())
                if count != tokens + 2:
                    errors += 1
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError):
            errors += 1

    timeout = aiohttp.ClientTimeout(total=None, sock_read=30)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as s:
        tasks = []
        for i in range(n):
            tasks.append(asyncio.ensure_future(one(s)))
            if i % 50 == 49:
                await asyncio.sleep(0.02)  # ramp up in batches
            if i + 1 == min(256, n):
                try:
                    await asyncio.wait_for(reached_256.wait(), 10 + ramp_budget)
                except asyncio.TimeoutError:
                    pass
                await asyncio.sleep(0.2)
                rss_256 = env.proxy_rss() if col == "swapproxy" else math.nan
        try:
            await asyncio.wait_for(all_open.wait(), 10 + ramp_budget)
        except asyncio.TimeoutError:
            pass
        pending = set(tasks)
        while pending:
            if col == "swapproxy":
                peak = max(peak, env.proxy_rss())
            elif col == "nginx":
                nginx_peak = max(nginx_peak, rss_mb(p.pid for p in tree(env.nginx_pids[0])))
            _, pending = await asyncio.wait(pending, timeout=0.5)
    held = min(ends) - max(firsts) if ends and firsts else 0.0
    return errors, held, rss_256, peak, nginx_peak


async def section_hold(env: Env) -> None:
    plan, report, cols = env.plan, env.report, env.cols
    sec = "3 open streams"
    scen = f"{plan.hold_streams} concurrent SSE streams ({HOLD_RATE:g} ev/s each) held ≥ {plan.hold_seconds:g}s"
    results = {}
    for c in cols:
        results[c] = await hold_streams(env, c)
    report.errors(sec, scen, {c: results[c][0] for c in cols}, cols)
    held = {c: results[c][1] for c in cols}
    report.add(sec, scen, "seconds all were open together", held, digits=1,
               target=f"≥ {plan.hold_seconds:g}", verdict=verdict(held["swapproxy"] >= plan.hold_seconds))
    if "nginx" in cols:
        report.add(sec, scen, "nginx RSS MB (master + worker), peak", {"nginx": results["nginx"][4]}, digits=1)
    env.rss_peak[f"{min(256, plan.hold_streams)} open streams"] = results["swapproxy"][2]
    env.rss_peak[f"{plan.hold_streams} open streams (peak)"] = results["swapproxy"][3]


# -- 5. memory and CPU ---------------------------------------------------------------------------
def section_resources(env: Env) -> None:
    report, sec = env.report, "5 resources"
    for situation, value in env.rss_peak.items():
        line = report.add(sec, "swapproxy RSS MB", situation, {"swapproxy": value}, digits=1)
        if situation.startswith("idle (after start"):
            line.target, line.verdict = "≤ 60", verdict(value <= 60)
        elif situation == "256 open streams":
            line.target, line.verdict = "≤ 150", verdict(value <= 150)
    if env.cpu_per_1000:
        report.add(sec, "CPU per 1,000 proxied requests (static upstream, 32 conns)", "CPU seconds",
                   dict(env.cpu_per_1000))


