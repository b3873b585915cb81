"""Soak test: many requests over three models, with real swaps, against a real swapproxy.

swapproxy runs as a real subprocess (``python -m swapproxy -c <tmp config>
--listen 127.0.0.1:<port> --log-level warn``) in front of three copies of
``tests/fake_llama_server.py`` (``--startup-delay 0.05``):

* ``alpha`` and ``beta`` share a ``swap`` group (one of them runs at a time);
* ``gamma`` is alone in a non-exclusive group, so it runs beside either.

``C`` client workers (default 64) send ``N`` requests (default 10,000): streamed
chat completions, plain chat completions and embeddings, in a seeded random mix.
The model of each request is drawn at random too (seeded): a third go to
``gamma``, the rest to whichever of alpha/beta is "hot" in the current phase.
The hot model flips after a random number of requests (``--phase`` on
average), and a few requests (``--cross``) ask for the cold one anyway. That
keeps swaps real and frequent (every swap stops and spawns a Python process,
≈ 0.5 s on two cores) without making the run nothing but swaps: a uniform
choice between alpha and beta would swap about every second request.

``concurrencyLimit`` is set a little under what the workers can pile on one
model, so 429s happen (mostly while a swap holds requests in the queue). A
client that gets a 429 waits its ``Retry-After`` (times ``--retry-after-scale``,
default 1) before its next request, as a well-behaved client does; a client
that retried at once would turn every swap into a burst of 429s.

Every request must end in one of:

* 200 with a valid body (a stream must end with ``data: [DONE]``);
* 429 carrying ``Retry-After`` and swapproxy's error envelope
  (``rate_limit_exceeded``);
* 503 carrying swapproxy's error envelope with a start-failure/shutdown code
  (explicit, so accepted, but listed in the table).

Anything else (other statuses, a 503 from the fake itself, a broken stream,
a connection error) is a failure; a request that has not finished within
``--deadline`` seconds is a hang. swapproxy's RSS is read (psutil, its PID; its
children separately) after a warm-up (500 requests, or a fifth of a shorter
run) and at the end; growth over 10 % fails the run — less what the request captures'
buffer (``captureBuffer``, 5 MB by default: bounded, not a leak) took meanwhile, read from
``swapproxy_history_capture_bytes``. Swaps are counted from
``swapproxy_swaps_total`` in ``/metrics`` (model starts) and, as a cross-check,
by sampling ``GET /running?details=1`` (distinct upstream pids seen).

After the run swapproxy gets SIGTERM (by its PID, in a ``finally``); any
upstream still alive a few seconds later is an orphan, and a failure.

With ``--store FILE`` swapproxy keeps its request history in that sqlite file
(``store.path``); once swapproxy has stopped, the file's size, its write-ahead log's
and its rows are reported. Without it the history is in memory, as by default.

Usage::

    python scripts/soak.py                      # 10,000 requests, 64 concurrent
    python scripts/soak.py --quick              # 600 requests
    python scripts/soak.py --requests 2000 --concurrency 32 --seed 7
    python scripts/soak.py --json out.json      # ... and the counts as JSON (tests/test_soak.py)
    python scripts/soak.py --store /tmp/h.sqlite  # the request history in a file: its size at the end

(``python -m scripts.bench.soak ...`` from the checkout's root is the same command.)

Exit status: 0 when there were no failures, no hangs, no orphans and RSS
stayed within 10 %; 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from .meters import pct_rank, rss_bytes, tree
from .ports import free_port, free_port_block
from .procs import ROOT, kill_leftovers, log_tail, start_swapproxy, terminate, wait_healthy
from .procs import fake_cmd as _fake_cmd

SWAP_MODELS = ("alpha", "beta")
SIDE_MODEL = "gamma"
MODELS = (*SWAP_MODELS, SIDE_MODEL)
#: request kinds and their share of the mix
KINDS = (("chat", 0.45), ("stream", 0.40), ("embed", 0.15))
#: swapproxy's own 503 codes: explicit refusals the soak accepts (and lists)
EXPLICIT_503 = frozenset({"model_start_failed", "health_check_timeout", "shutting_down"})
RSS_GROWTH_LIMIT = 0.10


@dataclass
class SoakOptions:
    requests: int = 10_000
    concurrency: int = 64
    seed: int = 6
    warmup: int | None = None  # None: min(500, requests // 5)
    deadline: float = 60.0  # seconds a single request may take before it counts as a hang
    phase: int = 150  # mean requests between flips of the hot swap-group model
    cross: float = 0.003  # share of requests that ask for the cold swap-group model anyway
    startup_delay: float = 0.05
    concurrency_limit: int | None = None  # swap models; None: derived from concurrency
    side_limit: int | None = None  # gamma; None: derived from concurrency
    retry_after_scale: float = 1.0
    sample_interval: float = 0.1
    quiet: bool = False
    store: Path | None = None  # the request history's sqlite file (store.path); None: in memory
    capture_buffer: float | None = None  # captureBuffer (MB); None: swapproxy's default (5)

    @property
    def warmup_requests(self) -> int:
        return self.warmup if self.warmup is not None else min(500, self.requests // 5)


@dataclass
class SoakResult:
    options: SoakOptions
    statuses: Counter[str] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)
    hangs: int = 0
    failures: int = 0
    failure_samples: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    model_starts: dict[str, int] = field(default_factory=dict)
    running_at_end: list[str] = field(default_factory=list)
    running_changes: int = 0
    pids_seen: dict[str, set[int]] = field(default_factory=dict)
    rss_warm: int | None = None
    captures_warm: int = 0  # swapproxy_history_capture_bytes at the warm-up reading, and at the end
    captures_end: int = 0
    rss_end: int | None = None
    children_rss_warm: int | None = None
    children_rss_end: int | None = None
    orphans: list[int] = field(default_factory=list)
    store_bytes: dict[str, int] = field(default_factory=dict)  # the store's files (name -> bytes) at the end
    store_rows: int | None = None
    proxy_exit_code: int | None = None
    duration: float = 0.0
    done: int = 0

    @property
    def rss_growth(self) -> float | None:
        """RSS growth after the warm-up, less what the request captures' buffer took meanwhile (bounded by
        captureBuffer: filling it is not a leak)."""
        if not self.rss_warm or self.rss_end is None:
            return None
        return (self.rss_end - self.rss_warm - (self.captures_end - self.captures_warm)) / self.rss_warm

    @property
    def raw_rss_growth(self) -> float | None:
        if not self.rss_warm or self.rss_end is None:
            return None
        return (self.rss_end - self.rss_warm) / self.rss_warm

    @property
    def rss_ok(self) -> bool:
        growth = self.rss_growth
        return growth is not None and growth <= RSS_GROWTH_LIMIT

    @property
    def ok(self) -> bool:
        return self.failures == 0 and self.hangs == 0 and not self.orphans and self.rss_ok


# --------------------------------------------------------------------------- #
# The plan: which model and which kind, request by request (seeded)
# --------------------------------------------------------------------------- #


def make_plan(opts: SoakOptions) -> list[tuple[str, str]]:
    """``[(model, kind), ...]`` for every request, the same for the same seed."""
    rng = random.Random(opts.seed)
    kinds = [kind for kind, _ in KINDS]
    weights = [weight for _, weight in KINDS]
    plan: list[tuple[str, str]] = []
    hot = 0
    next_flip = rng.randint(opts.phase // 2, opts.phase * 3 // 2) if opts.phase > 0 else -1
    for i in range(opts.requests):
        if i == next_flip:
            hot = 1 - hot
            next_flip = i + rng.randint(max(1, opts.phase // 2), max(1, opts.phase * 3 // 2))
        r = rng.random()
        if r < 1 / 3:
            model = SIDE_MODEL
        elif r < 1 / 3 + opts.cross:
            model = SWAP_MODELS[1 - hot]
        else:
            model = SWAP_MODELS[hot]
        plan.append((model, rng.choices(kinds, weights)[0]))
    return plan


# --------------------------------------------------------------------------- #
# swapproxy as a subprocess
# --------------------------------------------------------------------------- #


def limits(opts: SoakOptions) -> tuple[int, int]:
    """(swap models' limit, gamma's limit): a little under what the workers can pile on.

    With C workers, about 2/3 C ask the hot swap model at once and 1/3 C ask gamma;
    limits somewhat under those numbers make 429s happen now and then, not constantly.
    """
    c = opts.concurrency
    swap = opts.concurrency_limit or max(2, round(c * 0.72))
    side = opts.side_limit or max(2, round(c * 0.40))
    return swap, side


def write_config(opts: SoakOptions, workdir: Path) -> Path:
    swap_limit, side_limit = limits(opts)

    def fake(name: str) -> str:
        return _fake_cmd("--model-name", name, "--startup-delay", f"{opts.startup_delay:g}")

    lines = [
        *(["store:", f"  path: {json.dumps(str(opts.store))}"] if opts.store is not None else []),
        *([f"captureBuffer: {opts.capture_buffer:g}"] if opts.capture_buffer is not None else []),
        "healthCheckTimeout: 30",
        f"startPort: {free_port_block(len(MODELS) + 1)}",
        f"stateDir: {json.dumps(str(workdir / 'state'))}",
        "logToStdout: proxy",
        "models:",
    ]
    for name in MODELS:
        limit = side_limit if name == SIDE_MODEL else swap_limit
        lines += [f"  {name}:", f"    cmd: {json.dumps(fake(name))}", f"    concurrencyLimit: {limit}"]
    lines += [
        "groups:",
        "  chat:",
        "    swap: true",
        "    exclusive: false",
        f"    members: [{', '.join(SWAP_MODELS)}]",
        "  side:",
        "    swap: false",
        "    exclusive: false",
        f"    members: [{SIDE_MODEL}]",
    ]
    path = workdir / "soak.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


class ProxyProcess:
    """swapproxy started with ``python -m swapproxy``; stopped by PID with SIGTERM."""

    def __init__(self, config: Path, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "swapproxy.log"
        self.proc = start_swapproxy(config, self.port, self.log_path, src=ROOT)
        self.pid = self.proc.pid

    async def wait_healthy(self, session: aiohttp.ClientSession, timeout: float = 30.0) -> None:
        await wait_healthy(self.url + "/health", what="swapproxy", proc=self.proc, log=self.log_path,
                           interval=0.02, timeout=timeout, session=session)

    def rss(self) -> tuple[int, int]:
        """(swapproxy's own RSS, the sum of its children's)."""
        return rss_bytes([self.pid]), rss_bytes(self.children())

    def children(self) -> list[int]:
        return [p.pid for p in tree(self.pid)[1:]]

    async def stop(self, timeout: float = 20.0) -> int | None:
        await asyncio.to_thread(terminate, self.proc, timeout)
        return self.proc.returncode

    def log_tail(self, n: int = 20) -> str:
        return "\n".join(log_tail(self.log_path, chars=1 << 20).splitlines()[-n:])


# --------------------------------------------------------------------------- #
# Requests
# --------------------------------------------------------------------------- #


def request_for(model: str, kind: str, i: int) -> tuple[str, dict[str, Any]]:
    if kind == "embed":
        return "/v1/embeddings", {"model": model, "input": f"soak request {i}"}
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": f"soak {i}"}], "max_tokens": 8}
    if kind == "stream":
        body["stream"] = True
    return "/v1/chat/completions", body


def envelope_code(raw: bytes) -> str | None:
    """swapproxy's error code, when ``raw`` is its envelope (the fake's codes are ints)."""
    try:
        err = json.loads(raw)["error"]
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(err, dict) or not {"message", "type", "code", "param"} <= err.keys():
        return None
    return err["code"] if isinstance(err["code"], str) else None


def check_ok_body(kind: str, raw: bytes) -> str | None:
    """None when a 200 body is what ``kind`` should answer, else what is wrong."""
    if kind == "stream":
        if not raw.rstrip().endswith(b"data: [DONE]"):
            return f"stream does not end with data: [DONE]: ...{raw[-120:]!r}"
        return None
    try:
        obj = json.loads(raw)
    except ValueError:
        return f"200 body is not JSON: {raw[:120]!r}"
    key = "data" if kind == "embed" else "choices"
    if not isinstance(obj, dict) or not obj.get(key):
        return f"200 body without {key!r}: {raw[:120]!r}"
    return None


async def one_request(
    session: aiohttp.ClientSession, url: str, model: str, kind: str, i: int
) -> tuple[str, str | None, float]:
    """(outcome label, failure text or None, seconds to wait before the next request)."""
    path, body = request_for(model, kind, i)
    async with session.post(url + path, json=body) as resp:
        raw = await resp.read()
        if resp.status == 200:
            return "200", check_ok_body(kind, raw), 0.0
        code = envelope_code(raw)
        if resp.status == 429:
            retry = resp.headers.get("Retry-After")
            if code != "rate_limit_exceeded" or retry is None or not retry.isdigit():
                return "429", f"429 without Retry-After/envelope: {dict(resp.headers)} {raw[:200]!r}", 0.0
            return "429", None, float(retry)
        if resp.status == 503 and code in EXPLICIT_503:
            return "503", None, 0.0
        return str(resp.status), f"{model} {kind}: HTTP {resp.status}: {raw[:300]!r}", 0.0


async def sample_running(session: aiohttp.ClientSession, url: str, result: SoakResult, interval: float) -> None:
    """Watch GET /running?details=1: running-set changes and distinct upstream pids."""
    previous: frozenset[str] | None = None
    while True:
        try:
            async with session.get(url + "/running?details=1") as resp:
                data = await resp.json()
            now = frozenset(data.get("running", []))
            if previous is not None and now != previous:
                result.running_changes += 1
            previous = now
            for model, snap in (data.get("details") or {}).items():
                if snap.get("pid"):
                    result.pids_seen.setdefault(model, set()).add(snap["pid"])
        except (aiohttp.ClientError, ValueError):
            pass
        await asyncio.sleep(interval)


async def capture_bytes(session: aiohttp.ClientSession, url: str) -> int:
    """``swapproxy_history_capture_bytes`` from /metrics: what the request captures hold (0 if unknown)."""
    try:
        async with session.get(url + "/metrics") as resp:
            text = await resp.text()
    except aiohttp.ClientError:
        return 0
    for line in text.splitlines():
        if line.startswith("swapproxy_history_capture_bytes "):
            return int(float(line.split()[1]))
    return 0


async def model_starts(session: aiohttp.ClientSession, url: str) -> dict[str, int]:
    """``swapproxy_swaps_total{model=...}`` from /metrics (times each model was started)."""
    out: dict[str, int] = {}
    try:
        async with session.get(url + "/metrics") as resp:
            text = await resp.text()
    except aiohttp.ClientError:
        return out
    for line in text.splitlines():
        if line.startswith("swapproxy_swaps_total{"):
            labels, _, value = line.rpartition(" ")
            model = labels.split('model="', 1)[1].split('"', 1)[0]
            out[model] = int(float(value))
    return out


def _log(opts: SoakOptions, message: str) -> None:
    if not opts.quiet:
        print(message, file=sys.stderr, flush=True)


async def soak(opts: SoakOptions) -> SoakResult:
    """Run the whole soak (start swapproxy, load it, measure, stop it) and return the counts."""
    result = SoakResult(opts)
    plan = make_plan(opts)
    warmup = opts.warmup_requests
    with tempfile.TemporaryDirectory(prefix="swapproxy-soak-") as tmp:
        workdir = Path(tmp)
        config = write_config(opts, workdir)
        proxy = ProxyProcess(config, workdir)
        seen_children: set[int] = set()
        warm_reading: list[asyncio.Future[int]] = []
        connector = aiohttp.TCPConnector(limit=0)
        session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None))
        sampler: asyncio.Task[None] | None = None
        try:
            await proxy.wait_healthy(session)
            _log(opts, f"soak: swapproxy pid {proxy.pid} on {proxy.url}; {opts.requests} requests, "
                       f"{opts.concurrency} concurrent, limits {limits(opts)}")
            sampler = asyncio.ensure_future(sample_running(session, proxy.url, result, opts.sample_interval))
            next_index = 0
            progress_every = max(1, opts.requests // 10)

            def on_done() -> None:
                result.done += 1
                if result.done == warmup:
                    result.rss_warm, result.children_rss_warm = proxy.rss()
                    warm_reading.append(asyncio.ensure_future(capture_bytes(session, proxy.url)))
                    seen_children.update(proxy.children())
                if result.done % progress_every == 0:
                    _log(opts, f"soak: {result.done}/{opts.requests} done, {dict(result.statuses)}, "
                               f"{result.hangs} hangs, {time.monotonic() - began:.1f}s")

            async def worker() -> None:
                nonlocal next_index
                while next_index < len(plan):
                    i = next_index
                    next_index += 1
                    model, kind = plan[i]
                    result.kinds[kind] += 1
                    t0 = time.monotonic()
                    pause = 0.0
                    try:
                        async with asyncio.timeout(opts.deadline):
                            label, problem, pause = await one_request(session, proxy.url, model, kind, i)
                    except TimeoutError:
                        result.hangs += 1
                        label, problem = "hang", f"{model} {kind} #{i}: no answer within {opts.deadline:g}s"
                    except (aiohttp.ClientError, OSError) as exc:
                        label, problem = "error", f"{model} {kind} #{i}: {exc.__class__.__name__}: {exc}"
                    result.latencies.append(time.monotonic() - t0)
                    result.statuses[label] += 1
                    if problem is not None and label != "hang":
                        result.failures += 1
                    if problem is not None and len(result.failure_samples) < 10:
                        result.failure_samples.append(problem)
                    on_done()
                    if pause:
                        await asyncio.sleep(pause * opts.retry_after_scale)

            began = time.monotonic()
            await asyncio.gather(*(worker() for _ in range(opts.concurrency)))
            result.duration = time.monotonic() - began
            if result.rss_warm is None:  # a run shorter than its warm-up: compare with the start
                result.rss_warm, result.children_rss_warm = proxy.rss()
            result.rss_end, result.children_rss_end = proxy.rss()
            result.captures_warm = await warm_reading[0] if warm_reading else 0
            result.captures_end = await capture_bytes(session, proxy.url)
            result.model_starts = await model_starts(session, proxy.url)
            async with session.get(proxy.url + "/running") as resp:
                result.running_at_end = list((await resp.json()).get("running", []))
            seen_children.update(proxy.children())
        finally:
            if sampler is not None:
                sampler.cancel()
            await session.close()
            seen_children.update(proxy.children())
            result.proxy_exit_code = await proxy.stop()
        for pids in result.pids_seen.values():
            seen_children.update(pids)
        if opts.store is not None:  # swapproxy has stopped: its last batch is written, the WAL checkpointed
            result.store_bytes, result.store_rows = store_size(opts.store)
        # upstreams still alive a while after swapproxy stopped: SIGKILLed, and listed
        result.orphans = await asyncio.to_thread(kill_leftovers, seen_children, 5.0)
        if result.proxy_exit_code not in (0, None) or result.failures or result.hangs:
            _log(opts, f"soak: swapproxy exited {result.proxy_exit_code}; its log ends:\n{proxy.log_tail()}")
    return result


# --------------------------------------------------------------------------- #
# Report
# --------------------------------------------------------------------------- #


def store_size(path: Path) -> tuple[dict[str, int], int | None]:
    """The store's files and their sizes, and its rows (None when it cannot be read)."""
    files = {p.name: p.stat().st_size for p in sorted(path.parent.glob(path.name + "*"))}
    try:
        with sqlite3.connect(path) as db:
            rows = db.execute("SELECT COUNT(*) FROM history").fetchone()[0]
    except sqlite3.Error:
        rows = None
    return files, rows


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.1f} MiB"


def format_table(r: SoakResult) -> str:
    o = r.options
    swap_limit, side_limit = limits(o)
    rows: list[tuple[str, str]] = []
    rows.append(("requests", f"{r.done} of {o.requests} ({', '.join(f'{k} {v}' for k, v in sorted(r.kinds.items()))})"))
    for label in sorted(r.statuses, key=lambda s: (not s.isdigit(), s)):
        note = {"429": " (Retry-After, rate_limit_exceeded)", "503": " (explicit, swapproxy envelope)"}.get(label, "")
        rows.append((f"  {label}", f"{r.statuses[label]}{note}"))
    rows.append(("hangs", f"{r.hangs} (deadline {o.deadline:g} s)"))
    rows.append(("failures", str(r.failures)))
    starts = sum(r.model_starts.values())
    rows.append(("model starts (/metrics)", f"{starts} ({', '.join(f'{m} {n}' for m, n in sorted(r.model_starts.items()))})"))
    # No TTL is configured: every stop was an eviction by a swap.
    rows.append(("swaps (starts - running at end)", str(max(0, starts - len(r.running_at_end)))))
    pids = {m: len(p) for m, p in sorted(r.pids_seen.items())}
    rows.append(("running-set changes (sampled)", f"{r.running_changes} (distinct pids: {pids})"))
    growth, raw = r.rss_growth, r.raw_rss_growth
    verdict = "-" if growth is None or raw is None else (
        f"{raw:+.1%}; {growth:+.1%} less the captures' buffer ({'within' if r.rss_ok else 'OVER'} 10 %)")
    rows.append((f"RSS swapproxy warm-up ({o.warmup_requests} req)", _mib(r.rss_warm)))
    rows.append(("RSS swapproxy end", f"{_mib(r.rss_end)} {verdict}"))
    rows.append(("request captures warm-up / end", f"{_mib(r.captures_warm)} / {_mib(r.captures_end)} "
                                                    "(bounded by captureBuffer)"))
    rows.append(("RSS children warm-up / end", f"{_mib(r.children_rss_warm)} / {_mib(r.children_rss_end)}"))
    rows.append(("latency p50 / p99 / max", f"{pct_rank(r.latencies, .5) * 1000:.0f} / "
                 f"{pct_rank(r.latencies, .99) * 1000:.0f} / {max(r.latencies, default=0) * 1000:.0f} ms"))
    rows.append(("duration", f"{r.duration:.1f} s"))
    rows.append(("req/s", f"{r.done / r.duration:.1f}" if r.duration else "-"))
    rows.append(("orphans after SIGTERM", str(len(r.orphans))))
    if o.store is not None:
        files = ", ".join(f"{name} {size / 2**20:.2f} MiB" for name, size in r.store_bytes.items())
        per_row = sum(r.store_bytes.values()) / r.store_rows if r.store_rows else 0
        rows.append(("request history store", f"{r.store_rows} rows; {files} ({per_row:.0f} bytes a row)"))
    rows.append(("swapproxy exit code", str(r.proxy_exit_code)))
    width = max(len(k) for k, _ in rows)
    head = (f"swapproxy soak: {o.requests} requests, {o.concurrency} concurrent, seed {o.seed}; "
            f"alpha+beta swap group (limit {swap_limit}), gamma non-exclusive (limit {side_limit})")
    rule = "-" * max(len(head), width + 40)
    lines = [head, rule, *(f"{k.ljust(width)}  {v}" for k, v in rows), rule, "RESULT: " + ("PASS" if r.ok else "FAIL")]
    if r.failure_samples:
        lines += ["first problems:", *(f"  {s}" for s in r.failure_samples)]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> tuple[SoakOptions, Path | None]:
    """The run's options, and where to write its counts as JSON (None: nowhere)."""
    p = argparse.ArgumentParser(prog="soak.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=10_000)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--quick", action="store_true", help="600 requests")
    p.add_argument("--seed", type=int, default=6)
    p.add_argument("--warmup", type=int, default=None, help="requests before the first RSS reading")
    p.add_argument("--deadline", type=float, default=60.0, help="seconds before a request counts as a hang")
    p.add_argument("--phase", type=int, default=150, help="mean requests between flips of the hot swap model")
    p.add_argument("--cross", type=float, default=0.003, help="share of requests for the cold swap model")
    p.add_argument("--startup-delay", type=float, default=0.05)
    p.add_argument("--retry-after-scale", type=float, default=1.0)
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.add_argument("--json", metavar="FILE", type=Path, help="also write the counts to FILE as JSON")
    p.add_argument("--store", metavar="FILE", type=Path, help="keep the request history in this sqlite file "
                                                              "(store.path; it must not exist yet) and report "
                                                              "its size")
    p.add_argument("--capture-buffer", metavar="MB", type=float, help="captureBuffer (default: swapproxy's, 5)")
    args = p.parse_args(argv)
    opts = SoakOptions(
        requests=600 if args.quick else args.requests,
        concurrency=args.concurrency,
        seed=args.seed,
        warmup=args.warmup,
        deadline=args.deadline,
        phase=args.phase,
        cross=args.cross,
        startup_delay=args.startup_delay,
        retry_after_scale=args.retry_after_scale,
        quiet=args.quiet,
        store=args.store.resolve() if args.store is not None else None,
        capture_buffer=args.capture_buffer,
    )
    if opts.store is not None and opts.store.exists():
        p.error(f"--store {args.store}: the file exists; give a new one")
    return opts, args.json


def as_json(r: SoakResult, seconds: float) -> dict[str, Any]:
    """The counts a caller checks; ``seconds`` is the whole soak (start, load, stop, orphan check)."""
    return {"ok": r.ok, "done": r.done, "requests": r.options.requests, "failures": r.failures, "hangs": r.hangs,
            "failure_samples": r.failure_samples, "statuses": dict(r.statuses), "kinds": dict(r.kinds),
            "model_starts": r.model_starts, "orphans": r.orphans, "proxy_exit_code": r.proxy_exit_code,
            "rss_growth": r.rss_growth, "duration": r.duration, "seconds": seconds,
            "store_bytes": r.store_bytes, "store_rows": r.store_rows}


def main(argv: list[str] | None = None) -> int:
    opts, json_path = parse_args(argv)
    began = time.monotonic()
    result = asyncio.run(soak(opts))
    seconds = time.monotonic() - began
    print(format_table(result))
    if json_path is not None:
        json_path.write_text(json.dumps(as_json(result, seconds), indent=2) + "\n")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
