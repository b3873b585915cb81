"""perf.py's run: its plan (full or --quick), swapproxy's config, and what each section works with (Env)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import procs
from .client import LoadPlan, Pool, chat_body, http_request
from .meters import Meter, rss_mb, tree
from .report import PerfReport
from .servers import CHAT_BODY

ALWAYS_ON = ("static", "fake", "paced", "burst", "hold")
SWAP_MODELS = ("swap-a", "swap-b")
HOLD_RATE = 2.0  # events per second per held stream


@dataclass(frozen=True)
class Plan(LoadPlan):
    seq: int  # sequential requests per column (interleaved)
    closed_seconds: float  # per column per connection count, split over rounds
    sse_rounds: int
    burst_tokens: int
    ttfe: int  # time-to-first-event samples per column
    hold_streams: int
    hold_seconds: float
    swaps: int
    swap_delay: float


FULL = Plan("full", seq=1000, open_seconds=4.0, closed_seconds=3.0, rounds=4, sse_rate=50.0, sse_tokens=50,
            sse_rounds=3, burst_tokens=5000, ttfe=60, hold_streams=1000, hold_seconds=30.0, swaps=20,
            swap_delay=0.5)
QUICK = Plan("quick", seq=120, open_seconds=0.75, closed_seconds=0.5, rounds=2, sse_rate=50.0, sse_tokens=25,
             sse_rounds=1, burst_tokens=2000, ttfe=10, hold_streams=260, hold_seconds=1.0, swaps=4,
             swap_delay=0.3)


def write_config(plan: Plan, tmp: Path, ports: dict[str, int], nginx: str | None) -> Path:
    """swapproxy's config: every upstream preloaded on its own port (the direct column's), swap-a/b swapping."""
    def fake(model: str, *flags: str) -> str:
        return procs.fake_cmd("--model-name", model, *flags, port=ports[model])

    static = (" ".join(procs.nginx_cmd(nginx, tmp, procs.write_static_conf(tmp, nginx, ports["static"],
                                                                           CHAT_BODY.decode())))
              if nginx else " ".join(procs.server_cmd("--serve-upstream", "--port", str(ports["static"]))))
    cmds = {
        "static": static,
        "fake": fake("fake", "--tokens", "1"),
        "paced": fake("paced", "--tokens", str(plan.sse_tokens), "--token-rate", f"{plan.sse_rate:g}"),
        "burst": fake("burst", "--tokens", str(plan.burst_tokens)),
        "hold": fake("hold", "--tokens", "100000", "--token-rate", f"{HOLD_RATE:g}"),
        **{m: fake(m, "--tokens", "1", "--startup-delay", f"{plan.swap_delay:g}") for m in SWAP_MODELS},
    }
    doc: dict[str, Any] = {
        "healthCheckTimeout": 60,
        "logToStdout": "none",
        "stateDir": str(tmp / "state"),
        "hooks": {"on_startup": {"preload": [*ALWAYS_ON, SWAP_MODELS[0]]}},
        "groups": {
            "bench": {"swap": False, "exclusive": False, "persistent": True, "members": list(ALWAYS_ON)},
            "swap": {"swap": True, "exclusive": False, "members": list(SWAP_MODELS)},
        },
        # concurrencyLimit defaults to 10: 256 connections and 1,000 streams would get 429s.
        "models": {m: {"cmd": cmd, "proxy": f"http://127.0.0.1:{ports[m]}", "concurrencyLimit": 5000, "ttl": 0}
                   for m, cmd in cmds.items()},
    }
    path = tmp / "swapproxy.yaml"
    path.write_text(json.dumps(doc, indent=2))  # JSON is YAML
    return path


@dataclass
class Env:
    plan: Plan
    report: PerfReport
    ports: dict[str, int]  # direct ports of the upstreams
    proxy_port: int  # swapproxy
    nginx_port: int | None
    proxy_pid: int
    nginx_pids: list[int]
    upstream_pids: dict[str, int]
    cols: tuple[str, ...]  # the columns that run (no nginx when it is missing)
    rss_peak: dict[str, float] = field(default_factory=dict)  # swapproxy RSS (MB) by situation
    cpu_per_1000: dict[str, float] = field(default_factory=dict)  # proxy CPU seconds per 1,000 requests

    def port(self, col: str) -> int:
        if col == "direct":
            raise ValueError("direct has a port per model")
        return self.proxy_port if col == "swapproxy" else self.nginx_port  # type: ignore[return-value]

    def addr(self, col: str, model: str) -> int:
        return self.ports[model] if col == "direct" else self.port(col)

    @staticmethod
    def path(col: str, model: str, path: str) -> str:
        return f"/m/{model}{path}" if col == "nginx" else path

    def full_url(self, col: str, model: str, path: str) -> str:
        return f"http://127.0.0.1:{self.addr(col, model)}{self.path(col, model, path)}"

    def chat(self, col: str, model: str, **extra: Any) -> bytes:
        """The raw bytes of a chat request to ``model`` through ``col``."""
        return http_request("POST", self.path(col, model, "/v1/chat/completions"), self.addr(col, model),
                            chat_body(model, **extra))

    def proxy_rss(self) -> float:
        return rss_mb([self.proxy_pid])

    def note_rss(self, situation: str) -> None:
        self.rss_peak[situation] = max(self.rss_peak.get(situation, 0.0), self.proxy_rss())

    def meter(self, model: str) -> Meter:
        groups = {"swapproxy": [self.proxy_pid], "upstream": [p.pid for p in tree(self.upstream_pids[model])]}
        if self.nginx_pids:
            groups["nginx"] = self.nginx_pids
        return Meter(groups)


def rotated(cols: Sequence[str], r: int) -> list[str]:
    k = r % len(cols)
    return [*cols[k:], *cols[:k]]


@asynccontextmanager
async def open_pools(env: Env, model: str, conns: int) -> AsyncIterator[dict[str, Pool]]:
    """A pool of ``conns`` connections per column, to ``model``."""
    async with AsyncExitStack() as stack:
        yield {c: await stack.enter_async_context(Pool(env.addr(c, model), conns)) for c in env.cols}


async def rss_sampler(env: Env, situation: str, every: float = 0.25) -> None:
    while True:
        env.note_rss(situation)
        await asyncio.sleep(every)
