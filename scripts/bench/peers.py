"""Scale-out: the latency a peer hop adds, and the CPU one /metrics scrape costs with ten models.

Usage: python scripts/bench_peers.py [--requests 2000] [--streams 200] [--scrapes 2000] [--json FILE]
(or ``python -m scripts.bench.peers ...`` from the checkout's root)

1. Peer hop. Swapproxy B serves model ``m`` (the fake llama-server); swapproxy A has B as its
   peer ``b`` (``models: [m]``). The same non-streamed chat goes, one request at a time on one
   keep-alive connection (the raw client, so the client is not what is measured), to B directly
   and to A (which forwards it to B), the two sides alternating in rounds; and the same for a
   streamed chat's time to its first event (aiohttp client). Each is reported as p50 and p99 for
   both sides, the difference (what the hop adds) and the ratio. For scale, the same requests
   straight to B's model server are reported too.
2. /metrics scrape. Swapproxy C runs ten models (fake llama-servers, in one group that does not
   swap), each of which has served a request; ``/metrics`` is scraped over one keep-alive
   connection; C's own CPU time (user + system, from /proc) per scrape is reported: the whole
   request, HTTP handling included, which is what an endpoint picker scraping every 50 ms costs.

Every process runs from the command line (``python -m swapproxy``) and is stopped by its pid.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import psutil  # type: ignore[import-untyped]

from .client import Pool, chat_body, http_request
from .meters import pct
from .ports import free_port_block, free_ports
from .procs import (fake_cmd, log_tail, run_interruptible, sigterm_as_interrupt, start_swapproxy, stop_proxy,
                    wait_healthy)
from .report import markdown_table

__all__ = ["main"]


def write_config(folder: Path, name: str, doc: dict[str, Any]) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(json.dumps({"startPort": free_port_block(len(doc["models"]) + 1), "healthCheckTimeout": 60,
                                "stateDir": str(folder / f"state-{name}"), "logToStdout": "none", **doc}))
    return path


async def timed_raw(port: int, data: bytes, n: int) -> list[float]:
    """``n`` requests one after another on one keep-alive connection: each one's seconds."""
    out = []
    async with Pool(port, 1) as pool:
        for _ in range(n):
            began = time.perf_counter()
            if not await pool.request(data):
                raise RuntimeError(f"a request to port {port} failed")
            out.append(time.perf_counter() - began)
    return out


async def first_event(session: aiohttp.ClientSession, url: str, body: bytes, n: int) -> list[float]:
    """``n`` streamed chats one after another: seconds to each one's first event."""
    out = []
    for _ in range(n):
        began = time.perf_counter()
        async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as resp:
            assert resp.status == 200, resp.status
            await resp.content.readuntil(b"\n\n")
            out.append(time.perf_counter() - began)
            await resp.read()
    return out


async def alternate(sides: dict[str, Callable[[int], Awaitable[list[float]]]], n: int, rounds: int
                    ) -> dict[str, list[float]]:
    """Each side measured ``n`` times in all, the sides taking turns over ``rounds`` rounds (after a warm-up)."""
    for measure in sides.values():
        await measure(max(n // 20, 5))
    out: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(rounds):
        for name, measure in sides.items():
            out[name] += await measure(n // rounds)
    return out


def latency_rows(what: str, runs: dict[str, list[float]]) -> list[list[str]]:
    direct, hop, model = runs["direct to the peer"], runs["through the peer hop"], runs.get("the model itself")
    rows = []
    for q, label in ((0.5, "p50"), (0.99, "p99")):
        d, h = pct(direct, q) * 1e3, pct(hop, q) * 1e3
        rows.append([what, label, f"{pct(model, q) * 1e3:.3f}" if model else "n/a", f"{d:.3f}", f"{h:.3f}",
                     f"{h - d:+.3f}", f"{h / d:.2f}x"])
    return rows


async def peer_hop(folder: Path, n: int, streams: int, rounds: int, out: dict[str, Any]) -> list[list[str]]:
    port_b, port_a = free_ports(2)
    conf_b = write_config(folder, "b", {"models": {"m": {"cmd": fake_cmd("--model-name", "m", "--tokens", "8")}},
                                        "hooks": {"on_startup": {"preload": ["m"]}}})
    conf_a = write_config(folder, "a", {"models": {"local": {"cmd": fake_cmd("--model-name", "local")}},
                                        "peers": {"b": {"proxy": f"http://127.0.0.1:{port_b}", "models": ["m"]}}})
    b = start_swapproxy(conf_b, port_b, folder / "b.log")
    a = start_swapproxy(conf_a, port_a, folder / "a.log")
    upstreams: list[int] = []
    try:
        running = await wait_healthy(f"http://127.0.0.1:{port_b}/running?details=1", what="swapproxy B", proc=b,
                                     log=folder / "b.log", check=lambda body: body["details"].get("m", {})
                                     .get("state") == "ready")
        model_port, upstreams = running["details"]["m"]["port"], [running["details"]["m"]["pid"]]
        await wait_healthy(f"http://127.0.0.1:{port_a}/running?details=1", what="swapproxy A", proc=a,
                           log=folder / "a.log", check=lambda body: body["peers"]["b"]["up"] is True)
        body = chat_body("m", max_tokens=8)
        cpu_a, cpu_b = psutil.Process(a.pid), psutil.Process(b.pid)
        before = [cpu_a.cpu_times(), cpu_b.cpu_times()]
        hop = await timed_raw(port_a, http_request("POST", "/v1/chat/completions", port_a, body), n // 2)
        after = [cpu_a.cpu_times(), cpu_b.cpu_times()]
        spent = [(t1.user + t1.system - t0.user - t0.system) / len(hop) * 1e6 for t0, t1 in zip(before, after)]
        out["cpu_us_per_hop_request"] = {"A (forwards to its peer)": spent[0], "B (serves its model)": spent[1]}
        runs = await alternate({name: (lambda k, p=port: timed_raw(p, http_request("POST", "/v1/chat/completions",
                                                                                    p, body), k))
                                for name, port in (("the model itself", model_port), ("direct to the peer", port_b),
                                                   ("through the peer hop", port_a))}, n, rounds)
        stream_body = chat_body("m", stream=True, max_tokens=8)
        async with aiohttp.ClientSession() as session:
            firsts = await alternate({name: (lambda k, p=port: first_event(
                session, f"http://127.0.0.1:{p}/v1/chat/completions", stream_body, k))
                for name, port in (("direct to the peer", port_b), ("through the peer hop", port_a))},
                streams, rounds)
        out["peer_hop"] = {"requests": {k: [pct(v, 0.5), pct(v, 0.99)] for k, v in runs.items()},
                           "first_event": {k: [pct(v, 0.5), pct(v, 0.99)] for k, v in firsts.items()}}
        cpu_row = ["swapproxy CPU per request, µs", "", "", f"B: {spent[1]:.0f}", f"A: {spent[0]:.0f} (+ B's)", "", ""]
        return latency_rows(f"non-streamed chat, 1 conn, x{len(runs['direct to the peer'])}", runs) + \
            latency_rows(f"streamed chat: time to first event, x{len(firsts['direct to the peer'])}", firsts) + [cpu_row]
    except BaseException:
        print(log_tail(folder / "a.log"), log_tail(folder / "b.log"), sep="\n", file=sys.stderr)
        raise
    finally:
        stop_proxy(a, [])
        stop_proxy(b, upstreams)


async def scrape_cost(folder: Path, scrapes: int, out: dict[str, Any]) -> list[list[str]]:
    ids = [f"m{i}" for i in range(10)]
    port = free_ports(1)[0]
    conf = write_config(folder, "c", {"models": {mid: {"cmd": fake_cmd("--model-name", mid)} for mid in ids},
                                      "groups": {"all": {"swap": False, "exclusive": False, "members": ids}},
                                      "hooks": {"on_startup": {"preload": ids}}})
    c = start_swapproxy(conf, port, folder / "c.log")
    pids: list[int] = []
    try:
        running = await wait_healthy(f"http://127.0.0.1:{port}/running?details=1", what="swapproxy C", proc=c,
                                     log=folder / "c.log", check=lambda body: len(body["running"]) == 10
                                     and all(d["state"] == "ready" for d in body["details"].values()))
        pids = [d["pid"] for d in running["details"].values()]
        async with aiohttp.ClientSession() as session:
            for mid in ids:  # every model with the series a request leaves
                async with session.post(f"http://127.0.0.1:{port}/v1/chat/completions", data=chat_body(mid)) as r:
                    assert r.status == 200
        scrape = http_request("GET", "/metrics", port)
        await timed_raw(port, scrape, 50)  # warm-up
        proc = psutil.Process(c.pid)
        before = proc.cpu_times()
        times = await timed_raw(port, scrape, scrapes)
        after = proc.cpu_times()
        cpu = (after.user + after.system - before.user - before.system) / scrapes
        async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/metrics") as r:
            text = await r.text()
        out["scrape"] = {"cpu_ms": cpu * 1e3, "p50_ms": pct(times, 0.5) * 1e3, "p99_ms": pct(times, 0.99) * 1e3,
                         "lines": len(text.splitlines()), "bytes": len(text)}
        return [["/metrics, ten models running", f"x{scrapes}, 1 conn", f"{len(text.splitlines())} lines",
                 f"{cpu * 1e3:.3f} ms CPU", f"p50 {pct(times, 0.5) * 1e3:.3f} ms", f"p99 {pct(times, 0.99) * 1e3:.3f} ms",
                 "PASS" if cpu < 0.002 else "MISS (target < 2 ms CPU)"]]
    finally:
        stop_proxy(c, pids)


async def run(args: argparse.Namespace) -> int:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="swapproxy-bench-peers-") as tmp:
        hop = await peer_hop(Path(tmp), args.requests, args.streams, args.rounds, results)
        scrape = await scrape_cost(Path(tmp), args.scrapes, results)
    print("## Peer hop: client → swapproxy A → its peer B → model, against client → B → model\n")
    print(markdown_table([["request", "", "the model itself, ms", "direct to the peer, ms",
                           "through the peer hop, ms", "added, ms", "ratio"], *hop]))
    print("\n## /metrics scrape cost\n")
    print(markdown_table([["scrape", "run", "size", "swapproxy CPU per scrape", "latency", "latency", "target"],
                          *scrape]))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="non-streamed chats per side")
    parser.add_argument("--streams", type=int, default=200, help="streamed chats per side")
    parser.add_argument("--rounds", type=int, default=5, help="rounds the sides alternate in")
    parser.add_argument("--scrapes", type=int, default=2000, help="/metrics scrapes")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    sigterm_as_interrupt()
    return asyncio.run(run(args))


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; Ctrl-C or SIGTERM stops everything it started."""
    return run_interruptible(_main, argv, "bench_peers: interrupted; the swapproxies and their models were stopped")


if __name__ == "__main__":
    sys.exit(main())
