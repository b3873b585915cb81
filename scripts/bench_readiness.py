#!/usr/bin/env python3
"""Readiness overhead of ManagedProcess: how long after an upstream is healthy do we notice?

Runs the fake llama-server with ``--startup-delay D`` N times and reports, per
start:

* ``start→READY − D``: the issue's literal figure; it includes the fake's own
  Python start-up (interpreter + aiohttp import), which no proxy can avoid;
* ``overhead``: READY minus the moment the fake's /health turned 200 (both on
  the system-wide monotonic clock), i.e. what our probing adds;
* the same with the log-line hint disabled, to show the polling schedule alone;
* llama-swap's schedule (first probe after 250 ms, then every 1 s) simulated
  against the same health-flip times, for comparison.

Usage: python scripts/bench_readiness.py [--starts 20] [--delay 0.3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from conftest import fake_cmd, make_config  # noqa: E402
from swapproxy import health  # noqa: E402
from swapproxy.process import ManagedProcess  # noqa: E402


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def llama_swap_notice(spawned: float, flip: float) -> float:
    """When llama-swap's schedule (250 ms, then every 1 s) first sees a healthy server."""
    t = spawned + 0.25
    while t < flip:
        t += 1.0
    return t


async def one_start(delay: float, session: aiohttp.ClientSession) -> tuple[float, float, float]:
    config = make_config({"m": {"cmd": fake_cmd("--startup-delay", str(delay))}})
    proc = ManagedProcess(config.models["m"], session=session)
    began = time.monotonic()
    await proc.start()
    ready = time.monotonic()
    async with session.get(config.models["m"].proxy + "/debug/stats") as resp:
        flip = (await resp.json())["ready_at_monotonic"]
    await proc.shutdown()
    return ready - began - delay, ready - flip, llama_swap_notice(began, flip) - flip


async def series(n: int, delay: float, hint: bool) -> list[tuple[float, float, float]]:
    saved = health.READY_HINT
    if not hint:
        health.READY_HINT = __import__("re").compile(r"(?!x)x")  # matches nothing
    try:
        async with aiohttp.ClientSession() as session:
            return [await one_start(delay, session) for _ in range(n)]
    finally:
        health.READY_HINT = saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--starts", type=int, default=20)
    parser.add_argument("--delay", type=float, default=0.3)
    args = parser.parse_args()
    rows = []
    for hint in (True, False):
        results = asyncio.run(series(args.starts, args.delay, hint))
        literal = [r[0] * 1000 for r in results]
        overhead = [r[1] * 1000 for r in results]
        llama_swap = [r[2] * 1000 for r in results]
        rows.append((f"swapproxy ({'hint+poll' if hint else 'poll only'})", literal, overhead))
        if not hint:
            rows.append(("llama-swap schedule (simulated)", [], llama_swap))
    print(f"readiness, fake llama-server with startup delay D={args.delay}s, {args.starts} starts each (ms)")
    print(f"{'':34} {'start→READY−D p50':>18} {'p95':>8} {'overhead p50':>13} {'p95':>8}")
    for name, literal, overhead in rows:
        lit = f"{statistics.median(literal):18.1f} {pct(literal, 0.95):8.1f}" if literal else f"{'-':>18} {'-':>8}"
        print(f"{name:34} {lit} {statistics.median(overhead):13.1f} {pct(overhead, 0.95):8.1f}")
    ours = statistics.median(rows[1][2])
    theirs = statistics.median(rows[2][2])
    print(f"ratio poll-only overhead / llama-swap schedule (median): {ours / theirs:.3f}")


if __name__ == "__main__":
    main()
