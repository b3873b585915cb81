"""Inference routes: OpenAI's and llama-server's native ones, and the model list.

Each handler finds the model a request names (:mod:`swapproxy.routing`) and
hands the request to :func:`~swapproxy.web.forward.leased_forward`, which
leases the model (the scheduler makes it ready) and streams the request
through. The lease is held until the last response byte is written, so a swap
never cuts a request. The config is read from the runtime on every request,
so a reload applies to the next one.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..config import ModelConfig
from ..errors import BadRequest, NotFound
from ..routing import model_from_json, multipart_boundary, parse_json_body, resolve_model, rewrite_body
from ..scheduler import Scheduler
from ..states import ProcessState
from .forward import leased_forward
from .loading import stream_with_loading_state
from .openapi import api
from .proxy import request_headers
from .runtime import Kind, RouteTag, Tier, register, runtime
from .spool import spool_body

__all__ = ["add_routes", "OPENAI_POST", "NATIVE_POST", "NATIVE_GET"]

#: llama-server's own POST routes (outside /v1/) that name a model in their JSON body.
NATIVE_POST = frozenset(
    {"/completion", "/completions", "/chat/completions", "/infill", "/rerank", "/reranking", "/embedding",
     "/embeddings", "/tokenize", "/detokenize", "/apply-template"}
)
#: llama-server's own GET routes, routed by ``?model=``.
NATIVE_GET = frozenset({"/props", "/slots", "/lora-adapters"})
#: OpenAI routes registered by name (any other POST /v1/... reaches the catch-all), so that
#: they are in /openapi.json and label their own metrics.
OPENAI_POST = (
    "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses", "/v1/rerank", "/v1/messages",
    "/v1/audio/speech", "/v1/audio/transcriptions", "/v1/images/generations", "/v1/images/edits",
)
_POST_ONLY = frozenset({*OPENAI_POST, *NATIVE_POST})


@api(tag="inference", methods=["post"], body={"model": "my-model", "messages": [{"role": "user", "content": "hi"}]})
async def inference(request: web.Request) -> web.StreamResponse:
    """Inference: proxied to the model the JSON body (or multipart form) names, started if needed.

    Any POST under /v1/ and llama-server's native POST routes; the response streams back as
    the upstream sends it (SSE included).
    """
    path = request.path
    if request.method != "POST":
        if path in _POST_ONLY:
            raise web.HTTPMethodNotAllowed(request.method, ["POST"])
        raise NotFound(f"no route for {request.method} {path}")
    if not (path.startswith("/v1/") or path in NATIVE_POST):
        raise NotFound(f"no route for {request.method} {path}")
    if request.content_type.startswith("multipart/"):
        return await _multipart(request)
    scheduler = runtime(request).scheduler
    config = scheduler.config
    raw = await request.read()
    obj = parse_json_body(raw)
    model_id = resolve_model(config, model_from_json(obj) or request.query.get("model"))
    spec = config.models[model_id]
    body = rewrite_body(obj, spec) or raw
    if (
        spec.send_loading_state
        and obj.get("stream") is True
        and path.endswith("chat/completions")
        and scheduler.slot(model_id).process.state is not ProcessState.READY
    ):
        return await stream_with_loading_state(request, spec, body, obj.get("model") or model_id)
    return await leased_forward(request, model_id, spec, body=body)


async def _multipart(request: web.Request) -> web.StreamResponse:
    """Multipart uploads (audio transcriptions, image edits): route by the ``model`` form field.

    The upload is spooled (memory up to 1 MiB, then a temp file) so the model
    field can be found wherever it sits, and streamed on from there.
    """
    rt = runtime(request)
    boundary = multipart_boundary(request.headers.get("Content-Type", ""))
    if boundary is None:
        raise BadRequest("multipart request without a boundary")
    spool = await spool_body(request, rt.max_body)
    try:
        config = rt.config
        model_id = resolve_model(config, spool.find_model(boundary) or request.query.get("model"))
        headers = request_headers(request)
        headers["Content-Length"] = str(spool.size)
        return await leased_forward(request, model_id, config.models[model_id], body=spool.chunks(), headers=headers)
    finally:
        spool.close()


@api(tag="inference", query=[("model", "the model to ask (default: defaultModel, or the one running model)")])
async def native_get(request: web.Request) -> web.StreamResponse:
    """llama-server's native GET routes, routed by ?model= (else the default or the one running model)."""
    scheduler = runtime(request).scheduler
    config = scheduler.config
    requested = request.query.get("model")
    if requested is None and config.default_model is None:
        running = scheduler.running()
        if len(running) == 1:
            requested = running[0]
    model_id = resolve_model(config, requested)
    return await leased_forward(request, model_id, config.models[model_id])


# -- model list ----------------------------------------------------------------------------
_STATUS_VALUE = {
    ProcessState.READY: "loaded",
    ProcessState.STARTING: "loading",
}


def _model_entry(scheduler: Scheduler, spec: ModelConfig, shown_id: str, created: int) -> dict[str, Any]:
    proc = scheduler.slot(spec.id).process
    # llama.cpp's router lists each model's args here; ours would show the whole command line to
    # any inference client, upstream keys and all, so only the program's name is given.
    status: dict[str, Any] = {"value": _STATUS_VALUE.get(proc.state, "unloaded"), "args": list(spec.cmd[:1])}
    if proc.state is ProcessState.FAILED:
        status["failed"] = True
        if proc.exit_code is not None:
            status["exit_code"] = proc.exit_code
    entry: dict[str, Any] = {"id": shown_id, "object": "model", "created": created, "owned_by": "swapproxy"}
    for key in ("name", "description"):
        value = getattr(spec, key)
        if value:
            entry[key] = value
    if spec.metadata:
        entry["meta"] = dict(spec.metadata)
    if spec.capabilities:
        entry["capabilities"] = dict(spec.capabilities)
    entry["status"] = status
    return entry


@api(tag="models")
async def list_models(request: web.Request) -> web.Response:
    """Every listed model, OpenAI's shape plus llama.cpp router mode's status object.

    status.value is loaded, loading or unloaded; after a failed start also failed: true
    and exit_code.
    """
    rt = runtime(request)
    scheduler = rt.scheduler
    config = scheduler.config
    created = int(rt.started)
    data = []
    for spec in config.models.values():
        if spec.unlisted:
            continue
        data.append(_model_entry(scheduler, spec, spec.id, created))
        if config.include_aliases_in_list:
            data.extend(_model_entry(scheduler, spec, alias, created) for alias in spec.aliases)
    return web.json_response({"object": "list", "data": data})


def add_routes(app: web.Application, tags: dict[web.AbstractRoute, RouteTag]) -> None:
    """Register the inference routes (named ones; the catch-all comes last, see :func:`add_catch_all`).

    The native GETs start the model they name: they act, like the POSTs.
    """
    register(app, tags, Tier.INFERENCE, [
        ("GET", "/v1/models", list_models, Kind.READ), ("GET", "/models", list_models, Kind.READ),
        *(("POST", path, inference, Kind.INFERENCE) for path in (*OPENAI_POST, *sorted(NATIVE_POST))),
        *(("GET", path, native_get, Kind.INFERENCE) for path in sorted(NATIVE_GET)),
    ])


def add_catch_all(app: web.Application, tags: dict[web.AbstractRoute, RouteTag]) -> None:
    """Any other POST /v1/... (and a clear 404 or 405 for everything else): registered last."""
    register(app, tags, Tier.INFERENCE, [("*", "/{tail:.*}", inference, Kind.INFERENCE)])
