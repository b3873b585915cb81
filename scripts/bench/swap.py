"""Swap time with the real llama-server: swapproxy vs llama-server's router mode vs a bare start.

Side by side in one run, on the same binary and the same GGUF:

* **swapproxy**: two models (the same GGUF under two ids, same arguments) in
  one swap group; time from the request for B (A loaded) to B's answer of
  one token, then back to A;
* **swapproxy, fast stop**: the same, with ``cmdStop: kill -KILL ${PID}``: an idle
  llama-server loses nothing to SIGKILL, and the kernel frees its memory in a
  fraction of the time its own graceful exit takes (its SIGTERM path unmaps the
  weights with every thread still alive);
* **router**: ``llama-server --models-dir DIR --models-max 1`` with the GGUF
  linked under two names; the same requests, the same measurement;
* **direct**: spawn ``llama-server -m GGUF`` and time spawn → first token
  (health polled every 5 ms), then SIGTERM → exit.

The three are interleaved round by round so that machine noise hits each alike.
Prints medians and the ratios. Needs ``python3 scripts/install_llama.py``.

Usage: python scripts/bench_swap.py [--rounds 5] [--args "-c 1024 -t 2"]
(or ``python -m scripts.bench.swap ...`` from the checkout's root)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from .ports import free_port, free_ports
from .procs import spawn, stop_group, swapproxy_argv, wait_healthy

CACHE = Path(os.environ.get("SWAPPROXY_CACHE", Path.home() / ".cache" / "swapproxy"))
SERVER = CACHE / "bin" / "llama-server"
MODEL = CACHE / "models" / "gemma-3-270m-q4_k_m.gguf"


async def wait_http(http: aiohttp.ClientSession, url: str) -> None:
    """Until ``url`` answers 200, polled every 5 ms (the direct start's "healthy" instant)."""
    await wait_healthy(url, session=http, interval=0.005, timeout=120)


async def one_token(http: aiohttp.ClientSession, base: str, model: str) -> float:
    """Seconds until a one-token chat answer for ``model`` is complete."""
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    began = time.monotonic()
    async with http.post(base + "/v1/chat/completions", json=body) as resp:
        text = await resp.text()
        if resp.status != 200:
            raise RuntimeError(f"{base} {model}: {resp.status} {text[:300]}")
    return time.monotonic() - began


async def direct_start(http: aiohttp.ClientSession, args: list[str], log: Path) -> tuple[float, float, float]:
    port = free_port()
    began = time.monotonic()
    proc = await spawn(str(SERVER), "-m", str(MODEL), "--host", "127.0.0.1", "--port", str(port), *args, log=log)
    try:
        base = f"http://127.0.0.1:{port}"
        await wait_http(http, base + "/health")
        healthy = time.monotonic() - began
        await one_token(http, base, "x")
        first = time.monotonic() - began
    finally:
        stopped = await stop_group(proc)
    return healthy, first, stopped


async def bench(rounds: int, args: list[str], workdir: Path) -> None:
    models_dir = workdir / "models"
    models_dir.mkdir()
    for name in ("gemma-a", "gemma-b"):
        (models_dir / f"{name}.gguf").symlink_to(MODEL)
    arg_text = " ".join(shlex.quote(a) for a in args)
    def write_config(path: Path, extra: str) -> Path:
        path.write_text(
            f"startPort: {free_port()}\nhealthCheckTimeout: 120\nmodels:\n"
            + "".join(
                f"  {name}:\n    cmd: {SERVER} -m {MODEL} --host 127.0.0.1 --port ${{PORT}} {arg_text}\n{extra}"
                for name in ("gemma-a", "gemma-b")
            )
        )
        return path

    cfg = write_config(workdir / "swapproxy.yaml", "")
    fast_cfg = write_config(workdir / "swapproxy-fast.yaml", "    cmdStop: kill -KILL ${PID}\n")
    router_port, proxy_port, fast_port = free_ports(3)
    router = await spawn(
        str(SERVER), "--models-dir", str(models_dir), "--models-max", "1", "--host", "127.0.0.1",
        "--port", str(router_port), *args, log=workdir / "router.log",
    )
    proxy = await spawn(*swapproxy_argv(cfg, proxy_port), log=workdir / "swapproxy.log")
    fast = await spawn(*swapproxy_argv(fast_cfg, fast_port), log=workdir / "swapproxy-fast.log")
    timeout = aiohttp.ClientTimeout(total=300)
    results: dict[str, list[float]] = {k: [] for k in ("proxy", "fast", "router", "healthy", "first", "stop")}
    try:
        async with aiohttp.ClientSession(timeout=timeout) as http:
            router_url, proxy_url = f"http://127.0.0.1:{router_port}", f"http://127.0.0.1:{proxy_port}"
            fast_url = f"http://127.0.0.1:{fast_port}"
            for url in (router_url, proxy_url, fast_url):
                await wait_http(http, url + "/health")
            async with http.get(router_url + "/models") as resp:
                ids = sorted(m["id"] for m in (await resp.json())["data"])
            print(f"router models: {ids}", file=sys.stderr)
            await one_token(http, router_url, ids[0])  # A loaded on both sides
            await one_token(http, proxy_url, "gemma-a")
            await one_token(http, fast_url, "gemma-a")
            current = 0
            for r in range(rounds):
                for _ in range(2):  # A -> B, then B -> A
                    current ^= 1
                    names = {"router": ids[current]}
                    sides = [("router", router_url), ("proxy", proxy_url), ("fast", fast_url)]
                    shift = (2 * r + current) % len(sides)  # who goes first rotates: no side always follows another
                    for key, url in sides[shift:] + sides[:shift]:
                        model = names.get(key, ("gemma-a", "gemma-b")[current])
                        results[key].append(await one_token(http, url, model))
                healthy, first, stopped = await direct_start(http, args, workdir / "direct.log")
                results["healthy"].append(healthy)
                results["first"].append(first)
                results["stop"].append(stopped)
                print(f"round {r + 1}/{rounds} done", file=sys.stderr)
    finally:
        await stop_group(fast)
        await stop_group(proxy)
        await stop_group(router)
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"\nswap with real llama-server ({SERVER.name}, {MODEL.name}, args: {arg_text or '-'}), "
          f"{rounds} rounds; each swap = request for the other model -> one-token answer")
    print(f"{'':42} {'median s':>9} {'min':>7} {'max':>7}  n")
    rows = [
        ("swapproxy swap (A<->B)", "proxy"),
        ("swapproxy swap, cmdStop: kill -KILL", "fast"),
        ("llama-server router swap (--models-max 1)", "router"),
        ("direct: spawn -> healthy", "healthy"),
        ("direct: spawn -> first token", "first"),
        ("direct: SIGTERM -> exit", "stop"),
    ]
    for label, key in rows:
        v = results[key]
        print(f"{label:42} {med[key]:9.3f} {min(v):7.3f} {max(v):7.3f}  {len(v)}")
    print(f"\nratio swapproxy / router (median): {med['proxy'] / med['router']:.3f}   (target <= 1.0)")
    print(f"ratio swapproxy fast stop / router (median): {med['fast'] / med['router']:.3f}")
    # The three sides swap in the same direction one after the other (in rotating order): pair
    # them, so that slow spells of the machine hit both sides of a pair alike.
    for label, key in (("swapproxy", "proxy"), ("swapproxy fast stop", "fast")):
        paired = sorted(p / r for p, r in zip(results[key], results["router"]))
        if len(paired) >= 4:
            q1, q2, q3 = statistics.quantiles(paired, n=4)
            wins = sum(1 for x in paired if x <= 1.0)
            print(f"paired ratio {label} / router: median {q2:.3f}, quartiles {q1:.3f}..{q3:.3f}, "
                  f"as fast or faster in {wins} of {len(paired)} pairs")
    print(f"ratio swapproxy / (direct first token + stop): {med['proxy'] / (med['first'] + med['stop']):.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_swap.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--args", default="-c 1024 -t 2", help="llama-server arguments used on every side")
    opts = parser.parse_args(argv)
    for path in (SERVER, MODEL):
        if not path.exists():
            sys.exit(f"{path} is missing: run python3 scripts/install_llama.py first")
    with tempfile.TemporaryDirectory(prefix="swapbench-") as tmp:
        asyncio.run(bench(opts.rounds, shlex.split(opts.args), Path(tmp)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
