"""The ``/upstream/`` route family: one model's own server, and llama-swap's load and unload on it.

* ``/upstream/{model}/{path}`` (any method): raw passthrough to that model's
  server (started if needed), the prefix stripped and the path's encoding kept;
  the active profile's pins apply to ``{model}`` (selectors and filters do not,
  as in llama-swap). A path matching ``upstream.ignorePaths`` never starts or
  swaps the model: 409 while it is not ready. WebSocket upgrades pass through
  (:mod:`.websocket`). ``{model}`` may be a peer's model (``peer/model``, or a
  bare id one peer alone lists): the path goes to that peer, body unchanged;
* ``GET /upstream/{model}/load``: start it and answer once it is ready;
* ``DELETE /upstream/{model}``: stop it;
* ``/comfyui/{path}``: llama-swap's passthrough to the model ``comfyui_auto``;
  only ``/comfyui/`` itself may start it; ``GET /upstream`` leads to the UI.

A load or unload path below a model name that is not exactly a model
(``DELETE /upstream/m/x``) is a passthrough of that path instead.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import unquote

from aiohttp import web

from ..config import COMFYUI_MODEL, Config, PeerRoute
from ..errors import BadRequest, ModelDisabled, ModelNotFound, NotFound
from ..routing import Route
from .forward import leased_forward, publish_inflight, take_lease, tracked
from .peer import peer_forward
from .proxy import Body
from .openapi import api
from .runtime import Kind, RouteTag, Tier, register, runtime
from .spool import spool_body, too_large
from .websocket import is_websocket_upgrade, relay_websocket, unleased_websocket

__all__ = ["add_routes", "passthrough", "upstream_passthrough", "FORCE_QUERY", "force_param"]

FORCE_QUERY = [("force", "swapproxy: 1 = stop at once, cutting the requests in flight (default 0: wait for them)")]
_TRUE, _FALSE = ("1", "true", "yes"), ("", "0", "false", "no")


def force_param(request: web.Request) -> bool:
    """``?force=1`` (swapproxy addition): stop at once, cutting the requests in flight."""
    value = request.query.get("force", "").lower()
    if value not in _TRUE + _FALSE:
        raise BadRequest(f"force must be 1 or 0 (true/false), not {value!r}", param="force")
    return value in _TRUE


def _model_for_path(config: Config, tail: str, profile: str | None = None) -> tuple[str | PeerRoute, str]:
    """Split ``/upstream/<model>/<rest>``'s tail into (model id, or the peer's model, and rest),
    longest name first (a pin of the ``profile`` among the names)."""
    decoded = unquote(tail)
    pins = config.profiles[profile].pins if profile in config.profiles else {}
    names = sorted([*config.models, *(a for spec in config.models.values() for a in spec.aliases), *pins,
                    *config.peer_names()], key=len, reverse=True)
    for name in names:
        if decoded == name or decoded.startswith(name + "/"):
            if name in pins and not pins[name]:
                raise ModelDisabled(name, str(profile))
            target = pins.get(name, name)
            model_id: str | PeerRoute | None = config.resolve(target) or config.peer_route(target)
            if model_id is None:  # a pin naming a selector: selectors do not apply here (llama-swap's rule)
                raise ModelNotFound(name)
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
    raw = request.raw_path.split("?", 1)
    model_id, rest = _model_for_path(rt.config, raw[0][len("/upstream/") :], rt.profile)
    ignored = next((p for p in rt.config.upstream_ignore_paths if p.search("/" + unquote(rest))), None)
    refusal = f"path matches upstream.ignorePaths ({ignored.pattern})" if ignored is not None else None
    return await passthrough(request, model_id, rest, raw[1] if len(raw) > 1 else None, refusal)


async def passthrough(request: web.Request, target: str | PeerRoute, rest: str, query: str | None,
                       refuse_start: str | None) -> web.StreamResponse:
    """Forward the request to ``/<rest>?<query>`` on the server of ``target`` (a model id, or a peer's
    model); with ``refuse_start`` (why), only while the model is ready (409 otherwise; a peer never
    swaps, so it is always let through). A WebSocket upgrade is relayed."""
    rt = runtime(request)
    if any(seg in ("..", ".") for seg in unquote(rest).split("/")):
        raise BadRequest("path segments '.' and '..' are not allowed in /upstream/ paths")
    path_qs = "/" + rest + (("?" + query) if query is not None else "")
    if isinstance(target, PeerRoute):
        return await _to_peer(request, target, path_qs)
    model_id = target
    spec = rt.config.models[model_id]
    rt.slot_cache.guard(spec, request.method, "/" + rest, query or "")
    if is_websocket_upgrade(request):
        if spec.ignore_websockets:
            return await unleased_websocket(request, spec, path_qs)

        async def relay() -> web.StreamResponse:
            lease = await take_lease(rt.scheduler, model_id, refuse_start)
            try:
                return await relay_websocket(request, spec, path_qs)
            finally:
                lease.release()

        return await tracked(request, model_id, relay)
    return await _with_body(request, lambda body: leased_forward(request, model_id, spec, path_qs=path_qs, body=body,
                                                                 refuse_start=refuse_start))


async def _to_peer(request: web.Request, peer: PeerRoute, path_qs: str) -> web.StreamResponse:
    """The passthrough to a peer: its key, its timeouts, the body as it came; 503 at once while it is down."""
    if is_websocket_upgrade(request):
        spec = runtime(request).config.peers[peer.peer].spec(peer.model)
        return await tracked(request, spec.id, lambda: relay_websocket(request, spec, path_qs))
    found = Route(peer.fqn, peer.fqn, peer=peer)
    return await _with_body(request, lambda body: peer_forward(request, found, path_qs=path_qs, body=body))


async def _with_body(request: web.Request, send: Callable[[Body], Awaitable[web.StreamResponse]]
                     ) -> web.StreamResponse:
    """``send`` the request's body on as it comes, within maxRequestBodyMB: streamed when its length is
    known, spooled first when it is not (so the limit holds before anything goes upstream)."""
    limit = runtime(request).max_body
    if request.content_length is not None and request.content_length > limit:
        raise too_large(limit)
    if not request.can_read_body:
        body: Body = None
    elif request.content_length is not None and "Content-Encoding" not in request.headers:
        body = request.content  # its length is known and within the limit: stream it as it comes
    elif request.content_length is not None:
        # aiohttp decodes a gzip/deflate body: the declared length is the compressed one, so the
        # bytes actually sent on are counted (a 200 KiB gzip body can hold 200 MiB)
        body = _within(request, limit)
    else:  # chunked, length unknown: spool it so the limit holds before anything goes upstream
        spool = await spool_body(request, limit)
        try:
            return await send(spool.chunks())
        finally:
            spool.close()
    return await send(body)


@api(tag="inference")
async def comfyui(request: web.Request) -> web.StreamResponse:
    """llama-swap's ComfyUI passthrough: /comfyui/{path} goes to the model comfyui_auto.

    Only /comfyui/ itself may start it (409 for any other path while it is not ready); its
    WebSockets never start it nor count as requests (compat.ignoreWebsockets).
    """
    if COMFYUI_MODEL not in runtime(request).config.models:
        raise NotFound(f"local model {COMFYUI_MODEL} not found")
    raw = request.raw_path.split("?", 1)
    rest = raw[0][len("/comfyui/"):]
    refusal = None if rest == "" else "only /comfyui/ can start it"
    return await passthrough(request, COMFYUI_MODEL, rest, raw[1] if len(raw) > 1 else None, refusal)


@api(tag="inference")
async def comfyui_redirect(request: web.Request) -> web.StreamResponse:
    """/comfyui → /comfyui/ (the query kept): 301 for GET and HEAD, 308 for other methods."""
    target = "/comfyui/" + (f"?{request.query_string}" if request.query_string else "")
    raise (web.HTTPMovedPermanently if request.method in ("GET", "HEAD") else web.HTTPPermanentRedirect)(target)


@api(tag="ui")
async def upstream_index(request: web.Request) -> web.StreamResponse:
    """Redirects to the UI, which lists the models (llama-swap's GET /upstream)."""
    raise web.HTTPFound("/ui")


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
    The passthroughs may be WebSocket upgrades too (the browser rules treat those as acting).
    """
    passthrough = RouteTag(Tier.INFERENCE, Kind.INFERENCE)
    register(app, tags, Tier.MANAGEMENT, [("GET", "/upstream", upstream_index, Kind.READ)])
    register(app, tags, Tier.MANAGEMENT, [("GET", "/upstream/{model:.+}/load", upstream_load, Kind.LOAD),
                                          ("DELETE", "/upstream/{model:.+}", upstream_unload, Kind.LOAD)],
             below_model=passthrough)
    register(app, tags, Tier.INFERENCE, [("*", "/upstream/{tail:.+}", upstream_passthrough, Kind.INFERENCE),
                                         ("*", "/comfyui", comfyui_redirect, Kind.READ),
                                         ("*", "/comfyui/{tail:.*}", comfyui, Kind.INFERENCE)])
