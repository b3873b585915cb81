"""Streaming routes: logs, live events for UIs, and llama.cpp router mode's model events.

* ``GET /logs`` — recent lines; ``GET /logs/stream[/proxy|/upstream|/{model}]`` —
  live plain text, buffered history first unless ``?no-history``;
* ``GET /api/events`` — server-sent events: a snapshot (every model, recent log
  lines), then each event of the app's :class:`~swapproxy.events.EventBus`;
* ``GET /models/sse`` — the same state changes in llama-server router mode's
  ``model_status`` shape, and a starting model's progress as its ``status_change`` events.

Each stream subscribes before it sends anything, so nothing published after its
first byte is missed, and ends when the app shuts down (``Runtime.closing``) instead of
holding the shutdown up. What a stream holds is bounded: its history by the buffers'
sizes (and a snapshot's log tails by :data:`SNAPSHOT_LOG_BYTES` in all), its queue in
items and characters; and a client that takes nothing for :data:`WRITE_STALL` seconds
is dropped rather than buffered for.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any, TypeVar

from aiohttp import web

from .. import __version__
from ..errors import BadRequest
from ..logs import LogBuffer
from ..metrics import tree_rss
from ..progress import router_progress
from ..states import ProcessState
from ..status import all_statuses
from . import sse
from .openapi import api
from .proxy import drop_client
from .runtime import Kind, RouteTag, Tier, register, runtime

__all__ = ["add_routes"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
#: llama.cpp router-mode ``status.value`` for each of our states (others send no event).
_ROUTER_STATUS = {
    ProcessState.STARTING.value: "loading",
    ProcessState.READY.value: "loaded",
    ProcessState.STOPPING.value: "unloading",
    ProcessState.STOPPED.value: "unloaded",
    ProcessState.FAILED.value: "unloaded",
}
_HEARTBEAT_S = 15.0
#: Seconds a stream's write may wait on a client that reads nothing before the client is dropped.
WRITE_STALL = 30.0
#: Characters of log lines one /api/events snapshot carries, all sources together.
SNAPSHOT_LOG_BYTES = 1 << 20


async def _until_closed(
    queue: asyncio.Queue[T], closing: asyncio.Event, heartbeat: float | None
) -> AsyncGenerator[T | None, None]:
    """Items from ``queue`` as they come; None after ``heartbeat`` s of silence; ends at shutdown."""
    closed = asyncio.ensure_future(closing.wait())
    getter: asyncio.Future[T] | None = None
    try:
        while not closing.is_set():
            if not queue.empty():
                yield queue.get_nowait()
                continue
            getter = asyncio.ensure_future(queue.get())
            done, _ = await asyncio.wait({getter, closed}, timeout=heartbeat, return_when=asyncio.FIRST_COMPLETED)
            if getter in done:
                yield getter.result()
                continue
            getter.cancel()
            if closed in done:
                return
            yield None
    finally:
        closed.cancel()
        if getter is not None:
            getter.cancel()


async def _send(request: web.Request, resp: web.StreamResponse, data: bytes) -> bool:
    """Write ``data``; False when the client took nothing for WRITE_STALL s and was dropped (or is gone)."""
    try:
        async with asyncio.timeout(WRITE_STALL):
            await resp.write(data)
    except TimeoutError:
        logger.info("%s: dropping a client that stopped reading", request.path)
        drop_client(request)
        return False
    except ConnectionError:
        return False
    return True


async def _open_stream(request: web.Request, headers: dict[str, str]) -> web.StreamResponse:
    resp = web.StreamResponse(headers=headers)
    await resp.prepare(request)
    return resp


def _log_source(request: web.Request, source: str) -> LogBuffer:
    rt = runtime(request)
    if source == "proxy":
        return rt.proxy_log
    if source == "upstream":
        return rt.upstream_log
    model_id = rt.config.resolve(source)
    if model_id is None:
        raise BadRequest(f"unknown log source '{source}': use proxy, upstream or a model id", param="source")
    return rt.scheduler.slot(model_id).process.log


@api(tag="logs", content_type="text/plain")
async def logs(request: web.Request) -> web.Response:
    """Recent log lines, swapproxy's and every model's (models' lines start with [model])."""
    text = "".join(line + "\n" for line in runtime(request).all_log.tail())
    return web.Response(text=text, content_type="text/plain")


@api(tag="logs", query=[("no-history", "present: live lines only, no buffered history first")],
     content_type="text/plain")
async def logs_stream(request: web.Request) -> web.StreamResponse:
    """Live log lines as plain text: history first unless ?no-history.

    /logs/stream: everything; /logs/stream/proxy: swapproxy's own; /logs/stream/upstream:
    every model's output; /logs/stream/{model}: one model's output (unknown id: 400).
    """
    source = request.match_info.get("source")
    buffer = runtime(request).all_log if source is None else _log_source(request, source)
    with buffer.subscribe() as queue:
        history = [] if "no-history" in request.query else buffer.tail()
        resp = await _open_stream(request, {"Content-Type": "text/plain; charset=utf-8", "Cache-Control": "no-cache",
                                            "X-Accel-Buffering": "no"})
        if history and not await _send(request, resp, "".join(line + "\n" for line in history).encode()):
            return resp
        live = _until_closed(queue, runtime(request).closing, None)
        async with aclosing(live) as lines:
            async for line in lines:
                if line is not None and not await _send(request, resp, line.encode() + b"\n"):
                    break
    return resp


@api(tag="events", query=[("logs", "lines of history per log source in the first snapshot (default 200)")],
     content_type="text/event-stream")
async def api_events(request: web.Request) -> web.StreamResponse:
    """Server-sent events for UIs: a snapshot first, then state changes, log lines, in-flight counts.

    Every event is one `data:` JSON object whose "type" is snapshot, state, log, inflight, swap,
    request (a request in flight starts or ends), profile (the active profile changed),
    unloading (a router-mode unload was asked for; it may drain first) or activity (a request
    was written to the history: {"id": N}, see /api/metrics/activity).
    """
    rt = runtime(request)
    try:
        n_lines = max(0, min(int(request.query.get("logs", "200")), 1000))
    except ValueError:
        raise BadRequest("logs must be a number of lines", param="logs") from None
    scheduler = rt.scheduler
    with rt.events.subscribe() as queue:
        # Snapshot and subscription in one synchronous step: no event is missed or doubled.
        statuses = all_statuses(scheduler)
        sizes = tree_rss(status.pid for status in statuses)
        budget = SNAPSHOT_LOG_BYTES // (1 + len(scheduler.slots))  # each source's share of the snapshot
        log_tails = {"proxy": rt.proxy_log.tail(n_lines, budget)}
        log_tails.update({mid: slot.process.log.tail(n_lines, budget) for mid, slot in scheduler.slots.items()})
        snapshot = {
            "type": "snapshot",
            "version": __version__,
            "started": rt.started,
            "queue_depth": scheduler.queue_depth(),
            "models": [{**status.as_json(sizes), "memory": rt.memory.model_json(scheduler.slot(status.model).process.spec)}
                       for status in statuses],
            "devices": rt.memory.devices_json([slot.process.spec for slot in scheduler.slots.values()
                                               if slot.process.state in (ProcessState.STARTING, ProcessState.READY)]),
            "logs": log_tails,
            "profiles": sorted(rt.config.profiles),
            "profile": rt.profile,
            "requests": [entry.as_json() for entry in rt.inflight.list()],
            "timeline": rt.timeline.as_json(),
        }
        resp = await _open_stream(request, sse.HEADERS)
        if not await _send(request, resp, sse.event(snapshot)):
            return resp
        live = _until_closed(queue, rt.closing, _HEARTBEAT_S)
        async with aclosing(live) as events:
            async for event in events:
                if not await _send(request, resp, sse.PING if event is None else sse.event(event)):
                    break
    return resp


def _router_event(event: dict[str, Any]) -> dict[str, Any] | None:
    """One of our events in llama.cpp router mode's model_status shape (None: not one it has).

    A state change maps to its status; an unload that begins (``unloading``: it may first
    wait for the model's requests in flight) is ``unloading``.
    """
    if event.get("type") == "unloading":
        return {"model": event["model"], "event": "model_status", "data": {"status": "unloading"}}
    if event.get("type") == "progress":  # as llama.cpp's router reports a child's load progress
        return {"model": event["model"], "event": "status_change",
                "data": {"status": "loading", "progress": router_progress(event["progress"])}}
    if event.get("type") != "state" or event["state"] not in _ROUTER_STATUS:
        return None
    data: dict[str, Any] = {"status": _ROUTER_STATUS[event["state"]]}
    if event["state"] == ProcessState.FAILED.value:
        data["failed"] = True
        if event.get("exit_code") is not None:
            data["exit_code"] = event["exit_code"]
    return {"model": event["model"], "event": "model_status", "data": data}


@api(tag="llama.cpp router", content_type="text/event-stream")
async def models_sse(request: web.Request) -> web.StreamResponse:
    """llama.cpp router mode: model_status events (loading, loaded, unloading, unloaded) as they happen."""
    rt = runtime(request)
    last: dict[str, dict[str, Any]] = {}  # by model: the status last sent (an unload's start and its stop
    with rt.events.subscribe() as queue:  # are both "unloading": said once)
        resp = await _open_stream(request, sse.HEADERS)
        live = _until_closed(queue, rt.closing, _HEARTBEAT_S)
        async with aclosing(live) as events:
            async for event in events:
                if event is None:
                    data = sse.PING
                else:
                    routed = _router_event(event)
                    if routed is None or last.get(routed["model"]) == routed["data"]:
                        continue
                    last[routed["model"]] = routed["data"]
                    data = sse.event(routed)
                if not await _send(request, resp, data):
                    break
    return resp


def add_routes(app: web.Application, tags: dict[web.AbstractRoute, RouteTag]) -> None:
    """Register the streaming routes (management tier; they only read)."""
    register(app, tags, Tier.MANAGEMENT, [
        ("GET", "/models/sse", models_sse, Kind.READ), ("GET", "/logs", logs, Kind.READ),
        ("GET", "/logs/stream", logs_stream, Kind.READ), ("GET", "/logs/stream/{source:.+}", logs_stream, Kind.READ),
        ("GET", "/api/events", api_events, Kind.READ),
    ])
