"""Management routes: health, running models, load/unload, logs, live events, metrics, info, UI.

Three families of clients meet here:

* llama-swap users: ``/health``, ``/running``, ``DELETE /upstream/{model}``,
  ``GET /upstream/{model}/load``, ``/unload``, ``/api/models/unload[/{model}]``,
  ``/logs``, ``/logs/stream[/...]`` — the shapes of llama-swap's API reference;
* llama.cpp router-mode clients (Open WebUI's llama.cpp connection):
  ``POST /models/load``, ``POST /models/unload``, ``GET /models/sse`` (the
  model list itself, with its ``status`` objects, is in :mod:`swapproxy.handlers`);
* people and monitoring: ``/ui``, ``/metrics``, ``/info``, ``/swagger`` and
  ``/openapi.json`` (generated from these very routes).

The streaming routes (``/logs*``, ``/api/events``, ``/models/sse``) are in
:mod:`swapproxy.streams`; :func:`add_routes` registers both.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Mapping
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from . import __version__
from .app import BACKGROUND, METRICS, RELOAD, STARTED, STATE_SINCE, SWAPPER
from .errors import BadRequest, ModelStartFailed, SwapProxyError
from .handlers import publish_inflight, upstream_passthrough
from .metrics import CONTENT_TYPE, tree_rss
from .openapi import api, build_openapi
from .routing import parse_json_body, resolve_model
from .states import ProcessState

__all__ = ["add_routes", "model_snapshot"]

logger = logging.getLogger(__name__)

_ACTIVE = (ProcessState.STARTING, ProcessState.READY)
_UI_FILES = {"index.html": "text/html", "app.js": "text/javascript", "style.css": "text/css",
             "swagger.html": "text/html"}


# -- model state -------------------------------------------------------------------------------
def model_snapshot(app: web.Application, model_id: str, sizes: Mapping[int, int] | None = None) -> dict[str, Any]:
    """Everything a person or a UI wants to know about one model, right now.

    ``rss_bytes`` (the process tree's memory) is there only when ``sizes`` (from
    :func:`~swapproxy.metrics.tree_rss`, one process-table pass for many models) is
    given: state-change events leave it out, as that pass would stall every swap.
    """
    swapper = app[SWAPPER]
    slot = swapper.slot(model_id)
    proc = slot.process
    spec = proc.spec
    loop = asyncio.get_running_loop()
    ready = proc.state is ProcessState.READY
    ttl_left = None
    if slot.ttl_handle is not None:
        ttl_left = round(max(slot.ttl_handle.when() - loop.time(), 0.0), 3)
    breaker_left = slot.breaker_until - loop.time()
    snap: dict[str, Any] = {
        "model": model_id,
        "name": spec.name or None,
        "description": spec.description or None,
        "aliases": list(spec.aliases),
        "state": proc.state.value,
        "pid": proc.pid,
        "port": urlsplit(spec.proxy).port,
        "proxy": spec.proxy,
        "ready_since": proc.started_wall if ready else None,
        "uptime_s": round(time.time() - proc.started_wall, 3) if ready and proc.started_wall else None,
        # since when it is in this state (how long has that start been going?), and the start's limit
        "state_since": app[STATE_SINCE].get(model_id, app[STARTED]),
        "health_check_timeout_s": spec.health_check_timeout,
        "inflight": slot.inflight,
        "waiting": slot.waiting,
        "ttl_s": spec.ttl or None,
        "ttl_remaining_s": ttl_left,
        "exit_code": proc.exit_code,
    }
    if sizes is not None:
        snap["rss_bytes"] = sizes.get(proc.pid) if proc.pid is not None else None
    if proc.state is ProcessState.FAILED and proc.last_error is not None:
        snap["error"] = proc.last_error.reason
        snap["log_tail"] = list(proc.last_error.log_tail)
        if breaker_left > 0:  # requests are refused at once until then (an explicit load retries)
            snap["breaker_open_s"] = round(breaker_left, 1)
    return snap


@api(tag="health")
async def health(request: web.Request) -> web.Response:
    """Health of swapproxy and of each running model (never needs an API key)."""
    swapper = request.app[SWAPPER]
    models = {
        mid: {"status": "running", "pid": slot.process.pid}
        for mid, slot in swapper.slots.items()
        if slot.process.state is ProcessState.READY
    }
    return web.json_response({"status": "ok", "models": models})


@api(tag="health")
async def liveness(request: web.Request) -> web.Response:
    """Liveness probe for orchestrators: answers while the event loop runs."""
    return web.json_response({"status": "alive"})


@api(tag="models", query=[("details", "1: add state, pid, port, uptime, RSS, in-flight, TTL left per model")])
async def running(request: web.Request) -> web.Response:
    """The models that are running or starting."""
    ids = request.app[SWAPPER].running()
    body: dict[str, Any] = {"running": ids}
    if request.query.get("details", "0") not in ("", "0", "false", "no"):
        swapper = request.app[SWAPPER]
        sizes = tree_rss(swapper.slot(mid).process.pid for mid in ids)
        body["details"] = {mid: model_snapshot(request.app, mid, sizes) for mid in ids}
    return web.json_response(body)


# -- load / unload -----------------------------------------------------------------------------
_FORCE_QUERY = [("force", "swapproxy: 1 = stop at once, cutting the requests in flight (default 0: wait for them)")]
_TRUE, _FALSE = ("1", "true", "yes"), ("", "0", "false", "no")


def _force(request: web.Request) -> bool:
    """``?force=1`` (swapproxy addition): stop at once, cutting the requests in flight."""
    value = request.query.get("force", "").lower()
    if value not in _TRUE + _FALSE:
        raise BadRequest(f"force must be 1 or 0 (true/false), not {value!r}", param="force")
    return value in _TRUE


def _exact_model(request: web.Request) -> str | None:
    """The model the whole ``{model}`` match names, or None (then it is a passthrough path)."""
    return request.app[SWAPPER].config.resolve(request.match_info["model"])


@api(tag="models", query=_FORCE_QUERY)
async def upstream_unload(request: web.Request) -> web.StreamResponse:
    """Stop a model (after its in-flight requests finish; at once with ?force=1).

    Not running: 200 with {"status": "error"} (llama-swap's shape). A path below a model
    (DELETE /upstream/{model}/x) is passed through to that model's server instead.
    """
    model_id = _exact_model(request)
    if model_id is None:
        return await upstream_passthrough(request)
    if await request.app[SWAPPER].unload(model_id, "unloaded via API", force=_force(request)):
        return web.json_response({"status": "ok", "message": f"{model_id} stopped"})
    return web.json_response({"status": "error", "message": f"{model_id} is not running"})


@api(tag="models")
async def upstream_load(request: web.Request) -> web.StreamResponse:
    """Start a model and answer once it is ready (503 with its last output if it fails)."""
    model_id = _exact_model(request)
    if model_id is None:
        return await upstream_passthrough(request)
    try:
        await request.app[SWAPPER].load(model_id)  # an explicit load also clears an open circuit breaker
    finally:
        publish_inflight(request.app, model_id)
    return web.json_response({"status": "ok", "message": f"{model_id} is ready"})


@api(tag="models", query=_FORCE_QUERY)
async def unload_all(request: web.Request) -> web.Response:
    """Stop every model (llama-swap's GET /unload and POST /api/models/unload); ?force=1: at once."""
    stopped = await request.app[SWAPPER].unload_all("unloaded via API", force=_force(request))
    return web.json_response({"status": "ok", "message": f"stopped {len(stopped)} model(s)", "stopped": stopped})


@api(tag="models", query=_FORCE_QUERY)
async def unload_one(request: web.Request) -> web.Response:
    """Stop one model (llama-swap's POST /api/models/unload/{model}); ?force=1: at once."""
    model_id = resolve_model(request.app[SWAPPER].config, request.match_info["model"])
    if await request.app[SWAPPER].unload(model_id, "unloaded via API", force=_force(request)):
        return web.json_response({"status": "ok", "message": f"{model_id} stopped"})
    return web.json_response({"status": "error", "message": f"{model_id} is not running"})


async def _router_model(request: web.Request) -> str:
    obj = parse_json_body(await request.read())
    name = obj.get("model")
    if not isinstance(name, str) or not name:
        raise BadRequest('the body must name a model: {"model": "<id>"}', param="model")
    return resolve_model(request.app[SWAPPER].config, name)


def _load_in_background(app: web.Application, model_id: str) -> None:
    task: asyncio.Task[None] = asyncio.ensure_future(app[SWAPPER].load(model_id))
    tasks = app[BACKGROUND]
    tasks.add(task)

    def done(t: asyncio.Task[None]) -> None:
        tasks.discard(t)
        publish_inflight(app, model_id)  # the load's own lease is over
        if not t.cancelled() and t.exception() is not None:
            err = t.exception()
            if isinstance(err, ModelStartFailed):
                logger.warning("load of %s failed: %s", model_id, err.reason)  # its output is in its log
            else:
                logger.warning("load of %s failed: %s", model_id,
                               err.message if isinstance(err, SwapProxyError) else err)

    task.add_done_callback(done)


@api(tag="llama.cpp router", body={"model": "my-model"})
async def models_load(request: web.Request) -> web.Response:
    """llama.cpp router mode: start loading a model; answers at once, progress on /models/sse."""
    model_id = await _router_model(request)
    swapper = request.app[SWAPPER]
    if swapper.slot(model_id).process.state not in _ACTIVE:
        _load_in_background(request.app, model_id)
    return web.json_response({"success": True})


@api(tag="llama.cpp router", body={"model": "my-model"}, query=_FORCE_QUERY)
async def models_unload(request: web.Request) -> web.Response:
    """llama.cpp router mode: stop a model; answers once it is stopped (400 when not running)."""
    model_id = await _router_model(request)
    if not await request.app[SWAPPER].unload(model_id, "unloaded via API", force=_force(request)):
        raise BadRequest("model is not running", param="model")
    return web.json_response({"success": True})


# -- metrics, info, docs, UI -------------------------------------------------------------------
@api(tag="monitoring", content_type="text/plain")
async def metrics(request: web.Request) -> web.Response:
    """Prometheus metrics (text exposition format)."""
    return web.Response(body=request.app[METRICS].render(), headers={"Content-Type": CONTENT_TYPE})


@api(tag="monitoring")
async def info(request: web.Request) -> web.Response:
    """Version, config file, the address this request came in on, uptime."""
    app = request.app
    sock = request.transport.get_extra_info("sockname") if request.transport is not None else None
    listen = None
    if isinstance(sock, tuple) and len(sock) >= 2:
        host = f"[{sock[0]}]" if ":" in str(sock[0]) else str(sock[0])
        listen = f"{host}:{sock[1]}"
    return web.json_response({
        "name": "swapproxy",
        "version": __version__,
        "config_file": app[SWAPPER].config.file,
        "listen": listen,
        "pid": os.getpid(),
        "started": app[STARTED],
        "uptime_s": round(time.time() - app[STARTED], 3),
        "models": len(app[SWAPPER].config.models),
        "reload": app[RELOAD].as_json(),
    })


@api(tag="monitoring")
async def version(request: web.Request) -> web.Response:
    """swapproxy's version."""
    return web.json_response({"name": "swapproxy", "version": __version__})


@api(tag="docs")
async def openapi_json(request: web.Request) -> web.Response:
    """This API's OpenAPI 3.1 document, generated from the registered routes."""
    return web.json_response(build_openapi(request.app))


def _ui_file(name: str) -> web.Response:
    try:
        body = resources.files("swapproxy").joinpath("ui", name).read_bytes()
    except (FileNotFoundError, KeyError):
        raise web.HTTPNotFound() from None
    return web.Response(body=body, content_type=_UI_FILES[name], headers={"Cache-Control": "no-cache"})


@api(tag="docs", content_type="text/html")
async def swagger(request: web.Request) -> web.Response:
    """Interactive API page (works offline): every operation of /openapi.json, with a Try button."""
    return _ui_file("swagger.html")


@api(tag="ui", content_type="text/html")
async def root(request: web.Request) -> web.Response:
    """Redirects to the UI."""
    raise web.HTTPFound("ui")  # relative: works behind a path-prefixing reverse proxy too


@api(tag="ui", content_type="text/html")
async def ui(request: web.Request) -> web.Response:
    """The web UI: models, their state, load/unload, live logs."""
    return _ui_file("index.html")


@api(tag="ui", content_type="text/plain")
async def ui_asset(request: web.Request) -> web.Response:
    """The UI's script and style sheet."""
    name = request.match_info["name"]
    if name not in _UI_FILES:
        raise web.HTTPNotFound()
    return _ui_file(name)


def add_routes(app: web.Application) -> None:
    """Register the management and streaming routes (before the inference catch-alls)."""
    from .streams import api_events, logs, logs_stream, models_sse  # streams imports this module

    r = app.router
    r.add_get("/", root)
    r.add_get("/ui", ui)
    r.add_get("/ui/{name}", ui_asset)
    r.add_get("/health", health)
    r.add_get("/health/liveness", liveness)
    r.add_get("/running", running)
    r.add_get("/unload", unload_all)
    r.add_post("/api/models/unload", unload_all)
    r.add_post("/api/models/unload/{model:.+}", unload_one)
    r.add_get("/upstream/{model:.+}/load", upstream_load)
    r.add_delete("/upstream/{model:.+}", upstream_unload)
    r.add_post("/models/load", models_load)
    r.add_post("/models/unload", models_unload)
    r.add_get("/models/sse", models_sse)
    r.add_get("/logs", logs)
    r.add_get("/logs/stream", logs_stream)
    r.add_get("/logs/stream/{source:.+}", logs_stream)
    r.add_get("/api/events", api_events)
    r.add_get("/metrics", metrics)
    r.add_get("/info", info)
    r.add_get("/api/version", version)
    r.add_get("/openapi.json", openapi_json)
    r.add_get("/swagger", swagger)
