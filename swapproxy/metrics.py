"""Prometheus metrics: one registry per app, counters fed by handlers, gauges read at scrape time.

Each application owns a :class:`Metrics` with its own
``prometheus_client.CollectorRegistry`` (never the global default), so tests
can run many apps in one process. What changes with every request or state
change is counted as it happens; what is a *level* (state, in-flight, queue,
RSS) is read from the scheduler's :class:`~swapproxy.status.ModelStatus`
when ``/metrics`` is scraped, so it can never drift from the truth.

Label sets are bounded: ``model`` only ever holds a configured model id (or
``""`` when a request named none); ``route`` is the matched route's canonical
path from the router (a fixed set), never the raw URL.

Token counts come from the ``usage`` / ``timings`` objects upstreams put at the
end of a response. :class:`TokenTap` keeps only the last few KiB of the bytes
relayed (amortised O(1) per chunk, no parsing on the hot path); the tail is
parsed once, after the last byte went to the client.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterable, Iterator
from typing import Any

import psutil
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .config import Config
from .memory import MemoryModel
from .slotcache import SlotCache
from .telemetry import Telemetry
from .processes import ProcessLike
from .scheduler import Scheduler
from .states import ProcessState
from .status import all_statuses

__all__ = ["Metrics", "TokenTap", "usage_from_tail", "timings_from_tail", "tree_rss", "CONTENT_TYPE"]

logger = logging.getLogger(__name__)

#: The Prometheus text exposition format's content type.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
_START_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60, 120, 300)


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


# -- token counting -----------------------------------------------------------------------
class TokenTap:
    """``on_chunk`` callback for :func:`swapproxy.web.proxy.forward`: keeps the response's tail.

    Also notes when the first body byte went out (time to first byte).
    """

    __slots__ = ("limit", "tail", "total", "first_at")

    def __init__(self, limit: int = 8192) -> None:
        self.limit = limit
        self.tail = bytearray()
        self.total = 0
        self.first_at: float | None = None

    def __call__(self, chunk: bytes) -> None:
        if self.first_at is None:
            self.first_at = time.perf_counter()
        self.total += len(chunk)
        tail = self.tail
        tail += chunk
        if len(tail) > 2 * self.limit:  # trim rarely: amortised O(1) per byte
            del tail[: -self.limit]

    @property
    def complete(self) -> bool:
        """True when the tail holds the whole body."""
        return self.total == len(self.tail)


def _counts(obj: Any) -> tuple[tuple[int, int] | None, tuple[int, int] | None]:
    """(usage counts, timings counts) found in one decoded JSON object."""
    if not isinstance(obj, dict):
        return None, None
    usage = obj.get("usage")
    if not isinstance(usage, dict) and isinstance(obj.get("response"), dict):
        usage = obj["response"].get("usage")  # Responses API: response.completed event
    from_usage = None
    if isinstance(usage, dict):
        prompt = usage.get("prompt_tokens", usage.get("input_tokens"))
        completion = usage.get("completion_tokens", usage.get("output_tokens", 0))
        if isinstance(prompt, int) and isinstance(completion, int):
            from_usage = (prompt, completion)
    timings = obj.get("timings")
    from_timings = None
    if isinstance(timings, dict):
        prompt, predicted = timings.get("prompt_n"), timings.get("predicted_n")
        if isinstance(prompt, int) and isinstance(predicted, int):
            from_timings = (prompt, predicted)
    return from_usage, from_timings


_EVENT_SPLIT = re.compile(rb"\r?\n\r?\n")
_DECODER = json.JSONDecoder()


def _may_count(data: bytes | bytearray) -> bool:
    """Whether JSON text can hold a ``usage`` or ``timings`` key (a \\u escape could spell one)."""
    return b"usage" in data or b"timings" in data or b"\\u" in data


def _events_newest_first(text: bytes) -> Iterator[bytes]:
    """``text`` split into SSE events (blank-line separated), the last one first.

    Without a \\r in the text this walks back from the end and stops when the caller
    does, instead of splitting all of it (the regex took ~170 µs on a 10 KiB tail). In a
    run of three or more newlines the odd one may land on the other side of a split than
    in a left-to-right split; either way it only adds an empty line to an event.
    """
    if b"\r" in text:
        yield from reversed(_EVENT_SPLIT.split(text))
        return
    end = len(text)
    while (i := text.rfind(b"\n\n", 0, end)) >= 0:
        yield text[i + 2 : end]
        end = i
    yield text[:end]


def _sse_objects(tail: bytes | bytearray, max_events: int = 8) -> Iterator[Any]:
    """The JSON payloads of the last ``max_events`` complete-looking SSE events, newest first.

    Only events whose text could hold token counts are decoded (and yielded): a stream's
    end is mostly plain token deltas. This runs once per stream, but when many streams end
    together each one's cost holds back the others' last events.
    """
    seen = 0
    for raw in _events_newest_first(bytes(tail)):
        if seen >= max_events:
            return
        data = b"\n".join(line[5:].strip() for line in raw.splitlines() if line.startswith(b"data:"))
        if not data or data == b"[DONE]":
            continue
        seen += 1
        if not _may_count(data):
            continue
        try:
            yield json.loads(data)
        except ValueError:
            continue  # the first event of the tail is usually cut


def _find_object(tail: str, key: str) -> Any:
    """Decode the JSON value after the last ``"key":`` in a cut JSON text (None if none)."""
    at = tail.rfind(f'"{key}"')
    if at < 0:
        return None
    colon = tail.find(":", at)
    if colon < 0:
        return None
    start = colon + 1
    while start < len(tail) and tail[start] in " \t\r\n":
        start += 1
    try:
        value, _ = _DECODER.raw_decode(tail, start)
    except ValueError:
        return None
    return {key: value}


def usage_from_tail(tail: bytes | bytearray, *, sse: bool, complete: bool) -> tuple[int, int] | None:
    """(prompt tokens, completion tokens) from the end of a response, or None.

    ``usage`` wins over llama.cpp's ``timings`` (which leaves out cached prompt tokens).
    """
    fallback: tuple[int, int] | None = None
    if sse:
        for obj in _sse_objects(tail):
            usage, timings = _counts(obj)
            if usage is not None:
                return usage
            fallback = fallback or timings
        return fallback
    if complete:
        if not _may_count(tail):
            return None  # nothing to count: spare decoding the whole body
        try:
            usage, timings = _counts(json.loads(tail))
        except ValueError:
            return None
        return usage or timings
    text = bytes(tail).decode("utf-8", errors="replace")
    usage, _ = _counts(_find_object(text, "usage"))
    if usage is not None:
        return usage
    _, timings = _counts(_find_object(text, "timings"))
    return timings


def timings_from_tail(tail: bytes | bytearray, *, sse: bool) -> dict[str, Any] | None:
    """llama-server's ``timings`` object at the end of a response (None if it has none)."""
    if sse:
        for obj in _sse_objects(tail):
            if isinstance(obj, dict) and isinstance(obj.get("timings"), dict):
                return obj["timings"]
        return None
    found = _find_object(bytes(tail).decode("utf-8", errors="replace"), "timings")
    return found["timings"] if found is not None and isinstance(found["timings"], dict) else None


# -- the registry -------------------------------------------------------------------------------
class _LiveCollector(Collector):
    """Levels read from the scheduler at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        scheduler = self._metrics.scheduler
        if scheduler is None:
            return []
        state = GaugeMetricFamily("swapproxy_model_state", "1 for the state each model is in, 0 for the others",
                                  labels=["model", "state"])
        inflight = GaugeMetricFamily("swapproxy_inflight_requests", "Requests in flight per model", labels=["model"])
        waiting = GaugeMetricFamily("swapproxy_waiting_requests", "Requests queued for a model to become ready",
                                    labels=["model"])
        rss = GaugeMetricFamily("swapproxy_upstream_rss_bytes", "Resident memory of the model's process tree",
                                labels=["model"])
        statuses = all_statuses(scheduler)
        sizes = tree_rss(status.pid for status in statuses)
        for status in statuses:
            mid = status.model
            for value in ProcessState:
                state.add_metric([mid, value.value], 1.0 if value is status.state else 0.0)
            inflight.add_metric([mid], status.inflight)
            waiting.add_metric([mid], status.waiting)
            if status.pid is not None and status.pid in sizes:
                rss.add_metric([mid], sizes[status.pid])
        depth = GaugeMetricFamily("swapproxy_queue_depth", "Requests waiting for a model, all models")
        depth.add_metric([], scheduler.queue_depth())
        return [state, inflight, waiting, depth, rss, *self._memory(scheduler), *self._slot_cache(), *self._gpus()]

    def _gpus(self) -> list[Metric]:
        telemetry = self._metrics.telemetry
        if telemetry is None or not telemetry.gpus:
            return []  # no GPU (or no NVML): no GPU series at all
        labels = ["gpu", "name"]
        total = GaugeMetricFamily("swapproxy_gpu_memory_total_bytes", "GPU memory, total", labels=labels)
        used = GaugeMetricFamily("swapproxy_gpu_memory_used_bytes", "GPU memory in use (all processes)", labels=labels)
        util = GaugeMetricFamily("swapproxy_gpu_utilization_ratio", "Share of the last sample period a kernel ran "
                                 "on the GPU (0..1)", labels=labels)
        temp = GaugeMetricFamily("swapproxy_gpu_temperature_celsius", "GPU temperature", labels=labels)
        power = GaugeMetricFamily("swapproxy_gpu_power_watts", "GPU power draw", labels=labels)
        for gpu in telemetry.gpus:
            key = [gpu.device, gpu.name]
            total.add_metric(key, gpu.total)
            used.add_metric(key, gpu.used)
            for family, value, scale in ((util, gpu.utilization, 0.01), (temp, gpu.temperature, 1.0),
                                         (power, gpu.power, 1.0)):
                if value is not None:
                    family.add_metric(key, value * scale)
        per_model = GaugeMetricFamily("swapproxy_model_gpu_memory_bytes", "GPU memory the model's processes hold "
                                      "(NVML, per process), at the last sample", labels=["model", "gpu"])
        for model, devices in sorted(telemetry.usage.items()):
            for device, size in sorted(devices.items()):
                if device != "host":
                    per_model.add_metric([model, device], size)
        return [total, used, util, temp, power, per_model]

    def _slot_cache(self) -> list[Metric]:
        cache = self._metrics.slot_cache
        if cache is None:
            return []
        actions = CounterMetricFamily("swapproxy_slot_cache", "Slot cache actions by result: save (ok, failed, "
                                      "timeout), restore (ok, failed, discarded: the command changed, dropped: over the budget), reuse (hit, miss: the first "
                                      "answer after a restore had cached tokens or not)",
                                      labels=["model", "action", "result"])
        for (model, action, result), count in sorted(cache.counts.items()):
            actions.add_metric([model, action, result], count)
        size = GaugeMetricFamily("swapproxy_slot_cache_bytes", "Bytes of saved slot files per model", labels=["model"])
        for model, used in cache.usage().items():
            size.add_metric([model], used)
        return [actions, size]

    def _memory(self, scheduler: Scheduler) -> list[Metric]:
        memory = self._metrics.memory
        if memory is None:
            return []
        footprint = GaugeMetricFamily("swapproxy_model_memory_bytes", "Each model's memory footprint per device "
                                      "(source: declared, learned, estimated)", labels=["model", "device", "source"])
        for mid, slot in scheduler.slots.items():
            sizes, source = memory.footprint(slot.process.spec)
            for device, size in (sizes or {}).items():
                footprint.add_metric([mid, device, source], size)
        budget = GaugeMetricFamily("swapproxy_device_memory_budget_bytes", "Memory models may use per device",
                                   labels=["device"])
        for device, size in memory.budgets().items():
            budget.add_metric([device], size)
        return [footprint, budget]


class Metrics:
    """The app's metrics: a private registry, request/swap/token counters, live gauges."""

    def __init__(self, config: Config) -> None:
        self.models = frozenset(config.models)
        self.scheduler: Scheduler | None = None
        self.memory: MemoryModel | None = None
        self.slot_cache: SlotCache | None = None
        self.telemetry: Telemetry | None = None
        self.registry = CollectorRegistry()
        reg = self.registry
        self.requests = Counter("swapproxy_requests", "HTTP requests answered", ["model", "route", "status"],
                                registry=reg)
        self.duration = Histogram("swapproxy_request_duration_seconds", "Request duration, to the last byte",
                                  ["model", "route"], buckets=_LATENCY_BUCKETS, registry=reg)
        self.ttfb = Histogram("swapproxy_time_to_first_byte_seconds",
                              "From request arrival to the first upstream body byte sent (includes any swap)",
                              ["model", "route"], buckets=_LATENCY_BUCKETS, registry=reg)
        self.swaps = Counter("swapproxy_swaps", "Times a model was started (swapped in)", ["model"], registry=reg)
        self.start_seconds = Histogram("swapproxy_model_start_seconds", "Model start time, spawn to ready",
                                       ["model"], buckets=_START_BUCKETS, registry=reg)
        self.start_failures = Counter("swapproxy_model_start_failures", "Model starts that failed", ["model"],
                                      registry=reg)
        self.tokens = Counter("swapproxy_tokens", "Tokens reported by upstream usage/timings",
                              ["model", "kind"], registry=reg)
        self.cuts = Counter("swapproxy_responses_cut", "Response bodies broken off mid-way, by cause: "
                            "upstream (it broke off: crash, forced unload), idle (timeouts.responseIdle), "
                            "client (writing to it failed)", ["model", "reason"], registry=reg)
        reg.register(_LiveCollector(self))
        # The per-request feeds keep their labelled children: ``labels()`` (label checks, a
        # lock, a lookup) costs more than the inc/observe it precedes. The label sets are
        # bounded (see the module docstring), and so are these.
        self._request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._ttfb_children: dict[tuple[str, str], Any] = {}
        self._token_children: dict[tuple[str, str], Any] = {}

    def bind(self, scheduler: Scheduler | None, memory: MemoryModel | None = None,
             slot_cache: SlotCache | None = None, telemetry: Telemetry | None = None) -> None:
        """Read live levels from ``scheduler``, ``memory``, ``slot_cache`` and ``telemetry`` (None once
        they are gone)."""
        self.scheduler = scheduler
        self.memory = memory
        self.slot_cache = slot_cache
        self.telemetry = telemetry

    def model_label(self, model: str | None) -> str:
        """``model`` if it is a configured id (after reloads too), else ""."""
        if model is None:
            return ""
        known = self.scheduler.slots if self.scheduler is not None else self.models
        return model if model in known else ""

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

    def observe_response(self, model: str, route: str, tap: TokenTap, started: float, sse: bool) -> None:
        """After a relayed response: time to first byte, and tokens from its tail."""
        label = self.model_label(model)
        if tap.first_at is not None:
            ttfb = self._ttfb_children.get((label, route))
            if ttfb is None:
                ttfb = self._ttfb_children[(label, route)] = self.ttfb.labels(label, route)
            ttfb.observe(max(tap.first_at - started, 0.0))
        if not tap.total:
            return
        counts = usage_from_tail(tap.tail, sse=sse, complete=tap.complete)
        if counts is None:
            return
        prompt, completion = counts
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

    def render(self) -> bytes:
        return generate_latest(self.registry)
