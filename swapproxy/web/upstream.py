"""The ``/upstream/`` route family: one model's own server, and llama-swap's load and unload on it.

* ``/upstream/{model}/{path}`` (any method): raw passthrough to that model's
  server (started if needed), the prefix stripped and the path's encoding kept;
* ``GET /upstream/{model}/load``: start it and answer once it is ready;
* ``DELETE /upstream/{model}``: stop it.

A load or unload path below a model name that is not exactly a model
(``DELETE /upstream/m/x``) is a passthrough of that path instead.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import unquote

from aiohttp import web

from ..config import Config
from ..errors import BadRequest, ModelNotFound
from .forward import leased_forward, publish_inflight
from .openapi import api
from .runtime import Kind, RouteTag, Tier, register, runtime
from .spool import spool_body, too_large

__all__ = ["add_routes", "upstream_passthrough", "FORCE_QUERY", "force_param"]

FORCE_QUERY = [("force", "swapproxy: 1 = stop at once, cutting the requests in flight (default 0: wait for them)")]
_TRUE, _FALSE = ("1", "true", "yes"), ("", "0", "false", "no")


def force_param(request: web.Request) -> bool:
    """``?force=1`` (swapproxy addition): stop at once, cutting the requests in flight."""
    value = request.query.get("force", "").lower()
    if value not in _TRUE + _FALSE:
        raise BadRequest(f"force must be 1 or 0 (true/false), not {value!r}", param="force")
    return value in _TRUE


def _model_for_path(config: Config, tail: str) -> tuple[str, str]:
    """Split ``/upstream/<model>/<rest>``'s tail into (model id, rest), longest name first."""
    decoded = unquote(tail)
    names = sorted(
        [*config.models, *(a for spec in config.models.values() for a in spec.aliases)], key=len, reverse=True
    )
    for name in names:
        if decoded == name or decoded.startswith(name + "/"):
            model_id = config.resolve(name)
            assert model_id is not None
            # Find the same boundary in the raw (still encoded) tail.
            depth = name.count("/") + 1
            raw_rest = "/".join(tail.split("/")[depth:])
            return model_id, raw_rest
    raise ModelNotFound(decoded.split("/")[0])


@api(tag="inference")
async def upstream_passthrough(request: web.Request) -> web.StreamResponse:
    """Raw passthrough to one model's server (started if needed): /upstream/{model}/{path}.

    Any method; the prefix is stripped and the path's encoding kept. Also reaches native GETs
    (/upstream/{model}/slots) and llama-server's own web page.
    """
    rt = runtime(request)
    config = rt.config
    raw = request.raw_path.split("?", 1)
    tail = raw[0][len("/upstream/") :]
    model_id, rest = _model_for_path(config, tail)
    if any(seg in ("..", ".") for seg in unquote(rest).split("/")):
        raise BadRequest("path segments '.' and '..' are not allowed in /upstream/ paths")
    path_qs = "/" + rest + (("?" + raw[1]) if len(raw) > 1 else "")
    spec = config.models[model_id]
    limit = rt.max_body
    if request.content_length is not None and request.content_length > limit:
        raise too_large(limit)
    if not request.can_read_body:
        body: bytes | AsyncIterator[bytes] | None = None
    elif request.content_length is not None and "Content-Encoding" not in request.headers:
        body = request.content  # its length is known and within the limit: stream it as it comes
    elif request.content_length is not None:
        # aiohttp decodes a gzip/deflate body: the declared length is the compressed one, so the
        # bytes actually sent on are counted (a 200 KiB gzip body can hold 200 MiB)
        body = _within(request, limit)
    else:  # chunked, length unknown: spool it so the limit holds before anything goes upstream
        spool = await spool_body(request, limit)
        try:
            return await leased_forward(request, model_id, spec, path_qs=path_qs, body=spool.chunks())
        finally:
            spool.close()
    return await leased_forward(request, model_id, spec, path_qs=path_qs, body=body)


async def _within(request: web.Request, limit: int) -> AsyncIterator[bytes]:
    """The request's (decoded) body as it arrives; 413 as soon as more than ``limit`` bytes went on."""
    sent = 0
    async for chunk in request.content.iter_any():
        sent += len(chunk)
        if sent > limit:
            raise too_large(limit)
        yield chunk


def _exact_model(request: web.Request) -> str | None:
    """The model the whole ``{model}`` match names, or None (then it is a passthrough path)."""
    return runtime(request).config.resolve(request.match_info["model"])


@api(tag="models", query=FORCE_QUERY)
async def upstream_unload(request: web.Request) -> web.StreamResponse:
    """Stop a model (after its in-flight requests finish; at once with ?force=1).

    Not running: 200 with {"status": "error"} (llama-swap's shape). A path below a model
    (DELETE /upstream/{model}/x) is passed through to that model's server instead.
    """
    model_id = _exact_model(request)
    if model_id is None:
        return await upstream_passthrough(request)
    if await runtime(request).scheduler.unload(model_id, "unloaded via API", force=force_param(request)):
        return web.json_response({"status": "ok", "message": f"{model_id} stopped"})
    return web.json_response({"status": "error", "message": f"{model_id} is not running"})


@api(tag="models")
async def upstream_load(request: web.Request) -> web.StreamResponse:
    """Start a model and answer once it is ready (503 with its last output if it fails)."""
    model_id = _exact_model(request)
    if model_id is None:
        return await upstream_passthrough(request)
    rt = runtime(request)
    try:
        await rt.scheduler.load(model_id)  # an explicit load also clears an open circuit breaker
    finally:
        publish_inflight(rt, model_id)
    return web.json_response({"status": "ok", "message": f"{model_id} is ready"})


def add_routes(app: web.Application, tags: dict[web.AbstractRoute, RouteTag]) -> None:
    """Register the family: load and unload (management tier) before the passthrough (inference tier).

    A load or unload path whose ``{model}`` is not exactly a model is a passthrough, and is
    tagged as one: inference tier and kind, so inference keys open it and management keys do not.
    """
    passthrough = RouteTag(Tier.INFERENCE, Kind.INFERENCE)
    register(app, tags, Tier.MANAGEMENT, [("GET", "/upstream/{model:.+}/load", upstream_load, Kind.LOAD),
                                          ("DELETE", "/upstream/{model:.+}", upstream_unload, Kind.LOAD)],
             below_model=passthrough)
    register(app, tags, Tier.INFERENCE, [("*", "/upstream/{tail:.+}", upstream_passthrough, Kind.INFERENCE)])
