"""What does going through swapproxy cost? Direct vs proxied, side by side, in one run.

Starts swapproxy as a real subprocess (``python -m swapproxy -c <tmp config>
--listen 127.0.0.1:<port> --log-level warn``) with four upstreams, all
preloaded, and talks to each of them both DIRECTLY (its own port: startPort
+ its index, as ${PORT} is handed out) and THROUGH the proxy. Direct and
proxied requests hit the very same upstream process (the pids are checked).

Upstreams:

* ``fake``   tests/fake_llama_server.py ``--tokens 1``: non-stream chat, /health;
* ``raw``    a minimal asyncio.Protocol HTTP/1.1 server (scripts/bench/servers.py
  ``--serve-upstream``), much cheaper per request than the aiohttp fake, so
  the proxy's own cost shows instead of the fake's;
* ``paced``  the fake with ``--tokens 50 --token-rate 50``: SSE pacing;
* ``gated``  the fake, streams with ``"x_gate": true``: one event per
  ``POST /debug/release`` on the fake's own port.

CONTROL rows put something that is not swapproxy between the client and ``raw``:
a byte-level relay (servers.py ``--serve-relay``, asyncio.Protocol, no HTTP parsing): what
any extra Python process hop costs by itself on this machine (sockets,
wake-ups); and a bare aiohttp forwarder (servers.py ``--serve-forwarder``: an aiohttp
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

(``python -m scripts.bench.proxy`` from the checkout's root is the same command.)

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
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from . import procs, servers
from .ports import free_port_block
from .proxy_sections import FULL, MODELS, QUICK, Plan, Relay, bench
from .report import ProxyReport, describe_source, print_profile

ROOT = procs.ROOT


def write_config(plan: Plan, directory: Path) -> tuple[Path, int, dict[str, str]]:
    """The config file, the proxy's port, and each model's direct base URL.

    ${PORT} is handed out from startPort upward in config order; bench() checks
    that each direct URL answers with the pid swapproxy reports for that model.
    """
    base = free_port_block(len(MODELS) + 1)
    cmds = {
        "fake": procs.fake_cmd("--model-name", "fake", "--tokens", "1"),
        "raw": " ".join(procs.server_cmd("--serve-upstream", "--port", "${PORT}")),
        "paced": procs.fake_cmd("--model-name", "paced", "--tokens", str(plan.sse_tokens),
                                "--token-rate", f"{plan.sse_rate:g}"),
        "gated": procs.fake_cmd("--model-name", "gated", "--tokens", str(plan.gated_tokens)),
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench_proxy.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="scaled-down run, under ~30 s")
    parser.add_argument("--profile-proxy", metavar="FILE", help="run swapproxy under cProfile, stats to FILE")
    parser.add_argument("--src", metavar="DIR", type=Path, default=ROOT,
                        help="run the swapproxy package found in DIR (default: this checkout), e.g. an "
                             "unpacked `git archive` of another commit")
    # servers.py's servers, which this script used to run itself
    parser.add_argument("--serve-upstream", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--serve-relay", metavar="TO_PORT", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--serve-forwarder", metavar="TO_PORT", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_upstream or args.serve_relay is not None or args.serve_forwarder is not None:
        return servers.main(sys.argv[1:] if argv is None else argv)

    plan = QUICK if args.quick else FULL
    began = time.monotonic()
    load = os.getloadavg()
    procs.sigterm_as_interrupt()
    report = ProxyReport()
    with tempfile.TemporaryDirectory(prefix="bench_proxy_") as tmp:
        config, port, direct = write_config(plan, Path(tmp))
        proxy_url = f"http://127.0.0.1:{port}"
        log = Path(tmp) / "swapproxy.log"
        relay_port = free_port_block(2)
        forwarder_port = relay_port + 1
        raw_port = int(direct["raw"].rsplit(":", 1)[1])
        controls = {
            name: subprocess.Popen(procs.server_cmd(f"--serve-{name}", str(raw_port), "--port", str(cport)),
                                   stdin=subprocess.DEVNULL)
            for name, cport in (("relay", relay_port), ("forwarder", forwarder_port))
        }
        proc = procs.start_swapproxy(config, port, log, src=args.src.resolve(), profile=args.profile_proxy)
        pids: dict[str, int] = {}
        try:
            async def run() -> None:
                health = await procs.wait_healthy(proxy_url + "/health", what="swapproxy", proc=proc, log=log,
                                                  check=lambda b: all(m in b.get("models", {}) for m in MODELS))
                pids.update({m: int(health["models"][m]["pid"]) for m in MODELS})
                report.notes.append(f"setup (swapproxy + 4 upstreams preloaded): {time.monotonic() - began:.1f}s")
                relay_at = Relay(f"http://127.0.0.1:{relay_port}", controls["relay"].pid)
                forwarder_at = Relay(f"http://127.0.0.1:{forwarder_port}", controls["forwarder"].pid)
                await bench(plan, proxy_url, direct, pids, proc.pid, relay_at, forwarder_at, report)

            asyncio.run(run())
        finally:
            procs.stop_proxy(proc, list(pids.values()))
            for control in controls.values():
                procs.terminate(control, 5)
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
        print_profile(args.profile_proxy, 25)
    return 0


def run(argv: list[str] | None = None) -> int:
    """main(), with Ctrl-C or SIGTERM ending the run cleanly (exit 130)."""
    return procs.run_interruptible(main, argv, "bench_proxy: interrupted; swapproxy and its upstreams were stopped")


if __name__ == "__main__":
    sys.exit(run())
