"""What recording the request history costs: swapproxy's CPU per proxied request, history on vs off, paired.

Two swapproxy processes run side by side from this checkout, on the same config: one
records every request as it ships (the history in memory, or with ``--store file`` in
an sqlite file; captures on, ``captureBuffer`` 5 MB), the other with
``SWAPPROXY_HISTORY=off`` (it records nothing: the baseline). Each has its own copy of
the upstream, preloaded. Round by round the two take the same closed-loop load in turn
(the order alternates: ABBA), and each round measures one process's CPU seconds over all
its threads (psutil: user + system), from the round's start until a settle time after
its end, so that the history's thread finishing the round's last batch is counted.
Each round gives both the CPU per 1,000 requests; their ratio is paired by round, so
the machine's drift (it may be shared) falls out. The summary is the median ratio of
the rounds and the pooled ratio (all CPU over all requests), against the bar: under
1.05.

Scenarios: ``static`` (the canned chat completion of scripts/bench/servers.py, with
``usage``: the cheapest request there is, so the history's share is the largest), and
``stream`` (tests/fake_llama_server.py streaming 8 tokens with ``usage`` and
``timings``: a realistic streamed chat).

    python scripts/bench_history.py [--rounds 10] [--seconds 3] [--conns 32] [--store memory|file]
                                    [--scenario static,stream]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil  # type: ignore[import-untyped]

from .client import Pool, chat_body, http_request, open_loop, raw_req, warm
from .ports import free_ports
from .procs import fake_cmd, log_tail, server_cmd, start_swapproxy, stop_proxy, wait_healthy
from .report import markdown_table

__all__ = ["main"]

ARMS = ("on", "off")
BAR = 1.05


@dataclass
class Arm:
    """One swapproxy: history on or off."""

    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    upstream_pids: list[int] = field(default_factory=list)

    def cpu(self) -> float:
        times = psutil.Process(self.proc.pid).cpu_times()  # the whole process: every thread
        return times.user + times.system

    def main_thread_cpu(self) -> float:
        """The event loop's thread alone (the history's own thread is one of the others)."""
        for thread in psutil.Process(self.proc.pid).threads():
            if thread.id == self.proc.pid:
                return thread.user_time + thread.system_time
        return 0.0


def config(tmp: Path, arm: str, upstream_ports: dict[str, int], store: str, capture_mb: float) -> Path:
    models = {
        "static": {"cmd": " ".join(server_cmd("--serve-upstream", "--port", str(upstream_ports["static"])))},
        "stream": {"cmd": fake_cmd("--model-name", "stream", "--tokens", "8", port=upstream_ports["stream"])},
    }
    doc: dict[str, Any] = {
        "healthCheckTimeout": 60, "logToStdout": "none", "stateDir": str(tmp / f"state-{arm}"),
        "hooks": {"on_startup": {"preload": list(models)}},
        "groups": {"all": {"swap": False, "exclusive": False, "persistent": True, "members": list(models)}},
        "models": {m: {**spec, "proxy": f"http://127.0.0.1:{upstream_ports[m]}", "concurrencyLimit": 5000, "ttl": 0}
                   for m, spec in models.items()},
    }
    if store == "file":
        doc["store"] = {"path": str(tmp / f"history-{arm}.sqlite")}
    if capture_mb != 5:
        doc["captureBuffer"] = capture_mb
    path = tmp / f"swapproxy-{arm}.yaml"
    path.write_text(json.dumps(doc, indent=1))  # JSON is YAML
    return path


async def start(tmp: Path, store: str, capture_mb: float, baseline: str, profile: Path | None) -> dict[str, Arm]:
    ports = free_ports(6)
    arms: dict[str, Arm] = {}
    for i, name in enumerate(ARMS):
        upstream = {"static": ports[2 + 2 * i], "stream": ports[3 + 2 * i]}
        log = tmp / f"swapproxy-{name}.log"
        env = {"SWAPPROXY_HISTORY": baseline if name == "off" else "on"}
        proc = start_swapproxy(config(tmp, name, upstream, store, capture_mb), ports[i], log, extra_env=env,
                               profile=str(profile / f"{name}.prof") if profile else None)
        arms[name] = Arm(name, ports[i], proc, log)
    for arm in arms.values():
        health = await wait_healthy(f"http://127.0.0.1:{arm.port}/health", what=f"swapproxy ({arm.name})",
                                    proc=arm.proc, log=arm.log,
                                    check=lambda b: {"static", "stream"} <= set(b.get("models", {})))
        arm.upstream_pids = [int(v["pid"]) for v in health["models"].values()]
    return arms


def request(arm: Arm, scenario: str) -> bytes:
    extra: dict[str, Any] = {"max_tokens": 1}
    if scenario == "stream":
        extra = {"stream": True, "stream_options": {"include_usage": True}}
    return http_request("POST", "/v1/chat/completions", arm.port, chat_body(scenario, **extra))


async def recorded(arm: Arm) -> tuple[float, float]:
    """(rows written, records dropped) from the arm's /metrics."""
    found = {"swapproxy_history_recorded_total": 0.0, "swapproxy_history_dropped_total": 0.0}
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{arm.port}/metrics") as resp:
        for line in (await resp.text()).splitlines():
            name, _, value = line.partition(" ")
            if name in found:
                found[name] = float(value)
    return found["swapproxy_history_recorded_total"], found["swapproxy_history_dropped_total"]


async def scenario_rounds(arms: dict[str, Arm], scenario: str, rounds: int, seconds: float, rate: float,
                          conns: int, settle: float) -> list[dict[str, float]]:
    """Each round: {arm: CPU seconds per 1,000 requests, arm_rps: requests per second}.

    Both arms take the same open-loop load (``rate`` requests per second each, sent at fixed
    times) at the same time: whatever else the machine does meanwhile, both see it.
    """
    out: list[dict[str, float]] = []
    async with Pool(arms["on"].port, conns) as on_pool, Pool(arms["off"].port, conns) as off_pool:
        pools = {"on": on_pool, "off": off_pool}
        reqs = {name: raw_req(request(arm, scenario)) for name, arm in arms.items()}
        for name in ARMS:  # warm both up: connections, caches, the history's first batches
            await warm(pools[name], reqs[name], conns)
        await asyncio.gather(*(open_loop(pools[n], reqs[n], rate, min(1.0, seconds), []) for n in ARMS))
        await asyncio.sleep(settle)
        for r in range(rounds):
            before = {name: arm.cpu() for name, arm in arms.items()}
            before_main = {name: arm.main_thread_cpu() for name, arm in arms.items()}
            latencies: dict[str, list[float]] = {name: [] for name in ARMS}
            began = time.monotonic()
            # Which arm's requests go out first at each tick alternates by round (ABBA): in A/A runs
            # the arm always sent first cost 2-3 % more CPU per request, whatever it ran.
            order = ARMS if r % 4 in (0, 3) else ARMS[::-1]
            results = await asyncio.gather(*(open_loop(pools[n], reqs[n], rate, seconds, latencies[n]) for n in order))
            wall = time.monotonic() - began
            await asyncio.sleep(settle)  # the history's thread writes the round's last batch
            row: dict[str, float] = {}
            for name, (errors, lag) in zip(order, results):
                if errors:
                    raise RuntimeError(f"{scenario}: {errors} failed requests through swapproxy ({name})\n"
                                       f"{log_tail(arms[name].log)}")
                done = max(len(latencies[name]), 1)
                row[name] = 1000 * (arms[name].cpu() - before[name]) / done
                row[f"{name}_main"] = 1000 * (arms[name].main_thread_cpu() - before_main[name]) / done
                row[f"{name}_rps"] = len(latencies[name]) / wall
                row[f"{name}_lag"] = lag
            out.append(row)
            print(f"  {scenario} round {r + 1}/{rounds}: on {row['on']:.4f} s, off {row['off']:.4f} s per 1,000 "
                  f"requests; ratio {row['on'] / row['off']:.3f}", file=sys.stderr)
    return out


def table(scenario: str, rows: list[dict[str, float]]) -> tuple[str, float, float]:
    lines = [["round", "req/s (each)", "on CPU s/1k", "off CPU s/1k", "on / off", "on: loop / other threads",
              "off: loop / other threads"]]
    ratios = []
    for i, row in enumerate(rows, 1):
        ratio = row["on"] / row["off"]
        ratios.append(ratio)
        lines.append([str(i), f"{row['on_rps']:.0f} / {row['off_rps']:.0f}", f"{row['on']:.4f}",
                      f"{row['off']:.4f}", f"{ratio:.3f}", f"{row['on_main']:.4f} / {row['on'] - row['on_main']:.4f}",
                      f"{row['off_main']:.4f} / {row['off'] - row['off_main']:.4f}"])
    median = statistics.median(ratios)
    pooled = statistics.fmean(r["on"] for r in rows) / statistics.fmean(r["off"] for r in rows)
    lines.append(["median", "", f"{statistics.median(r['on'] for r in rows):.4f}",
                  f"{statistics.median(r['off'] for r in rows):.4f}", f"{median:.3f}",
                  f"{statistics.median(r['on_main'] for r in rows):.4f} / "
                  f"{statistics.median(r['on'] - r['on_main'] for r in rows):.4f}",
                  f"{statistics.median(r['off_main'] for r in rows):.4f} / "
                  f"{statistics.median(r['off'] - r['off_main'] for r in rows):.4f}"])
    return f"### {scenario}\n\n" + markdown_table(lines), median, pooled


async def run(args: argparse.Namespace, tmp: Path) -> int:
    arms = await start(tmp, args.store, args.capture_buffer, args.baseline, args.profile)
    results: list[str] = []
    verdicts: list[bool] = []
    try:
        for scenario in args.scenario.split(","):
            rate = args.rate if scenario == "static" else args.stream_rate
            rows = await scenario_rounds(arms, scenario, args.rounds, args.seconds, rate, args.conns, args.settle)
            text, median, pooled = table(scenario, rows)
            ok = median < BAR
            verdicts.append(ok)
            results.append(f"{text}\n\n{scenario}: median paired ratio {median:.3f}, pooled {pooled:.3f} "
                           f"({(median - 1) * 100:+.1f} % CPU per request); bar < {BAR}: {'PASS' if ok else 'MISS'}")
        written, dropped = await recorded(arms["on"])
        off_written, _ = await recorded(arms["off"])
        results.append(f"history on: {written:.0f} rows written, {dropped:.0f} dropped; history off: "
                       f"{off_written:.0f} written")
        if args.store == "file":
            files = sorted(tmp.glob("history-on.sqlite*"))
            results.append("store file: " + ", ".join(f"{p.name} {p.stat().st_size / 2**20:.1f} MiB" for p in files))
    finally:
        for arm in arms.values():
            stop_proxy(arm.proc, arm.upstream_pids)
    load = psutil.getloadavg()
    print(f"swapproxy history cost: {args.rounds} rounds x {args.seconds:g} s, both arms at once, open loop "
          f"{args.rate:g} (static) / {args.stream_rate:g} (stream) req/s each over {args.conns} connections, "
          f"store {args.store}, captureBuffer {args.capture_buffer:g} MB, baseline history {args.baseline}; "
          f"{psutil.cpu_count()} cores, load average {load[0]:.2f} {load[1]:.2f} at end\n")
    print("\n\n".join(results))
    return 0 if all(verdicts) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_history.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10, help="paired rounds per scenario (default 10)")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per round (default 5)")
    parser.add_argument("--rate", type=float, default=500, help="static: requests per second to each arm "
                                                                     "(default 500)")
    parser.add_argument("--stream-rate", type=float, default=250, help="stream: requests per second to each "
                                                                         "arm (default 250)")
    parser.add_argument("--conns", type=int, default=32, help="connections to each arm (default 32)")
    parser.add_argument("--settle", type=float, default=0.5, help="seconds after each round before the CPU "
                                                                  "reading (default 0.5)")
    parser.add_argument("--store", choices=("memory", "file"), default="memory",
                        help="the history's store in the 'on' arm (default: memory, as without store.path)")
    parser.add_argument("--scenario", default="static,stream", help="static, stream, or both (default)")
    parser.add_argument("--capture-buffer", type=float, default=5, metavar="MB",
                        help="captureBuffer of both arms (default 5, as swapproxy's default; 0: no captures)")
    parser.add_argument("--baseline", choices=("off", "on"), default="off",
                        help="the baseline arm's history: off (default), or on (an A/A run: what the bench "
                             "itself reads as a difference)")
    parser.add_argument("--profile", type=Path, metavar="DIR", help="run both arms under cProfile: DIR/on.prof and "
                                                                      "DIR/off.prof (the figures are then cProfile's)")
    args = parser.parse_args(argv)
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="swapproxy-bench-history-") as tmp:
        code = asyncio.run(run(args, Path(tmp)))
    print(f"\nrun took {time.monotonic() - began:.0f} s")
    return code


if __name__ == "__main__":
    sys.exit(main())
