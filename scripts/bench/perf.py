"""swapproxy's performance, side by side with the client talking to the upstream directly and with nginx.

One command runs everything in one run, so the three columns share the noise of a busy
machine (direct and the two proxies alternate round by round)::

    python scripts/bench.py                  # full run, about 5 minutes
    python scripts/bench.py --quick          # scaled down, under a minute
    python scripts/bench.py --write-docs     # ... and write docs/PERFORMANCE.md from this run
    python scripts/bench.py --only 1,4       # some sections only (while working on one)
    python scripts/bench.py --profile /tmp/sp.prof   # swapproxy under cProfile; top functions printed
    python scripts/bench.py --no-uvloop      # swapproxy on asyncio's loop even with uvloop installed

(``python -m scripts.bench.perf`` from the checkout's root is the same command.)

Columns:

* **direct**: the client talks to the upstream's own port (the physical limit);
* **nginx**: Debian's nginx as a reverse proxy, one worker (swapproxy is one process on one
  core), configured for streaming: ``proxy_buffering off``, ``proxy_request_buffering off``,
  HTTP/1.1 upstream keep-alive; routed by URL prefix (``/m/<model>/...``), since nginx cannot
  route by a JSON body. Started and stopped by this script by PID, with a config generated in a
  temp dir. When nginx is missing the script says how to install it and runs the other columns;
* **swapproxy**: ``python -m swapproxy`` as a real process, routed by the body's ``model`` like
  any client's request.

All three reach the very same upstream processes, which swapproxy runs as its models (all
preloaded, in a persistent group):

* ``static``: nginx answering a static JSON chat completion (or, without nginx, the minimal
  asyncio server of scripts/bench/servers.py): a fast upstream, so the proxy's cost shows;
* ``fake``: tests/fake_llama_server.py (aiohttp), one-token chat completions: realism;
* ``paced`` (SSE at a fixed token rate), ``burst`` (SSE as fast as it can), ``hold``
  (2 events/s, for the open-streams test): the fake llama-server;
* ``swap-a`` / ``swap-b``: the fake with ``--startup-delay D`` in one swap group.

Sections:

1. small non-stream requests: latency at 1 connection (the three interleaved request by
   request) and open loop at 200 and 1,000 req/s over 32 connections (latency from each
   request's *scheduled* send time: no coordinated omission); max req/s, closed loop, 32 and 256
   connections, with each process's CPU time. The load client is a minimal keep-alive HTTP/1.1
   client on asyncio.Protocol (~20 µs of CPU per request, a fifth of aiohttp's), so that it is
   not what is measured;
2. SSE: lateness of paced events against their schedule, 1 stream and 64 started together
   (counted once all 64 are open and until the first ends; a separate row adds each
   stream's last event, when the 64 end together), events/s of an unpaced stream, time to
   first event;
3. N concurrent streams held open (1,000 for 30 s in the full run): errors, RSS;
4. swap-ready overhead: the request for B while A is loaded, to B's first byte, minus D, minus
   A's stop time (SIGTERM → exit) and minus B's own start-up (spawn → listening, the fake's
   interpreter and imports): what swapproxy itself adds. The instants come from swapproxy's
   ``/api/events`` (state changes carry ``state_since``), a pidfd on A (its exit) and the fake's
   ``/debug/stats`` (``ready_at_monotonic``); the direct column does the same swap itself
   (SIGTERM, wait, spawn, wait for "model loaded", request) as the floor;
5. swapproxy's RSS idle and under load; CPU seconds per 1,000 proxied requests, and the
   one-core ceiling it implies (1 / CPU per request).

The client runs in this process, on the same cores as the proxies and upstreams, and the
machine may be shared: read the differences and the ratios (and the "other tenants" notes),
not the absolute times.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import procs
from .meters import tree
from .perf_env import ALWAYS_ON, FULL, QUICK, SWAP_MODELS, Env, Plan, write_config
from .perf_load import section_hold, section_latency, section_resources, section_sse
from .perf_swap import section_swap
from .ports import free_ports
from .report import COLS, PerfReport, describe_source, machine, performance_md, print_profile, versions

ROOT = procs.ROOT
DOCS = ROOT / "docs" / "PERFORMANCE.md"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="scaled-down run, under a minute")
    parser.add_argument("--write-docs", action="store_true", help=f"write {DOCS.relative_to(ROOT)} from this run")
    parser.add_argument("--only", default="1,2,3,4,5", help="sections to run, e.g. 1,4 (default: all)")
    parser.add_argument("--profile", metavar="FILE", help="run swapproxy under cProfile, stats to FILE")
    parser.add_argument("--no-uvloop", action="store_true", help="swapproxy on asyncio's own loop even if uvloop is "
                                                                  "installed")
    parser.add_argument("--no-nginx", action="store_true", help="leave the nginx column out")
    parser.add_argument("--src", metavar="DIR", type=Path, default=ROOT,
                        help="benchmark the swapproxy package in DIR (e.g. an unpacked `git archive`)")
    args = parser.parse_args(argv)
    if args.profile and args.no_uvloop:
        parser.error("--profile runs swapproxy with python -m cProfile -m swapproxy: leave --no-uvloop out")
    return args


async def run_sections(plan: Plan, report: PerfReport, sections: set[str], tmp: Path, ports: dict[str, int],
                       proxy: subprocess.Popen[bytes], proxy_port: int, log: Path,
                       ngx: subprocess.Popen[bytes] | None, nginx_port: int, began: float,
                       upstream_pids: dict[str, int]) -> None:
    """Wait for swapproxy (all preloaded) and nginx, then run the chosen sections."""
    health = await procs.wait_healthy(f"http://127.0.0.1:{proxy_port}/health", what="swapproxy", proc=proxy,
                                      log=log, check=lambda b: all(m in b.get("models", {})
                                                                   for m in [*ALWAYS_ON, "swap-a"]))
    upstream_pids.update({m: int(v["pid"]) for m, v in health["models"].items()})
    nginx_pids: list[int] = []
    if ngx is not None:
        await procs.wait_healthy(f"http://127.0.0.1:{nginx_port}/m/fake/health", what="nginx", proc=ngx,
                                 log=tmp / "proxy-stderr.log")
        nginx_pids = [p.pid for p in tree(ngx.pid)]
    env = Env(plan, report, ports, proxy_port, nginx_port if ngx else None, proxy.pid, nginx_pids,
              upstream_pids, COLS if ngx else ("direct", "swapproxy"))
    report.notes.insert(0, f"setup (swapproxy with {len(upstream_pids)} upstreams preloaded, nginx): "
                           f"{time.monotonic() - began:.1f}s")
    await asyncio.sleep(0.5)
    env.rss_peak["idle (after start, models preloaded)"] = env.proxy_rss()
    if "1" in sections:
        await section_latency(env)
    if "2" in sections:
        await section_sse(env)
    if "3" in sections:
        await section_hold(env)
    if "4" in sections:
        await section_swap(env, tmp)
    await asyncio.sleep(1.0)
    env.rss_peak["idle again, after the load"] = env.proxy_rss()
    if "5" in sections:
        section_resources(env)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = QUICK if args.quick else FULL
    sections = {s.strip() for s in args.only.split(",")}
    src = args.src.resolve()
    began = time.monotonic()
    load_start = os.getloadavg()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # 1,000 streams: children inherit it
    nginx = None if args.no_nginx else procs.nginx_binary()
    if nginx is None and not args.no_nginx:
        print(f"nginx not found: the nginx column is left out. Install it with:\n    {procs.NGINX_HINT}\n",
              file=sys.stderr)
    procs.sigterm_as_interrupt()
    report = PerfReport()
    tmp_obj = tempfile.TemporaryDirectory(prefix="swapproxy-bench-")
    tmp = Path(tmp_obj.name)
    tmp.chmod(0o755)  # nginx's workers run as 'nobody' when started as root
    names = [*ALWAYS_ON, *SWAP_MODELS]
    all_ports = free_ports(len(names) + 2)
    ports = dict(zip(names, all_ports))
    proxy_port, nginx_port = all_ports[-2], all_ports[-1]
    config = write_config(plan, tmp, ports, nginx)
    log = tmp / "swapproxy.log"
    proxy = procs.start_swapproxy(config, proxy_port, log, src=src, profile=args.profile, no_uvloop=args.no_uvloop)
    ngx: subprocess.Popen[bytes] | None = None
    upstream_pids: dict[str, int] = {}
    try:
        if nginx:
            ngx = procs.start_nginx(nginx, tmp, procs.write_proxy_conf(tmp, nginx, nginx_port, ports))
        # The client's own collections would show up as latency in every column: the same
        # set-up as swapproxy's (see swapproxy.server._tune_gc).
        gc.collect()
        gc.freeze()
        gc.set_threshold(10_000, *gc.get_threshold()[1:])
        asyncio.run(run_sections(plan, report, sections, tmp, ports, proxy, proxy_port, log, ngx, nginx_port, began,
                                 upstream_pids))
    finally:
        if ngx is not None:
            procs.stop_nginx(ngx)
        procs.stop_proxy(proxy, list(upstream_pids.values()))
        swap_log = log.read_text(errors="replace").strip() if log.exists() else ""
        tmp_obj.cleanup()

    load_end = os.getloadavg()
    m = machine()
    lines = [
        f"swapproxy bench ({plan.name} run): direct vs nginx vs swapproxy, same upstream processes, one run",
        f"machine: {m['cpu']}, {m['cores']} cores, {m['mem']}, Linux {m['kernel']}; load average "
        f"{load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f} at start, "
        f"{load_end[0]:.2f} {load_end[1]:.2f} {load_end[2]:.2f} at end (shared: other tenants' runs included)",
        f"software: {versions(nginx, src, args.no_uvloop)}",
        f"swapproxy under test: {describe_source(src).replace(str(ROOT), 'this checkout')}",
        "latencies in ms; 'vs direct' = X − direct for latencies, X / direct for rates",
    ]
    table = report.render()
    summary = report.summary()
    notes = [*report.notes, f"run took {time.monotonic() - began:.0f}s"]
    if swap_log:
        notes.append("swapproxy log (warn+): " + swap_log[-1500:].replace("\n", " | "))
    print("\n".join(lines) + "\n")
    print(table + "\n")
    passed = sum(x.startswith("PASS") for x in summary)
    print(f"targets: {passed} of {len(summary)} met")
    for x in summary:
        print(f"  {x}")
    print()
    for note in notes:
        print(f"- {note}")
    if args.profile:
        print_profile(args.profile, 30)
    if args.write_docs:
        DOCS.parent.mkdir(exist_ok=True)
        DOCS.write_text(performance_md(head=lines[1:4], table=table, summary=summary,
                                       met=f"{passed} of {len(summary)}", notes=notes,
                                       command="python scripts/bench.py --write-docs"
                                       + (" --quick" if args.quick else "")))
        print(f"wrote {DOCS.relative_to(ROOT)}")
    return 0


def run(argv: list[str] | None = None) -> int:
    """main(), with Ctrl-C or SIGTERM ending the run cleanly (exit 130)."""
    return procs.run_interruptible(main, argv, "bench: interrupted; swapproxy, nginx and the upstreams were stopped")


if __name__ == "__main__":
    sys.exit(run())
