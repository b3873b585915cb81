"""Inference routes: OpenAI's, llama-server's native ones, and llama-swap's extra paths.

Each handler finds the model a request names (:mod:`swapproxy.web.naming`:
the active profile, selectors, aliases, peers) and hands the request to
:func:`~swapproxy.web.forward.leased_forward`, which leases the model (the
scheduler makes it ready) and streams the request through; a peer's model goes
to :func:`~swapproxy.web.peer.peer_forward` instead, and a selector whose
peer target cannot be reached tries its next one (:func:`~swapproxy.web.peer.with_failover`). The lease is held
until the last response byte is written, so a swap never cuts a request. The
config is read from the runtime on every request, so a reload applies to the
next one.

Routes are fixed lists, as llama-swap's are (plus any ``POST /v1/...``): every
path llama-server serves, with and without ``/v1``; llama-swap's versionless
``/v/...`` and ``/audioapi/...`` (their prefix is stripped upstream), the image
and audio backends' ``/sdapi/v1/...``; ``GET`` routes named by ``?model=``; and
``POST /slots/{id}``, ``/props``, ``/lora-adapters``, whose bodies name no model.
The model list is in :mod:`.catalogue`.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..errors import BadRequest, NotFound, SlotFilesManaged
from ..routing import Route, model_from_json, multipart_boundary, parse_json_body, rewrite_body
from ..states import ProcessState
from .forward import leased_forward
from .loading import stream_with_loading_state
from .naming import Release
from .openapi import api
from .peer import peer_body, peer_forward, with_failover
from .proxy import request_headers
from .runtime import Kind, RouteTag, Runtime, Tier, register, runtime
from .spool import spool_body

__all__ = ["add_routes", "add_catch_all", "OPENAI_POST", "NATIVE_POST", "NATIVE_GET", "NATIVE_BODY_POST",
           "PREFIXED_POST"]

#: llama-server's own POST routes outside /v1/ whose JSON body (or multipart form) names a model.
NATIVE_POST = frozenset(
    {"/completion", "/completions", "/chat/completions", "/responses", "/infill", "/rerank", "/reranking",
     "/embedding", "/embeddings", "/tokenize", "/detokenize", "/apply-template", "/chat/completions/input_tokens",
     "/responses/input_tokens", "/audio/transcriptions", "/sdapi/v1/txt2img", "/sdapi/v1/img2img"}
)
#: GET routes, routed by ``?model=`` (else the default model, or the one running model).
NATIVE_GET = frozenset({"/props", "/slots", "/lora-adapters", "/v1/audio/voices", "/sdapi/v1/loras"})
#: llama-server's POST routes whose body names no model (or is not an object): routed like NATIVE_GET.
NATIVE_BODY_POST = ("/props", "/lora-adapters", "/slots/{slot}")
#: llama-swap's prefixed routes: the prefix is stripped before the request goes upstream.
PREFIXED_POST = {
    **{f"/v{path}": len("/v") for path in ("/chat/completions", "/responses", "/completions", "/messages",
                                           "/messages/count_tokens", "/embeddings", "/rerank", "/reranking")},
    "/audioapi/v1/tasks/run": len("/audioapi"),
}
#: OpenAI routes registered by name (any other POST /v1/... reaches the catch-all), so that
#: they are in /openapi.json and label their own metrics.
OPENAI_POST = (
    "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses", "/v1/rerank", "/v1/reranking",
    "/v1/messages", "/v1/messages/count_tokens", "/v1/chat/completions/input_tokens", "/v1/responses/input_tokens",
    "/v1/audio/speech", "/v1/audio/voices", "/v1/audio/transcriptions", "/v1/images/generations", "/v1/images/edits",
)
_POST_ONLY = frozenset({*OPENAI_POST, *NATIVE_POST, *PREFIXED_POST})


@api(tag="inference", methods=["post"], body={"model": "my-model", "messages": [{"role": "user", "content": "hi"}]})
async def inference(request: web.Request) -> web.StreamResponse:
    """Inference: proxied to the model the JSON body (or multipart form) names, started if needed.

    Any POST under /v1/, llama-server's native POST routes and llama-swap's /v/... and
    /audioapi/... (prefix stripped); the response streams back as the upstream sends it (SSE
    included). A profile's pin, a selector and setParamsByID apply to the name.
    """
    path = request.path
    if request.method != "POST":
        if path in _POST_ONLY:
            raise web.HTTPMethodNotAllowed(request.method, ["POST"])
        raise NotFound(f"no route for {request.method} {path}")
    if not (path.startswith("/v1/") or path in NATIVE_POST or path in PREFIXED_POST):
        raise NotFound(f"no route for {request.method} {path}")
    path_qs = request.raw_path[PREFIXED_POST[path]:] if path in PREFIXED_POST else None
    if request.content_type.startswith("multipart/"):
        return await _multipart(request, path_qs)
    raw = await request.read()
    obj = parse_json_body(raw)
    requested = model_from_json(obj) or request.query.get("model")
    return await with_failover(request, requested,
                               lambda found, release: _json(request, found, release, requested, obj, raw, path_qs))


async def _json(request: web.Request, found: Route, release: Release, requested: str | None, obj: dict[str, Any],
                raw: bytes, path_qs: str | None) -> web.StreamResponse:
    """A JSON body's request, routed: to the peer, or (made ready first) to the local model."""
    rt = runtime(request)
    try:
        if found.peer is not None:
            body = peer_body(rt, found, obj) or raw
            return await peer_forward(request, found, release, body=body, path_qs=path_qs)
        spec = rt.config.models[found.model_id]
        body = rewrite_body(obj, spec, found.name, found.renamed) or raw
        loading = bool(
            spec.send_loading_state
            and obj.get("stream") is True
            and request.path.endswith("chat/completions")
            and path_qs is None
            and rt.scheduler.slot(found.model_id).process.state is not ProcessState.READY
        )
        if loading:
            rt.scheduler.admit(found.model_id)  # a refusal that needs no wait keeps its status (429, 503)
    except BaseException:
        if release is not None:  # a second release (peer_forward's own) does nothing
            release()
        raise
    if loading:  # the name the upstream is asked for (useModelName, a pin's or selector's choice)
        sent = spec.use_model_name or (found.name if found.renamed else requested) or spec.id
        return await stream_with_loading_state(request, spec, body, sent, release=release)
    return await leased_forward(request, found.model_id, spec, body=body, path_qs=path_qs, release=release)


async def _multipart(request: web.Request, path_qs: str | None) -> web.StreamResponse:
    """Multipart uploads (audio transcriptions, image edits): route by the ``model`` form field.

    The upload is spooled (memory up to 1 MiB, then a temp file) so the model field can be
    found wherever it sits, and streamed on from there, unchanged (for a peer, its ``model``
    field becomes the id the peer knows).
    """
    rt = runtime(request)
    boundary = multipart_boundary(request.headers.get("Content-Type", ""))
    if boundary is None:
        raise BadRequest("multipart request without a boundary")
    spool = await spool_body(request, rt.max_body)

    async def serve(found: Route, release: Release) -> web.StreamResponse:
        headers = request_headers(request)
        if found.peer is not None:
            chunks, size = spool.renamed(boundary, found.peer.model)
            headers["Content-Length"] = str(size)
            return await peer_forward(request, found, release, body=chunks, headers=headers, path_qs=path_qs)
        headers["Content-Length"] = str(spool.size)
        return await leased_forward(request, found.model_id, rt.config.models[found.model_id], body=spool.chunks(),
                                    headers=headers, path_qs=path_qs, release=release)

    try:
        return await with_failover(request, spool.find_model(boundary) or request.query.get("model"), serve)
    finally:
        spool.close()


def _by_query(rt: Runtime, requested: str | None) -> str | None:
    """``?model=``, else the default model (None), else the one running model."""
    if requested is None and rt.config.default_model is None:
        running = rt.scheduler.running()
        if len(running) == 1:
            requested = running[0]
    return requested


async def _forward_by_query(request: web.Request, requested: str | None, **kwargs: Any) -> web.StreamResponse:
    rt = runtime(request)

    async def serve(found: Route, release: Release) -> web.StreamResponse:
        path_qs = None
        sent = found.peer.model if found.peer is not None else found.name
        if "model" in request.query and sent != request.query["model"]:  # the pinned, chosen or peer's name
            path_qs = str(request.rel_url.update_query(model=sent))
        if found.peer is not None:
            return await peer_forward(request, found, release, path_qs=path_qs, **kwargs)
        try:  # a client's slot save or restore, where swapproxy keeps the model's slot files: 403
            rt.slot_cache.guard(rt.config.models[found.model_id], request.method, request.raw_path.split("?")[0],
                                request.raw_path.partition("?")[2])
        except SlotFilesManaged:
            if release is not None:
                release()
            raise
        return await leased_forward(request, found.model_id, rt.config.models[found.model_id], path_qs=path_qs,
                                    release=release, **kwargs)

    return await with_failover(request, _by_query(rt, requested), serve)


@api(tag="inference", query=[("model", "the model to ask (default: defaultModel, or the one running model)")])
async def native_get(request: web.Request) -> web.StreamResponse:
    """llama-server's native GET routes, routed by ?model= (else the default or the one running model)."""
    return await _forward_by_query(request, request.query.get("model"))


@api(tag="inference", query=[("model", "the model to ask (default: the body's model, defaultModel, or the one "
                                        "running model)")])
async def native_body_post(request: web.Request) -> web.StreamResponse:
    """llama-server's POST /slots/{id}?action=save|restore|erase, /props and /lora-adapters.

    Their bodies name no model: ?model= does (else a "model" in a JSON object body, else the
    default or the one running model). The body goes upstream unchanged.
    """
    raw = await request.read()
    requested = request.query.get("model")
    if requested is None and raw and request.content_type == "application/json":
        try:
            obj = parse_json_body(raw)
        except BadRequest:
            obj = {}
        requested = model_from_json(obj)
    return await _forward_by_query(request, requested, body=raw or None)


def add_routes(app: web.Application, tags: dict[web.AbstractRoute, RouteTag]) -> None:
    """Register the inference routes (named ones; the catch-all comes last, see :func:`add_catch_all`).

    The native GETs start the model they name: they act, like the POSTs; the POSTs whose body
    names no model (``/slots/{slot}``, ``/props``, ``/lora-adapters``) change a server's state.
    """
    register(app, tags, Tier.INFERENCE, [
        *(("POST", path, inference, Kind.INFERENCE) for path in (*OPENAI_POST, *sorted(NATIVE_POST), *PREFIXED_POST)),
        *(("GET", path, native_get, Kind.INFERENCE) for path in sorted(NATIVE_GET)),
        *(("POST", path, native_body_post, Kind.SLOTS) for path in NATIVE_BODY_POST),
    ])


def add_catch_all(app: web.Application, tags: dict[web.AbstractRoute, RouteTag]) -> None:
    """Any other POST /v1/... (and a clear 404 or 405 for everything else): registered last."""
    register(app, tags, Tier.INFERENCE, [("*", "/{tail:.*}", inference, Kind.INFERENCE)])
