"""Prometheus metrics: counters fed by handlers, levels read at scrape time, all cheap to scrape.

Each application owns a :class:`Metrics` (never a process-wide registry), so tests can run
many apps in one process. What changes with every request or state change is counted as it
happens, in :mod:`swapproxy.exposition`'s counters and histograms, which keep their text
between scrapes; what is a *level* (state, in-flight, queue, memory) is read from the
scheduler's :class:`~swapproxy.status.ModelStatus` when ``/metrics`` is scraped, so it can
never drift from the truth. The fleet's view of this host (for an endpoint picker: load,
which models are loaded, how many more fit) and the peers' health are in :mod:`swapproxy.fleet`.

A scrape stays under 2 ms of CPU with ten models, since an endpoint picker scrapes every
50 ms: the process-table walk behind ``swapproxy_upstream_rss_bytes`` (~5 ms) is redone in a
worker thread every :data:`RSS_TTL` seconds, on the scrape itself only when a model's process
changed (a start or a stop), and unchanged counters are not rewritten.

Label sets are bounded: ``model`` only ever holds a configured model id, a peer's model as
``peer/model``, or ``""`` when a request named none; ``route`` is the matched route's
canonical path from the router (a fixed set), never the raw URL.

Token counts come from the ``usage`` / ``timings`` objects upstreams put at the end of a
response (:mod:`swapproxy.tokens`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import psutil

from .config import Config
from .exposition import CONTENT_TYPE, Counter, Histogram, counter, gauge, label_text
from .fleet import FleetView
from .memory import MemoryModel
from .peers import PeerMonitor
from .processes import ProcessLike
from .scheduler import Scheduler
from .slotcache import SlotCache
from .telemetry import Telemetry
from .states import ProcessState
from .status import ModelStatus, all_statuses
from .tokens import TailCounts, TokenTap, usage_from_tail

__all__ = ["Metrics", "TailCounts", "TokenTap", "usage_from_tail", "tree_rss", "CONTENT_TYPE", "RSS_TTL"]

logger = logging.getLogger(__name__)

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
_START_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60, 120, 300)
#: Seconds a reading of the models' resident memory serves scrapes (while their processes stay the same).
RSS_TTL = 2.0
_STATES = tuple(ProcessState)


def tree_rss(pids: Iterable[int | None]) -> dict[int, int]:
    """Resident memory of each pid and all its descendants, in bytes; gone pids are left out.

    One pass over the process table serves every pid: finding descendants means
    reading every process's parent (~1 ms per pass here, more on a busy host), so
    a pass per model would stall the event loop N times over.
    """
    roots = {pid for pid in pids if pid is not None}
    if not roots:
        return {}
    children: dict[int, list[int]] = {}
    for proc in psutil.process_iter(["ppid"]):
        ppid = proc.info["ppid"]
        if ppid is not None:
            children.setdefault(ppid, []).append(proc.pid)
    sizes: dict[int, int] = {}
    for root in roots:
        total, stack, seen = 0, [root], set()
        while stack:
            pid = stack.pop()
            if pid in seen:
                continue
            seen.add(pid)
            try:
                total += psutil.Process(pid).memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                if pid == root:
                    break  # the root itself is gone: no figure at all
                # a child that exited since the listing, or one we may not read: its own
                # children (a server under an unreadable wrapper) still count
            stack.extend(children.get(pid, ()))
        else:
            sizes[root] = total
    return sizes


class _RssCache:
    """:func:`tree_rss` of the models' processes for the scrapes: walked again at once when the
    processes changed (a start or a stop), else at most every RSS_TTL seconds, in a worker thread,
    the scrapes meanwhile reading the last figures (so a scrape never waits on a walk it can skip)."""

    def __init__(self) -> None:
        self._pids: frozenset[int] = frozenset()
        self._sizes: dict[int, int] = {}
        self._at = float("-inf")
        self._walking: asyncio.Future[dict[int, int]] | None = None
        self.walks = 0  # process-table walks done (tests check that scrapes reuse them)

    def sizes(self, pids: Iterable[int | None]) -> dict[int, int]:
        wanted = frozenset(pid for pid in pids if pid is not None)
        now = time.monotonic()
        if wanted != self._pids:
            self._store(wanted, tree_rss(wanted))
        elif now - self._at > RSS_TTL and self._walking is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop (a test, a script): walk here
                self._store(wanted, tree_rss(wanted))
            else:
                self._at = now  # one walk at a time
                self._walking = loop.run_in_executor(None, tree_rss, wanted)
                self._walking.add_done_callback(lambda done: self._walked(wanted, done))
        return self._sizes

    def _store(self, pids: frozenset[int], sizes: dict[int, int]) -> None:
        self._pids, self._sizes, self._at = pids, sizes, time.monotonic()
        self.walks += 1

    def _walked(self, pids: frozenset[int], done: asyncio.Future[dict[int, int]]) -> None:
        self._walking = None
        if not done.cancelled() and done.exception() is None and pids == self._pids:
            self._store(pids, done.result())


class Metrics:
    """The app's metrics: request/swap/token counters, live gauges, the fleet's view of this host."""

    def __init__(self, config: Config) -> None:
        self.models = frozenset(config.models)
        self.scheduler: Scheduler | None = None
        self.memory: MemoryModel | None = None
        self.peers: PeerMonitor | None = None
        self.slot_cache: SlotCache | None = None
        self.telemetry: Telemetry | None = None
        self.requests = Counter("swapproxy_requests", "HTTP requests answered", ["model", "route", "status"])
        self.duration = Histogram("swapproxy_request_duration_seconds", "Request duration, to the last byte",
                                  ["model", "route"], _LATENCY_BUCKETS)
        self.ttfb = Histogram("swapproxy_time_to_first_byte_seconds",
                              "From request arrival to the first upstream body byte sent (includes any swap)",
                              ["model", "route"], _LATENCY_BUCKETS)
        self.swaps = Counter("swapproxy_swaps", "Times a model was started (swapped in)", ["model"])
        self.start_seconds = Histogram("swapproxy_model_start_seconds", "Model start time, spawn to ready",
                                       ["model"], _START_BUCKETS)
        self.start_failures = Counter("swapproxy_model_start_failures", "Model starts that failed", ["model"])
        self.tokens = Counter("swapproxy_tokens", "Tokens reported by upstream usage/timings", ["model", "kind"])
        self.cuts = Counter("swapproxy_responses_cut", "Response bodies broken off mid-way, by cause: "
                            "upstream (it broke off: crash, forced unload), idle (timeouts.responseIdle), "
                            "client (writing to it failed)", ["model", "reason"])
        self._fed = (self.requests, self.duration, self.ttfb, self.swaps, self.start_seconds, self.start_failures,
                     self.tokens, self.cuts)
        # The per-request feeds keep their labelled children: a lookup by label values costs more
        # than the inc/observe it precedes. The label sets are bounded (see the module docstring),
        # and so are these.
        self._request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._ttfb_children: dict[tuple[str, str], Any] = {}
        self._token_children: dict[tuple[str, str], Any] = {}
        self.rss = _RssCache()
        self.fleet = FleetView()
        self.sources: list[Callable[[], str]] = []  # more families, in exposition text (the request history's)

    def bind(self, scheduler: Scheduler | None, memory: MemoryModel | None = None,
             peers: PeerMonitor | None = None, slot_cache: SlotCache | None = None,
             telemetry: Telemetry | None = None) -> None:
        """Read live levels from ``scheduler``, ``memory``, ``peers``, ``slot_cache`` and ``telemetry``
        (None once they are gone)."""
        self.scheduler = scheduler
        self.memory = memory
        self.peers = peers
        self.slot_cache = slot_cache
        self.telemetry = telemetry

    def model_label(self, model: str | None) -> str:
        """``model`` if it is a configured id, or a peer's model as ``peer/model`` (after reloads
        too), else ""."""
        if model is None:
            return ""
        if self.scheduler is None:
            return model if model in self.models else ""
        if model in self.scheduler.slots:
            return model
        route = self.scheduler.config.peer_route(model)
        return model if route is not None and route.fqn == model else ""

    # -- feeds ------------------------------------------------------------------------
    def on_state_change(self, proc: ProcessLike, old: ProcessState, new: ProcessState) -> None:
        model = self.model_label(proc.name)
        if new is ProcessState.STARTING:
            self.swaps.labels(model).inc()
        elif new is ProcessState.READY and proc.spawned_at is not None and proc.ready_at is not None:
            self.start_seconds.labels(model).observe(max(proc.ready_at - proc.spawned_at, 0.0))
        elif new is ProcessState.FAILED and old is ProcessState.STARTING:
            self.start_failures.labels(model).inc()

    def observe_request(self, model: str | None, route: str, status: int, seconds: float) -> None:
        label = self.model_label(model)
        key = (label, route, status)
        children = self._request_children.get(key)
        if children is None:
            children = self._request_children[key] = (
                self.requests.labels(label, route, str(status)), self.duration.labels(label, route))
        children[0].inc()
        children[1].observe(seconds)

    def observe_response(self, model: str, route: str, tap: TokenTap, started: float,
                         counts: TailCounts | None) -> None:
        """After a relayed response: time to first byte, and its tokens (:func:`~swapproxy.tokens.tail_counts`)."""
        label = self.model_label(model)
        if tap.first_at is not None:
            ttfb = self._ttfb_children.get((label, route))
            if ttfb is None:
                ttfb = self._ttfb_children[(label, route)] = self.ttfb.labels(label, route)
            ttfb.observe(max(tap.first_at - started, 0.0))
        if counts is None or counts.tokens is None:
            return
        prompt, completion = counts.tokens
        if prompt > 0:
            self._token_child(label, "prompt").inc(prompt)
        if completion > 0:
            self._token_child(label, "completion").inc(completion)

    def count_cut(self, model: str, reason: str) -> None:
        """A response body was broken off (rare: no cached children)."""
        self.cuts.labels(self.model_label(model), reason).inc()

    def _token_child(self, label: str, kind: str) -> Any:
        child = self._token_children.get((label, kind))
        if child is None:  # made on first use: a kind never counted shows no series at all
            child = self._token_children[(label, kind)] = self.tokens.labels(label, kind)
        return child

    # -- the scrape ---------------------------------------------------------------------
    def render(self) -> bytes:
        parts = [family.render() for family in self._fed]
        scheduler = self.scheduler
        if scheduler is not None:
            statuses = all_statuses(scheduler)
            parts.append(self._levels(scheduler, statuses))
            if self.memory is not None:
                parts.append(self._memory(scheduler, self.memory))
            if self.slot_cache is not None:
                parts.append(self._slot_cache(self.slot_cache))
            if self.telemetry is not None and self.telemetry.gpus:  # no GPU: no GPU series at all
                parts.append(self._gpus(self.telemetry))
            parts.append(self.fleet.text(scheduler, statuses, self.memory, self.peers))
        parts.extend(source() for source in self.sources)
        return "".join(parts).encode()

    def _levels(self, scheduler: Scheduler, statuses: list[ModelStatus]) -> str:
        sizes = self.rss.sizes(status.pid for status in statuses)
        state, inflight, waiting, rss = [], [], [], []
        for status in statuses:
            mid = status.model
            for value in _STATES:
                state.append((label_text(("model", "state"), (mid, value.value)), 1.0 if value is status.state else 0.0))
            one = label_text(("model",), (mid,))
            inflight.append((one, status.inflight))
            waiting.append((one, status.waiting))
            if status.pid is not None and status.pid in sizes:
                rss.append((one, sizes[status.pid]))
        return "".join((
            gauge("swapproxy_model_state", "1 for the state each model is in, 0 for the others", state),
            gauge("swapproxy_inflight_requests", "Requests in flight per model", inflight),
            gauge("swapproxy_waiting_requests", "Requests queued for a model to become ready", waiting),
            gauge("swapproxy_queue_depth", "Requests waiting for a model, all models", [("", scheduler.queue_depth())]),
            gauge("swapproxy_upstream_rss_bytes", "Resident memory of the model's process tree", rss)))

    @staticmethod
    def _memory(scheduler: Scheduler, memory: MemoryModel) -> str:
        footprints = []
        for mid, slot in scheduler.slots.items():
            sizes, source = memory.footprint(slot.process.spec)
            footprints.extend((label_text(("model", "device", "source"), (mid, device, source)), size)
                              for device, size in (sizes or {}).items())
        budgets = [(label_text(("device",), (device,)), size) for device, size in memory.budgets().items()]
        return (gauge("swapproxy_model_memory_bytes", "Each model's memory footprint per device "
                      "(source: declared, learned, estimated)", footprints)
                + gauge("swapproxy_device_memory_budget_bytes", "Memory models may use per device", budgets))

    @staticmethod
    def _gpus(telemetry: Telemetry) -> str:
        total, used, util, temp, power = [], [], [], [], []
        for gpu in telemetry.gpus:
            key = label_text(("gpu", "name"), (gpu.device, gpu.name))
            total.append((key, gpu.total))
            used.append((key, gpu.used))
            for samples, value, scale in ((util, gpu.utilization, 0.01), (temp, gpu.temperature, 1.0),
                                          (power, gpu.power, 1.0)):
                if value is not None:
                    samples.append((key, value * scale))
        per_model = [(label_text(("model", "gpu"), (model, device)), size)
                     for model, devices in sorted(telemetry.usage.items())
                     for device, size in sorted(devices.items()) if device != "host"]
        return "".join((
            gauge("swapproxy_gpu_memory_total_bytes", "GPU memory, total", total),
            gauge("swapproxy_gpu_memory_used_bytes", "GPU memory in use (all processes)", used),
            gauge("swapproxy_gpu_utilization_ratio", "Share of the last sample period a kernel ran on the GPU (0..1)",
                  util),
            gauge("swapproxy_gpu_temperature_celsius", "GPU temperature", temp),
            gauge("swapproxy_gpu_power_watts", "GPU power draw", power),
            gauge("swapproxy_model_gpu_memory_bytes", "GPU memory the model's processes hold (NVML, per process), "
                  "at the last sample", per_model)))

    @staticmethod
    def _slot_cache(cache: SlotCache) -> str:
        actions = [(label_text(("model", "action", "result"), key), count) for key, count in sorted(cache.counts.items())]
        sizes = [(label_text(("model",), (model,)), used) for model, used in cache.usage().items()]
        return (counter("swapproxy_slot_cache", "Slot cache actions by result: save (ok, failed, timeout), restore "
                        "(ok, failed, discarded: the command changed, dropped: over the budget), reuse (hit, miss: the "
                        "first answer after a restore had cached tokens or not)", actions)
                + gauge("swapproxy_slot_cache_bytes", "Bytes of saved slot files per model", sizes))
