"""Management routes: health, running models, unload, router-mode load/unload, metrics, info, UI.

Three families of clients meet here:

* llama-swap users: ``/health``, ``/running``, ``/unload``,
  ``/api/models/unload[/{model}]`` — the shapes of llama-swap's API reference
  (its load and unload on ``/upstream/{model}`` are in :mod:`.upstream`, its
  ``/logs`` in :mod:`.streams`);
* llama.cpp router-mode clients (Open WebUI's llama.cpp connection):
  ``POST /models/load``, ``POST /models/unload`` (the model list itself, with
  its ``status`` objects, is in :mod:`.inference`; ``/models/sse`` in :mod:`.streams`);
* people and monitoring: ``/ui``, ``/metrics``, ``/info``, ``/swagger`` and
  ``/openapi.json`` (generated from the registered routes).

Every model's state shown here is a :class:`~swapproxy.status.ModelStatus`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from importlib import resources
from typing import Any

from aiohttp import web

from .. import __version__
from ..errors import BadRequest, ModelStartFailed, SwapProxyError
from ..metrics import CONTENT_TYPE, tree_rss
from ..routing import parse_json_body, resolve_model
from ..states import ProcessState
from ..status import model_status
from .forward import publish_inflight
from .middleware import opens_inference
from .openapi import api, build_openapi
from .runtime import Kind, RouteTag, Runtime, Tier, register, runtime
from .upstream import FORCE_QUERY, force_param

__all__ = ["add_routes"]

logger = logging.getLogger(__name__)

_ACTIVE = (ProcessState.STARTING, ProcessState.READY)
#: Seconds a router-mode unload (``POST /models/unload``) waits for the model's requests in flight
#: before it cuts them (``?drain=`` per call).
UNLOAD_DRAIN_LIMIT = 30.0
_ROUTER_UNLOAD_QUERY = [*FORCE_QUERY, ("drain", f"swapproxy: seconds to wait for the requests in flight before "
                                               f"cutting them (default {UNLOAD_DRAIN_LIMIT:g})")]
_UI_FILES = {"index.html": "text/html", "style.css": "text/css", "swagger.html": "text/html",
             **{f"{name}.js": "text/javascript"
                for name in ("app", "common", "models", "activity", "logs", "playground", "charts", "editor")}}
#: The UI's pages and files load nothing but this origin's: no inline script or style, no other
#: site, no framing (its buttons act). swagger.html, which has inline script, is not under it.
UI_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
          "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


@api(tag="health")
async def health(request: web.Request) -> web.Response:
    """Health of swapproxy and of each running model (never needs an API key).

    Also at llama-server's /v1/health and llama-swap's /wol-health (its wake-on-LAN proxy's probe).
    """
    scheduler = runtime(request).scheduler
    models = {
        mid: {"status": "running", "pid": slot.process.pid}
        for mid, slot in scheduler.slots.items()
        if slot.process.state is ProcessState.READY
    }
    return web.json_response({"status": "ok", "models": models})


@api(tag="health")
async def liveness(request: web.Request) -> web.Response:
    """Liveness probe for orchestrators: answers while the event loop runs."""
    return web.json_response({"status": "alive"})


@api(tag="models", query=[("details", "1: add state, pid, port, uptime, RSS, memory footprint, in-flight, TTL "
                                     "left per model, GPU memory it holds (NVML), the scheduler's queue by model, each "
                                     "device's budget and each GPU's sample, the saved slots of models with slotCache, "
                                     "and each peer's health")])
async def running(request: web.Request) -> web.Response:
    """The models that are running or starting."""
    scheduler = runtime(request).scheduler
    ids = scheduler.running()
    body: dict[str, Any] = {"running": ids}
    if request.query.get("details", "0") not in ("", "0", "false", "no"):
        statuses = [model_status(scheduler, mid) for mid in ids]
        sizes = tree_rss(status.pid for status in statuses)
        memory = runtime(request).memory
        specs = [scheduler.slot(mid).process.spec for mid in ids]
        telemetry = runtime(request).telemetry
        body["details"] = {status.model: {**status.as_json(sizes), "memory": memory.model_json(spec),
                                          **_gpu_memory(telemetry.gpu_memory(status.model))}
                           for status, spec in zip(statuses, specs)}
        if queue := scheduler.queue():
            body["queue"] = [queued.as_json() for queued in queue]
        if telemetry.gpus:
            body["gpus"] = telemetry.gpus_json()
        devices = memory.devices_json(specs)
        if devices:
            body["devices"] = devices
        slot_cache = runtime(request).slot_cache  # every model with slotCache, running or not
        saved = {mid: info for mid, spec in scheduler.config.models.items()
                 if (info := slot_cache.model_json(spec)) is not None}
        if saved:
            body["slot_cache"] = {"budget_bytes": scheduler.config.slot_cache_budget, "models": saved}
        if scheduler.config.peers:
            body["peers"] = runtime(request).peers.as_json(scheduler.config)
    return web.json_response(body)


def _gpu_memory(held: dict[str, int]) -> dict[str, Any]:
    """``gpu_memory`` (bytes per GPU its processes hold, from NVML) when it holds any."""
    return {"gpu_memory": held} if held else {}


# -- load / unload -----------------------------------------------------------------------------
@api(tag="models", query=FORCE_QUERY)
async def unload_all(request: web.Request) -> web.Response:
    """Stop every model (llama-swap's GET /unload and POST /api/models/unload); ?force=1: at once."""
    stopped = await runtime(request).scheduler.unload_all("unloaded via API", force=force_param(request))
    return web.json_response({"status": "ok", "message": f"stopped {len(stopped)} model(s)", "stopped": stopped})


@api(tag="models", query=FORCE_QUERY)
async def unload_one(request: web.Request) -> web.Response:
    """Stop one model (llama-swap's POST /api/models/unload/{model}); ?force=1: at once."""
    scheduler = runtime(request).scheduler
    model_id = resolve_model(scheduler.config, request.match_info["model"])
    if await scheduler.unload(model_id, "unloaded via API", force=force_param(request)):
        return web.json_response({"status": "ok", "message": f"{model_id} stopped"})
    return web.json_response({"status": "error", "message": f"{model_id} is not running"})


async def _router_model(request: web.Request) -> str:
    obj = parse_json_body(await request.read())
    name = obj.get("model")
    if not isinstance(name, str) or not name:
        raise BadRequest('the body must name a model: {"model": "<id>"}', param="model")
    return resolve_model(runtime(request).config, name)


def _load_in_background(rt: Runtime, model_id: str) -> None:
    def done(t: asyncio.Task[None]) -> None:
        publish_inflight(rt, model_id)  # the load's own lease is over
        if not t.cancelled() and t.exception() is not None:
            err = t.exception()
            if isinstance(err, ModelStartFailed):
                logger.warning("load of %s failed: %s", model_id, err.reason)  # its output is in its log
            else:
                logger.warning("load of %s failed: %s", model_id,
                               err.message if isinstance(err, SwapProxyError) else err)

    rt.background.spawn(rt.scheduler.load(model_id), on_done=done)


@api(tag="llama.cpp router", body={"model": "my-model"})
async def models_load(request: web.Request) -> web.Response:
    """llama.cpp router mode: start loading a model; answers at once, progress on /models/sse."""
    model_id = await _router_model(request)
    rt = runtime(request)
    if rt.scheduler.slot(model_id).process.state not in _ACTIVE:
        _load_in_background(rt, model_id)
    return web.json_response({"success": True})


def _drain_param(request: web.Request) -> float:
    raw = request.query.get("drain")
    if raw is None:
        return UNLOAD_DRAIN_LIMIT
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not math.isfinite(value) or value < 0:
        raise BadRequest(f"drain must be a number of seconds, not {raw!r}", param="drain")
    return value


@api(tag="llama.cpp router", body={"model": "my-model"}, query=_ROUTER_UNLOAD_QUERY)
async def models_unload(request: web.Request) -> web.Response:
    """llama.cpp router mode: stop a model; answers at once (400 when it is not running).

    The unload goes on in the background: once the model's requests in flight finish, or
    after ?drain= seconds (default 30), when they are cut; ?force=1 cuts them at once. A
    client that goes away does not cancel it. /models/sse shows unloading, then unloaded.
    """
    model_id = await _router_model(request)
    force, limit = force_param(request), _drain_param(request)
    rt = runtime(request)
    if not rt.scheduler.unloadable(model_id):
        raise BadRequest("model is not running", param="model")
    # Open WebUI gives up on an unload after 30 s (and swapproxy then dropped it): answer now, and
    # let the unload outlive this request.
    rt.events.publish({"type": "unloading", "model": model_id, "drain_limit_s": 0.0 if force else limit})
    rt.background.spawn(rt.scheduler.unload(model_id, "unloaded via API", force=force, drain_limit=limit))
    return web.json_response({"success": True})


# -- metrics, info, docs, UI -------------------------------------------------------------------
@api(tag="monitoring", content_type="text/plain")
async def metrics(request: web.Request) -> web.Response:
    """Prometheus metrics (text exposition format): swapproxy's, then each ready model's own
    (its /metrics, e.g. llama-server's with --metrics) with a ``model`` label."""
    rt = runtime(request)
    running = [(slot.process.spec, slot.process.pid) for slot in rt.scheduler.slots.values()
               if slot.process.state is ProcessState.READY and slot.process.pid is not None]
    upstreams = await rt.upstream_metrics.text(running)
    return web.Response(body=rt.metrics.render() + upstreams.encode(), headers={"Content-Type": CONTENT_TYPE})


@api(tag="monitoring")
async def info(request: web.Request) -> web.Response:
    """Version, config file, the address this request came in on, uptime, the last reload, and
    whether this request's key also opens the inference routes."""
    rt = runtime(request)
    sock = request.transport.get_extra_info("sockname") if request.transport is not None else None
    listen = None
    if isinstance(sock, tuple) and len(sock) >= 2:
        host = f"[{sock[0]}]" if ":" in str(sock[0]) else str(sock[0])
        listen = f"{host}:{sock[1]}"
    config = rt.config
    return web.json_response({
        "name": "swapproxy",
        "version": __version__,
        "config_file": config.file,
        "listen": listen,
        "pid": os.getpid(),
        "started": rt.started,
        "uptime_s": round(time.time() - rt.started, 3),
        "models": len(config.models),
        "reload": rt.reload.as_json(),
        "key_opens_inference": opens_inference(request),
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
    headers = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
    if name != "swagger.html":
        headers["Content-Security-Policy"] = UI_CSP
    return web.Response(body=body, content_type=_UI_FILES[name], headers=headers)


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
    """The web UI: models (state, load progress, memory and GPUs, the queue), activity, logs, a playground."""
    return _ui_file("index.html")


@api(tag="ui", content_type="text/plain")
async def ui_asset(request: web.Request) -> web.Response:
    """The UI's scripts (JS modules) and style sheet."""
    name = request.match_info["name"]
    if name not in _UI_FILES:
        raise web.HTTPNotFound()
    return _ui_file(name)


def add_routes(app: web.Application, tags: dict[web.AbstractRoute, RouteTag]) -> None:
    """Register the management routes (management tier, but the health routes, which are open)."""
    read, load = Kind.READ, Kind.LOAD
    register(app, tags, Tier.MANAGEMENT, [
        ("GET", "/", root, read), ("GET", "/ui", ui, read), ("GET", "/ui/{name}", ui_asset, read),
        ("GET", "/health", health, read), ("GET", "/health/liveness", liveness, read),
        ("GET", "/running", running, read), ("GET", "/v1/health", health, read), ("GET", "/wol-health", health, read),
        ("GET", "/unload", unload_all, load), ("POST", "/api/models/unload", unload_all, load),
        ("POST", "/api/models/unload/{model:.+}", unload_one, load),
        ("POST", "/models/load", models_load, load), ("POST", "/models/unload", models_unload, load),
        ("GET", "/metrics", metrics, read), ("GET", "/info", info, read), ("GET", "/api/version", version, read),
        ("GET", "/openapi.json", openapi_json, read), ("GET", "/swagger", swagger, read),
    ])
