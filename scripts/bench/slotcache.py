"""slotCache against the real llama-server: a long conversation's next message after a swap, with and without.

One swapproxy runs three models of gemma-3-270m (the one ``scripts/install_llama.py``
caches): ``a-restore`` (``slotCache: true``), ``a-plain`` (the same command, without it) and
``b``; one runs at a time. Each round, for each arm of A in turn (the order alternates):

1. a conversation of ~3,000 tokens is sent to it (the history);
2. a request to ``b`` swaps it out (``a-restore`` saves its slots first);
3. the next message of the conversation goes to it: it starts again (``a-restore``
   restores its slots), and the time from sending to the first streamed token is taken on
   the client, with the answer's ``timings.prompt_n`` and ``cache_n``.

Both arms start A in step 3: the difference is the restore. Per round the two arms are
paired (their ratio); the summary is the median of the rounds. It also reports A's start
(spawn to /health, without the restore), the restore itself, and the stop before the swap
(swapproxy's own record of each graceful stop, in ``stateDir/learned.json``): with the save,
and without.

    python scripts/bench_slotcache.py [--rounds 3] [--tokens 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from .ports import free_port, free_port_block
from .procs import log_tail, start_swapproxy, stop_proxy, wait_healthy
from .report import markdown_table, verdict

__all__ = ["main"]

CACHE = Path.home() / ".cache" / "swapproxy"
SERVER = CACHE / "bin" / "llama-server"
MODEL = CACHE / "models" / "gemma-3-270m-q4_k_m.gguf"
ARMS = ("a-restore", "a-plain")
_READY = re.compile(r"(a-restore|a-plain): starting -> ready \(ready in ([\d.]+)s\)")
_SAVED = re.compile(r"a-restore: saved \d+ slot\(s\), \d+ token\(s\), in ([\d.]+)s")
_RESTORED = re.compile(r"a-restore: restored \d+ slot\(s\), \d+ token\(s\), in ([\d.]+)s")


def config(tmp: Path, threads: int) -> Path:
    base = f"{SERVER} --host 127.0.0.1 --port ${{PORT}} -m {MODEL} -t {threads}"
    doc = {
        "startPort": free_port_block(3),
        "stateDir": str(tmp / "state"),
        "healthCheckTimeout": 120,
        "logToStdout": "proxy",
        "models": {
            "a-restore": {"cmd": f"{base} -c 4096 --swa-full", "slotCache": True},
            "a-plain": {"cmd": f"{base} -c 4096 --swa-full"},
            "b": {"cmd": f"{base} -c 512"},
        },
    }
    path = tmp / "slotcache.yaml"
    path.write_text(json.dumps(doc, indent=1))  # JSON is YAML
    return path


def history(round_no: int, tokens: int) -> str:
    """A made-up log of about ``tokens`` tokens (gemma's tokenizer: ~17 per line), different each round."""
    ships = ["Aurora", "Beacon", "Cormorant", "Dolphin", "Egret", "Falcon", "Gannet", "Heron"]
    lines = [f"Entry {i}: the {ships[(i + round_no) % len(ships)]} passed the lighthouse at {(i * 7 + round_no) % 24}"
             f" o'clock carrying {i * 13 % 97} crates." for i in range(max(1, tokens // 22))]
    return "Here is the harbour log.\n" + "\n".join(lines) + "\nWhich ship passed most often?"


async def chat(s: aiohttp.ClientSession, url: str, model: str, messages: list[dict[str, str]],
               max_tokens: int = 12) -> dict[str, Any]:
    body = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0}
    async with s.post(url + "/v1/chat/completions", json=body) as resp:
        data = await resp.json(content_type=None)
        if resp.status != 200:
            raise RuntimeError(f"{model}: {resp.status} {data}")
        return data


async def first_token(s: aiohttp.ClientSession, url: str, model: str,
                      messages: list[dict[str, str]]) -> tuple[float, dict[str, Any]]:
    """(seconds from send to the first content token, the stream's timings)."""
    body = {"model": model, "messages": messages, "max_tokens": 12, "temperature": 0, "stream": True}
    began = time.perf_counter()
    ttft = float("nan")
    timings: dict[str, Any] = {}
    async with s.post(url + "/v1/chat/completions", json=body) as resp:
        if resp.status != 200:
            raise RuntimeError(f"{model}: {resp.status} {await resp.text()}")
        async for line in resp.content:
            if not line.startswith(b"data: ") or line.strip() == b"data: [DONE]":
                continue
            event = json.loads(line[6:])
            if ttft != ttft and any((c.get("delta") or {}).get("content") for c in event.get("choices", [])):
                ttft = time.perf_counter() - began
            timings = event.get("timings") or timings
    return ttft, timings


async def one_arm(s: aiohttp.ClientSession, url: str, arm: str, text: str) -> dict[str, Any]:
    messages = [{"role": "user", "content": text}]
    first = await chat(s, url, arm, messages)
    began = time.perf_counter()
    await chat(s, url, "b", [{"role": "user", "content": "hi"}], max_tokens=4)  # swaps A out
    swap = time.perf_counter() - began
    messages += [{"role": "assistant", "content": first["choices"][0]["message"]["content"]},
                 {"role": "user", "content": "And which one carried the most crates?"}]
    ttft, timings = await first_token(s, url, arm, messages)
    return {"history": first["timings"]["prompt_n"], "swap": swap, "ttft": ttft,
            "prompt_n": timings.get("prompt_n"), "cache_n": timings.get("cache_n")}


async def run(args: argparse.Namespace, tmp: Path) -> int:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp / "swapproxy.log"
    cfg = config(tmp, args.threads)
    proc = start_swapproxy(cfg, port, log, log_level="info")
    pids: set[int] = set()
    rows: list[dict[str, Any]] = []
    try:
        await wait_healthy(url + "/health", what="swapproxy", proc=proc, log=log)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=900)) as s:
            for r in range(args.rounds):
                text = history(r, args.tokens)
                got = {}
                for arm in (ARMS if r % 2 == 0 else ARMS[::-1]):
                    got[arm] = await one_arm(s, url, arm, text)
                    async with s.get(url + "/running?details=1") as resp:
                        pids.update(d["pid"] for d in (await resp.json())["details"].values() if d.get("pid"))
                rows.append(got)
                print(f"round {r + 1}: " + ", ".join(f"{arm} first token {got[arm]['ttft']:.2f}s, prompt_n "
                                                     f"{got[arm]['prompt_n']}" for arm in ARMS), flush=True)
    finally:
        stop_proxy(proc, sorted(pids))
    text = log.read_text(errors="replace")
    learned = json.loads((tmp / "state" / "learned.json").read_text())
    report(args, rows, text, learned)
    return 0


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def report(args: argparse.Namespace, rows: list[dict[str, Any]], log: str, learned: dict[str, Any]) -> None:
    table = [["round", "history tokens", "first token: restore", "no restore", "ratio",
              "prompt_n: restore", "no restore", "ratio", "cache_n (restore)"]]
    ttft_ratios, prompt_ratios = [], []
    for i, got in enumerate(rows, 1):
        r, n = got["a-restore"], got["a-plain"]
        ttft_ratios.append(r["ttft"] / n["ttft"])
        prompt_ratios.append(r["prompt_n"] / n["prompt_n"])
        table.append([str(i), str(r["history"]), f"{r['ttft']:.2f} s", f"{n['ttft']:.2f} s",
                      f"{ttft_ratios[-1]:.2f}", str(r["prompt_n"]), str(n["prompt_n"]), f"{prompt_ratios[-1]:.3f}",
                      str(r["cache_n"])])
    print()
    print(markdown_table(table))
    starts = {arm: [float(m.group(2)) for m in _READY.finditer(log) if m.group(1) == arm] for arm in ARMS}
    restores = [float(m.group(1)) for m in _RESTORED.finditer(log)]
    saves = [float(m.group(1)) for m in _SAVED.finditer(log)]
    stops = {entry["model"]: entry.get("stops", []) for entry in learned.values() if isinstance(entry, dict)}
    stop_r, stop_n = _median(stops.get("a-restore", [])), _median(stops.get("a-plain", []))
    saved = _median([got["a-plain"]["ttft"] - got["a-restore"]["ttft"] for got in rows])
    lengthened = stop_r - stop_n
    ttft_ratio, prompt_ratio = _median(ttft_ratios), _median(prompt_ratios)
    print()
    print(f"A's start, spawn to ready without the restore: median {_median(starts['a-plain']):.2f} s (a-plain), "
          f"{_median(starts['a-restore']) - _median(restores):.2f} s (a-restore, its restore taken out)")
    print(f"the restore itself: median {_median(restores):.3f} s over {len(restores)}; the save: median "
          f"{_median(saves):.3f} s over {len(saves)}")
    print(f"A's graceful stop: median {stop_r:.3f} s with the save, {stop_n:.3f} s without "
          f"({len(stops.get('a-restore', []))} and {len(stops.get('a-plain', []))} stops)")
    print()
    print(markdown_table([
        ["bar", "measured", "limit", ""],
        ["first token, restore / no restore (median of paired rounds)", f"{ttft_ratio:.2f}", "<= 0.50",
         verdict(ttft_ratio <= 0.5)],
        ["prompt_n, restore / no restore", f"{prompt_ratio:.3f}", "<= 0.10", verdict(prompt_ratio <= 0.1)],
        ["stop lengthened by the save / time the restore saves",
         f"{lengthened:.3f} s / {saved:.2f} s = {lengthened / saved:.3f}", "<= 0.20",
         verdict(lengthened <= 0.2 * saved)],
    ]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3, help="paired rounds (each runs both arms)")
    p.add_argument("--tokens", type=int, default=3000, help="about how long the conversation's history is")
    p.add_argument("--threads", type=int, default=2, help="llama-server's -t")
    args = p.parse_args(argv)
    missing = [str(x) for x in (SERVER, MODEL) if not x.exists()]
    if missing:
        print(f"missing {', '.join(missing)}: run python3 scripts/install_llama.py first")
        return 2
    with tempfile.TemporaryDirectory(prefix="swapproxy-slotcache-") as tmp:
        try:
            return asyncio.run(run(args, Path(tmp)))
        except RuntimeError as exc:
            print(f"failed: {exc}\n{log_tail(Path(tmp) / 'swapproxy.log')}")
            return 1
