"""Scheduler benchmark: seeded request traces, the batching scheduler against strict arrival order.

Every trace runs twice in one run, against the same fake upstreams — once with
``routing.scheduler.use: strict`` (the baseline: arrival order, the running
model closed at once) and once with ``fifo`` (the default: ready models served
at once, waiting requests batched by model, busy models closed after
``maxWait``) — in alternating order, each on a fresh swapproxy. Upstreams start
in a fixed 0.4 s (the fake llama-server's ``--startup-delay``) and stream 5
tokens at 50 tokens/s; the models of a trace are in one swap group.

Traces (seeds and rates are written here, never tuned per run):

a. agents, each alternating between two models;
b. a bursty Poisson mix of three models;
c. Open WebUI: users chat, then the UI asks its task model (by default the chat model itself)
   for follow-ups, a title and tags, one request after the other (c-task: with a dedicated task
   model, for comparison);
d. a background indexer on an embedding model beside an interactive chat;
e. b and c again, with memory declared so that two of the three models fit together.

Per run: swaps (model starts), the wait of each request (send → first body
byte) at p50/p95/max, and the makespan. The bars: on b and c at least 40 %
fewer swaps than strict with a p95 wait no worse; no wait longer than maxWait
plus one swap (plus the request it waits behind) — or, behind older requests for
other models, plus the swaps it waited through; on e the two models that fit
never stop each other; on a no worse than strict.

    python scripts/bench_sched.py            # all traces
    python scripts/bench_sched.py --only b,c
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from swapproxy.config.model import SchedulerConfig

from .meters import pct
from .ports import free_port_block
from .procs import PY, ROOT, fake_cmd, log_tail, terminate, wait_healthy

__all__ = ["main"]

START_COST = 0.4  # seconds: every upstream's start
TOKENS, RATE = 5, 50.0  # each request streams 5 tokens at 50 tokens/s
MAX_WAIT = SchedulerConfig().max_wait  # the fifo scheduler's default maxWait
GiB = 1 << 30


@dataclass
class Record:
    model: str
    sent: float
    first: float | None = None
    done: float | None = None
    status: int = 0


@dataclass
class Run:
    trace: str
    scheduler: str
    records: list[Record] = field(default_factory=list)
    swaps: int = 0
    start_max: float = 0.0  # the longest spawn → ready seen (the last 20 of each model)
    stops: list[tuple[str, list[str]]] = field(default_factory=list)  # (target, stopped) of each swap
    starts: list[float] = field(default_factory=list)  # when each model start began (trace time)
    t0_wall: float = 0.0  # wall time of the trace's start (to place swapproxy's log lines)

    def waits(self) -> list[float]:
        """Send → first body byte of every request that was served (200)."""
        return [r.first - r.sent for r in self.records if r.first is not None and r.status == 200]

    @property
    def makespan(self) -> float:
        return max(r.done or r.sent for r in self.records) - min(r.sent for r in self.records)

    @property
    def failed(self) -> int:
        return sum(1 for r in self.records if r.status != 200)

    def failures(self) -> str:
        """The statuses of the failed requests, counted: ``503×2, 429×1`` (-1: the connection broke)."""
        counts: dict[int, int] = {}
        for r in self.records:
            if r.status != 200:
                counts[r.status] = counts.get(r.status, 0) + 1
        return ", ".join(f"{status}×{n}" for status, n in sorted(counts.items()))


# -- the client ------------------------------------------------------------------------------------
class Client:
    """Sends the trace's requests to one swapproxy and records each one's timing."""

    def __init__(self, url: str, http: aiohttp.ClientSession, run: Run, t0: float) -> None:
        self.url, self.http, self.run, self.t0 = url, http, run, t0
        run.t0_wall = time.time()

    def now(self) -> float:
        return time.monotonic() - self.t0

    async def chat(self, model: str) -> None:
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": True}
        await self._send(model, "/v1/chat/completions", body)

    async def embed(self, model: str) -> None:
        await self._send(model, "/v1/embeddings", {"model": model, "input": "some text to index"})

    async def _send(self, model: str, path: str, body: dict[str, Any]) -> None:
        record = Record(model, self.now())
        self.run.records.append(record)
        try:
            async with self.http.post(self.url + path, json=body) as resp:
                record.status = resp.status
                async for _ in resp.content.iter_any():
                    if record.first is None:
                        record.first = self.now()
        except aiohttp.ClientError:
            record.status = -1
        record.done = self.now()

    async def at(self, when: float, send: Awaitable[None]) -> None:
        """Send at ``when`` seconds into the trace (open loop)."""
        await asyncio.sleep(max(0.0, when - self.now()))
        await send


# -- the traces ------------------------------------------------------------------------------------
Trace = Callable[[Client], Awaitable[None]]


async def agents(c: Client) -> None:
    """a. Four agents, each alternating between two of the models, thinking ~0.3 s between requests."""
    rng = random.Random(101)
    pairs = [("m1", "m2"), ("m2", "m3"), ("m3", "m1"), ("m1", "m2")]

    async def agent(pair: tuple[str, str], think: list[float]) -> None:
        for i, pause in enumerate(think):
            await c.chat(pair[i % 2])
            await asyncio.sleep(pause)

    await asyncio.gather(*(agent(p, [rng.expovariate(1 / 0.3) for _ in range(6)]) for p in pairs))


async def bursts(c: Client) -> None:
    """b. Eight bursts (one every ~2.5 s, Poisson); each 1 + Poisson(5) requests at 25/s, any model."""
    rng = random.Random(202)
    sends, t = [], 0.0
    for _ in range(8):
        t += rng.expovariate(1 / 2.5)
        n = 1 + sum(1 for _ in range(50) if rng.random() < 0.1)  # ~Poisson(5)
        u = t
        for _ in range(n):
            u += rng.expovariate(25.0)
            sends.append(c.at(u, c.chat(rng.choice(["m1", "m2", "m3"]))))
    await asyncio.gather(*sends)


async def _open_webui(c: Client, rng: random.Random, users: tuple[str, ...], task: str | None) -> None:
    """Users send four messages each to their chat model, reading ~1 s (exponential) between them:
    a busy instance, where their messages overlap. After each answer Open WebUI asks its task
    model — by default the chat model itself, else ``task`` — one request after the other, as its
    background task handler does, for follow-ups, a title (first message only) and tags."""

    async def user(model: str, start: float, pauses: list[float]) -> None:
        await asyncio.sleep(start)
        for i, pause in enumerate(pauses):
            await c.chat(model)
            for _ in ["follow-ups", *["title"] * (i == 0), "tags"]:
                await c.chat(task or model)
            await asyncio.sleep(pause)

    await asyncio.gather(*(user(model, rng.uniform(0, 1.0), [rng.expovariate(1.0) for _ in range(4)])
                           for model in users))


async def open_webui(c: Client) -> None:
    """c. Open WebUI as installed (its task model is the chat model): four users on three models."""
    await _open_webui(c, random.Random(303), ("chat-a", "chat-a", "chat-b", "chat-c"), None)


async def open_webui_task_model(c: Client) -> None:
    """c-task. The same with a dedicated task model: every message needs a swap to the chat model and
    one to the task model, whatever the order (the recipe is a warm selector: see the README)."""
    await _open_webui(c, random.Random(303), ("chat-a", "chat-a", "chat-b", "chat-b"), "task")


async def indexer(c: Client) -> None:
    """d. Two indexer workers embed back to back while a person sends six chat messages (~2 s apart)."""
    rng = random.Random(404)
    done = asyncio.Event()

    async def worker() -> None:
        while not done.is_set():
            await c.embed("embed")
            await asyncio.sleep(0.05)

    async def person() -> None:
        for _ in range(6):
            await asyncio.sleep(rng.expovariate(1 / 2.0))
            await c.chat("chat")
        done.set()

    await asyncio.gather(worker(), worker(), person())


TRACES: dict[str, tuple[str, Trace, tuple[str, ...]]] = {
    "a": ("agents alternating two models", agents, ("m1", "m2", "m3")),
    "b": ("bursty Poisson mix of 3 models", bursts, ("m1", "m2", "m3")),
    "c": ("Open WebUI, task model = chat model", open_webui, ("chat-a", "chat-b", "chat-c")),
    "c-task": ("Open WebUI, a dedicated task model", open_webui_task_model, ("chat-a", "chat-b", "task")),
    "d": ("indexer + interactive chat", indexer, ("embed", "chat")),
}
#: e: b and c with memory: the first two models fit together (4 + 4 of 10 GiB), the third (7) with neither.
MEMORY_TRACES = {"e-b": "b", "e-c": "c"}


def config(models: tuple[str, ...], scheduler: str, state: Path, *, memory: bool) -> dict[str, Any]:
    flags = ("--startup-delay", str(START_COST), "--tokens", str(TOKENS), "--token-rate", str(RATE))
    doc: dict[str, Any] = {
        "startPort": free_port_block(len(models) + 1), "healthCheckTimeout": 30, "stateDir": str(state),
        "routing": {"scheduler": {"use": scheduler}},
        "models": {m: {"cmd": fake_cmd("--model-name", m, *flags)} for m in models},
    }
    if memory:
        doc["memory"] = {"devices": {"host": "10GiB"}}
        for m, size in zip(models, ("4GiB", "4GiB", "7GiB")):
            doc["models"][m]["memory"] = size
        doc["groups"] = {"fit": {"swap": False, "exclusive": False, "members": list(models)}}
    else:
        doc["groups"] = {"one": {"swap": True, "exclusive": True, "members": list(models)}}
    return doc


_STOP_LINE = re.compile(r"swap to (\S+): stopping (.+)$")
_START_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) INFO swapproxy.process: \S+: \w+ -> starting")


async def run_once(name: str, trace: Trace, models: tuple[str, ...], scheduler: str, *, memory: bool) -> Run:
    run = Run(name, scheduler)
    with tempfile.TemporaryDirectory(prefix="swapproxy-sched-") as tmp:
        folder = Path(tmp)
        cfg = folder / "config.yaml"
        cfg.write_text(json.dumps(config(models, scheduler, folder / "state", memory=memory)))
        port = free_port_block(1)
        log = folder / "swapproxy.log"
        with log.open("wb") as out:
            proc = subprocess.Popen([PY, "-m", "swapproxy", "-c", str(cfg), "--listen", f"127.0.0.1:{port}",
                                     "--log-level", "info"], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        try:
            await wait_healthy(url + "/health", what="swapproxy", proc=proc, log=log)
            timeout = aiohttp.ClientTimeout(total=120)
            async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as http:
                await trace(Client(url, http, run, time.monotonic()))
                async with http.get(url + "/metrics") as resp:
                    metrics = await resp.text()
        finally:
            terminate(proc, 20)
        run.swaps = int(sum(float(v) for v in re.findall(r"^swapproxy_swaps_total\{[^}]*\} (\S+)", metrics, re.M)))
        learned = json.loads((folder / "state" / "learned.json").read_text())  # the starts swapproxy timed
        run.start_max = max((t for entry in learned.values() for t in entry.get("starts", [])), default=START_COST)
        for line in log_tail(log, 10_000_000).splitlines():
            if match := _STOP_LINE.search(line):
                run.stops.append((match.group(1), [s.strip() for s in match.group(2).split(",")]))
            if match := _START_LINE.match(line):
                wall = time.mktime(time.strptime(match.group(1), "%Y-%m-%d %H:%M:%S")) + int(match.group(2)) / 1000
                run.starts.append(wall - run.t0_wall)
    return run


# -- the report ------------------------------------------------------------------------------------
def row(run: Run) -> list[str]:
    waits = run.waits()
    return [run.trace, run.scheduler, str(len(run.records)), run.failures() or "0", str(run.swaps),
            f"{pct(waits, 0.5):.2f}", f"{pct(waits, 0.95):.2f}", f"{max(waits):.2f}", f"{run.makespan:.1f}"]


def verdicts(name: str, strict: Run, fifo: Run) -> list[str]:
    out = []
    p95s, p95f = pct(strict.waits(), 0.95), pct(fifo.waits(), 0.95)
    fewer = 1 - fifo.swaps / strict.swaps if strict.swaps else 0.0
    base = name.removeprefix("e-")
    if base in ("b", "c"):
        out.append(f"{name}: swaps {fifo.swaps} vs {strict.swaps} strict = {fewer:.0%} fewer (bar >= 40%): "
                   f"{'PASS' if fewer >= 0.4 else 'FAIL'}; p95 wait {p95f:.2f} vs {p95s:.2f} s (bar: no worse): "
                   f"{'PASS' if p95f <= p95s else 'FAIL'}")
    if base == "a":
        ok = fifo.swaps <= strict.swaps and p95f <= p95s
        out.append(f"{name}: swaps {fifo.swaps} vs {strict.swaps}, p95 wait {p95f:.2f} vs {p95s:.2f} s "
                   f"(bar: no worse than strict): {'PASS' if ok else 'FAIL'}")
    if base == "c-task":
        out.append(f"{name}: swaps {fifo.swaps} vs {strict.swaps} strict = {fewer:.0%} fewer, p95 wait {p95f:.2f} "
                   f"vs {p95s:.2f} s (no bar: two swaps a message whatever the order)")
    out.append(bound_verdict(name, fifo))
    if name.startswith("e-"):
        pair = set(TRACES[base][2][:2])
        for run in (strict, fifo):
            crossed = [(t, s) for t, s in run.stops if t in pair and pair & set(s)]
            out.append(f"{name} ({run.scheduler}): the two models that fit never stop each other "
                       f"({len(run.stops)} swaps looked at): {'PASS' if not crossed else f'FAIL {crossed}'}")
    return out


def bound_verdict(name: str, fifo: Run) -> str:
    """Every wait within maxWait, plus the swaps it waited through (one: its own; more only behind
    older waiters for other models) at the longest start seen plus a stop each, plus the request
    it waited behind, plus slack for the client's clock."""
    swap = fifo.start_max + 0.2
    over, through = [], 0
    for record in fifo.records:
        if record.first is None or record.status != 200:
            continue
        k = sum(1 for t in fifo.starts if record.sent < t <= record.first)
        through += k > 1
        if record.first - record.sent > MAX_WAIT + max(k, 1) * swap + TOKENS / RATE + 0.1:
            over.append((record.model, round(record.sent, 2), round(record.first - record.sent, 2), k))
    return (f"{name}: max wait {max(fifo.waits()):.2f} s; every wait within maxWait + the swaps it waited "
            f"through ({swap:.2f} s each) + one request: {'PASS' if not over else f'FAIL {over}'}; "
            f"{through} waited through more than one swap (waiters past maxWait are served in arrival order)")


async def main_async(only: list[str]) -> int:
    names = [n for n in [*TRACES, *MEMORY_TRACES] if not only or n in only or (n.startswith("e-") and "e" in only)]
    runs: dict[str, dict[str, Run]] = {}
    for i, name in enumerate(names):
        base = MEMORY_TRACES.get(name, name)
        what, trace, models = TRACES[base]
        order = ("strict", "fifo") if i % 2 == 0 else ("fifo", "strict")  # alternate which goes first
        for scheduler in order:
            print(f"  running {name} ({what}) with {scheduler}...", flush=True)
            runs.setdefault(name, {})[scheduler] = await run_once(name, trace, models, scheduler,
                                                                  memory=name in MEMORY_TRACES)
    header = ["trace", "scheduler", "requests", "failed", "swaps", "wait p50 s", "wait p95 s", "wait max s",
              "makespan s"]
    table = [header, ["---"] * len(header)]
    for name, pair in runs.items():
        table += [row(pair["strict"]), row(pair["fifo"])]
    print()
    for line in table:
        print("| " + " | ".join(line) + " |")
    print()
    failed = 0
    for name, pair in runs.items():
        for verdict in verdicts(name, pair["strict"], pair["fifo"]):
            print(verdict)
            failed += "FAIL" in verdict
    print(f"\nstart cost {START_COST} s, {TOKENS} tokens at {RATE:g}/s per request, fifo maxWait {MAX_WAIT:g} s")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default="", help="comma-separated traces: a,b,c,d,e (e = e-b and e-c)")
    args = p.parse_args(argv)
    only = [x.strip() for x in args.only.split(",") if x.strip()]
    return asyncio.run(main_async(only))
