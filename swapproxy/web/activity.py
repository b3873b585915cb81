"""The request history's routes (llama-swap's shapes, parameters and statuses); management tier, read-only.

* ``GET /api/metrics/activity`` — recorded requests, filtered (``model``, repeatable;
  ``start``/``end``, RFC 3339; ``min_id``/``max_id``), sorted (``sort``, ``order``) and paged
  (``limit`` 1..999, default 25; ``page``); a bad parameter is a 400 saying which;
* ``GET /api/metrics/stats[?model=]`` — totals, and histograms of the prompt and generation speeds;
* ``GET /api/captures/{id}`` — one request's capture, secrets taken out (400 for an id that is not
  a number, 404 when none is kept);
* ``GET /api/performance[?after=]`` — system and GPU samples (503 ``{"enabled": false}`` when
  ``performance.disabled``);
* ``GET /api/hardware`` — the machine, as found at start.

The queries run in the history's thread, never on the event loop.
"""

from __future__ import annotations

from datetime import datetime

from aiohttp import web

from ..errors import BadRequest, NotFound, Unavailable, envelope
from ..historydb import SORT_COLUMNS, ActivityQuery
from ..redact import Redactor
from .openapi import api
from .runtime import Kind, RouteTag, Tier, register, runtime

__all__ = ["add_routes", "parse_activity_query"]

_RFC3339 = "use RFC3339 format"


def _timestamp(request: web.Request, name: str) -> int | None:
    """An RFC 3339 query parameter as Unix milliseconds (None when absent)."""
    raw = request.query.get(name, "").strip()
    if not raw:
        return None
    try:
        when = datetime.fromisoformat(raw)
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        raise BadRequest(f"invalid '{name}' timestamp, {_RFC3339}", param=name)
    return round(when.timestamp() * 1000)


def _positive(request: web.Request, name: str) -> int | None:
    raw = request.query.get(name, "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise BadRequest(f"{name} must be >= 1", param=name)
    return value


def parse_activity_query(request: web.Request) -> ActivityQuery:
    """The activity query a request asks for; BadRequest (400) for any bad parameter, as llama-swap words it."""
    query = request.query
    models = tuple(m.strip() for m in query.getall("model", ()) if m.strip())
    start, end = _timestamp(request, "start"), _timestamp(request, "end")
    if start is not None and end is not None and start > end:
        raise BadRequest("start must be before end", param="start")
    min_id, max_id = _positive(request, "min_id"), _positive(request, "max_id")
    if min_id is not None and max_id is not None and min_id > max_id:
        raise BadRequest("min_id must be <= max_id", param="min_id")
    limit = 25
    if raw := query.get("limit", "").strip():
        try:
            limit = int(raw)
        except ValueError:
            raise BadRequest("invalid limit", param="limit") from None
        if not 0 < limit < 1000:
            raise BadRequest("limit must be between 1 and 999", param="limit")
    page = _positive(request, "page") or 1
    sort = query.get("sort", "").strip() or "id"
    if sort not in SORT_COLUMNS:
        raise BadRequest(f"invalid sort column (one of: {', '.join(SORT_COLUMNS)})", param="sort")
    order = query.get("order", "").strip().lower() or "desc"
    if order not in ("asc", "desc"):
        raise BadRequest("order must be asc or desc", param="order")
    return ActivityQuery(models, start, end, min_id, max_id, limit, page, sort, order)


@api(tag="history", query=[
    ("model", "only this model's requests (repeat for several)"),
    ("start", "only requests from this time on (RFC 3339)"), ("end", "only requests until this time (RFC 3339)"),
    ("min_id", "only ids from this one on"), ("max_id", "only ids up to this one"),
    ("limit", "rows per page, 1..999 (default 25)"), ("page", "page number, from 1"),
    ("sort", "id (default), time, model, req_path, resp_status_code, resp_content_type, cached, prompt, "
             "generated, drafted, prompt_speed, gen_speed, duration, ttfb, wait, method"),
    ("order", "desc (default) or asc"),
])
async def activity(request: web.Request) -> web.Response:
    """Recorded requests, newest first: {data, page, limit, total, total_pages}.

    Each row: id, timestamp, model, req_path, method, resp_status_code, resp_content_type, tokens
    (cache_tokens, draft_tokens, draft_acc_tokens, input_tokens, output_tokens, prompt_per_second,
    tokens_per_second; -1 when not reported), duration_ms, ttfb_ms, waited_for (swap, start, queue or
    null) and wait_ms, has_capture, error_msg (failed requests) and metadata (fifo_priority, selector).
    """
    query = parse_activity_query(request)
    return web.json_response(await runtime(request).history.activity(query))


@api(tag="history", query=[("model", "only this model's requests")])
async def stats(request: web.Request) -> web.Response:
    """Totals (requests, input, output and cached tokens) and histograms of the prompt and generation speeds.

    Each histogram is {bins, min, max, binSize, p50, p95, p99} (Sturges' rule, 5..20 bins;
    percentiles interpolated), or null without speeds.
    """
    model = request.query.get("model", "").strip() or None
    return web.json_response(await runtime(request).history.stats(model))


@api(tag="history")
async def capture(request: web.Request) -> web.Response:
    """One recorded request's capture: {id, req_path, req_headers, req_body, resp_headers, resp_body}.

    Bodies are base64; credentials and configured keys are replaced with ***. Kept in memory
    (captureBuffer MB), the oldest go first: 404 once gone.
    """
    try:
        row_id = int(request.match_info["id"])
    except ValueError:
        raise BadRequest("invalid capture ID", param="id") from None
    rt = runtime(request)
    found = await rt.history.capture(row_id, Redactor.for_config(rt.config))
    if found is None:
        raise NotFound("capture not found")
    return web.json_response(found)


@api(tag="history", query=[("after", "only samples after this time (RFC 3339)")])
async def performance(request: web.Request) -> web.Response:
    """System and GPU samples of the last hour: {enabled, sys_stats, gpu_stats}.

    503 with {"enabled": false} when performance.disabled is set.
    """
    monitor = runtime(request).performance
    if not monitor.enabled:
        err = Unavailable("performance monitoring is off (performance.disabled)")
        return web.json_response({"enabled": False, **envelope(err.message, err.type, err.code)}, status=err.status,
                                 headers=err.headers())
    return web.json_response(monitor.samples(_timestamp(request, "after")))


@api(tag="history")
async def hardware(request: web.Request) -> web.Response:
    """The machine, as found at start: architecture, operating system, environment, CPU, memory,
    accelerators (llama-swap's hardware snapshot, schema version 1)."""
    found = runtime(request).hardware
    if found is None:
        raise Unavailable("hardware detection unavailable")
    return web.json_response(found)


def add_routes(app: web.Application, tags: dict[web.AbstractRoute, RouteTag]) -> None:
    """Register the history's routes (management tier; they only read)."""
    register(app, tags, Tier.MANAGEMENT, [
        ("GET", "/api/metrics/activity", activity, Kind.READ), ("GET", "/api/metrics/stats", stats, Kind.READ),
        ("GET", "/api/captures/{id}", capture, Kind.READ), ("GET", "/api/performance", performance, Kind.READ),
        ("GET", "/api/hardware", hardware, Kind.READ),
    ])
