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
(or ``python -m scripts.bench.readiness ...`` from the checkout's root)

Unlike the other benchmarks this one drives swapproxy's ManagedProcess in this
process (it swaps the log-line hint out for the poll-only series), so it imports
swapproxy's ``config``, ``health`` and ``process`` modules.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from swapproxy import health
from swapproxy.config import Config, parse_config
from swapproxy.process import ManagedProcess

from .meters import pct_nearest
from .ports import free_port_block
from .procs import fake_cmd


def make_config(model_cmd: str, state_dir: Path) -> Config:
    """One model ``m`` running ``model_cmd``, through swapproxy's own config parser."""
    doc = {"startPort": free_port_block(2), "healthCheckTimeout": 15, "stateDir": str(state_dir),
           "models": {"m": {"cmd": model_cmd}}}
    return parse_config(json.dumps(doc), file="bench-readiness.yaml")  # JSON is YAML


def llama_swap_notice(spawned: float, flip: float) -> float:
    """When llama-swap's schedule (250 ms, then every 1 s) first sees a healthy server."""
    t = spawned + 0.25
    while t < flip:
        t += 1.0
    return t


async def one_start(delay: float, session: aiohttp.ClientSession, state_dir: Path) -> tuple[float, float, float]:
    config = make_config(fake_cmd("--startup-delay", str(delay)), state_dir)
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
        health.READY_HINT = re.compile(r"(?!x)x")  # matches nothing
    try:
        with tempfile.TemporaryDirectory(prefix="swapproxy-readiness-") as state_dir:
            async with aiohttp.ClientSession() as session:
                return [await one_start(delay, session, Path(state_dir)) for _ in range(n)]
    finally:
        health.READY_HINT = saved


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_readiness.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--starts", type=int, default=20)
    parser.add_argument("--delay", type=float, default=0.3)
    args = parser.parse_args(argv)
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
        lit = (f"{statistics.median(literal):18.1f} {pct_nearest(literal, 0.95):8.1f}" if literal
               else f"{'-':>18} {'-':>8}")
        print(f"{name:34} {lit} {statistics.median(overhead):13.1f} {pct_nearest(overhead, 0.95):8.1f}")
    ours = statistics.median(rows[1][2])
    theirs = statistics.median(rows[2][2])
    print(f"ratio poll-only overhead / llama-swap schedule (median): {ours / theirs:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
