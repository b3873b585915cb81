"""Route handlers: inference (JSON, multipart, native GET), the model list, /upstream passthrough.

Each inference handler finds the model a request names (:mod:`routing`),
leases it from the :class:`~swapproxy.swap.Swapper` (which makes it ready) and
hands the request to :func:`~swapproxy.proxy.forward`. The lease is held
until the last response byte is written, so a swap never cuts a request.
The config is read from the swapper (``swapper.config``), never captured, so
a reload applies to the next request.

Around that, :func:`_leased_forward` publishes in-flight counts on the event bus and
labels the request with its model for the metrics, and :func:`_forward` keeps
a :class:`~swapproxy.metrics.TokenTap` on the relayed bytes (time to first
byte, tokens from the response's tail). Management routes are in
:mod:`swapproxy.management`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import mmap
import tempfile
import time
from collections.abc import AsyncIterator
from typing import IO, Any
from urllib.parse import unquote

from aiohttp import web

from .app import EVENTS, MAX_BODY, METRICS, MODEL_KEY, SESSION, START_KEY, STARTED, SWAPPER, route_label
from .config import Config, ModelConfig
from .errors import BadRequest, ModelNotFound, NotFound, PayloadTooLarge, SwapProxyError, envelope
from .metrics import TokenTap
from .openapi import api
from .proxy import drop_client, forward, open_upstream, relay, request_headers
from .routing import (
    find_multipart_field,
    model_from_json,
    multipart_boundary,
    parse_json_body,
    resolve_model,
    rewrite_body,
)
from .states import ProcessState
from .swap import Lease, Swapper

__all__ = ["add_routes", "upstream_passthrough", "publish_inflight", "OPENAI_POST", "NATIVE_POST", "NATIVE_GET"]

logger = logging.getLogger(__name__)

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
_SPOOL_IN_MEMORY = 1 << 20


# -- leases and forwarding, observed -------------------------------------------------------------
def publish_inflight(app: web.Application, model_id: str) -> None:
    """Publish ``model_id``'s in-flight and waiting counts on the event bus."""
    events = app[EVENTS]
    if events.subscriber_count:
        swapper = app[SWAPPER]
        slot = swapper.slots.get(model_id)
        if slot is None:  # removed by a reload while the request ran
            return
        ttl = slot.ttl_handle.when() - asyncio.get_running_loop().time() if slot.ttl_handle is not None else None
        events.publish({"type": "inflight", "model": model_id, "inflight": slot.inflight, "waiting": slot.waiting,
                        "queue_depth": swapper.queue_depth(), "ttl_remaining_s": ttl})


async def _leased_forward(
    request: web.Request, model_id: str, spec: ModelConfig, **kwargs: Any
) -> web.StreamResponse:
    """:func:`_forward` under a lease on ``model_id`` (the swapper makes it ready first).

    Labels the request with its model and publishes in-flight counts. The lease is
    taken and released inline rather than through ``swapper.lease``'s context
    manager: this runs for every request, and two nested generator-based context
    managers (``swapper.lease`` in one of our own) cost ~4 µs, ten times this.
    """
    app = request.app
    request[MODEL_KEY] = model_id
    try:
        lease = await app[SWAPPER].acquire(model_id)
        try:
            publish_inflight(app, model_id)
            return await _forward(request, spec, **kwargs)
        finally:
            lease.release()
    finally:
        publish_inflight(app, model_id)


def _observe(request: web.Request, spec: ModelConfig, tap: TokenTap, sse: bool) -> None:
    started = request.get(START_KEY, tap.first_at or 0.0)
    request.app[METRICS].observe_response(spec.id, route_label(request), tap, started, sse)


async def _forward(request: web.Request, spec: ModelConfig, **kwargs: Any) -> web.StreamResponse:
    """:func:`forward` with a token tap; metrics are taken after the last byte went out."""
    tap = TokenTap()
    metrics = request.app[METRICS]
    resp = await forward(request, request.app[SESSION], spec, on_chunk=tap,
                         on_cut=lambda reason: metrics.count_cut(spec.id, reason), **kwargs)
    _observe(request, spec, tap, resp.content_type == "text/event-stream")
    return resp


# -- inference -----------------------------------------------------------------------------
@api(tag="inference", methods=["post"], body={"model": "my-model", "messages": [{"role": "user", "content": "hi"}]})
async def inference(request: web.Request) -> web.StreamResponse:
    """Inference: proxied to the model the JSON body (or multipart form) names, started if needed.

    Any POST under /v1/ and llama-server's native POST routes; the response streams back as
    the upstream sends it (SSE included).
    """
    path = request.path
    if request.method != "POST" or not (path.startswith("/v1/") or path in NATIVE_POST):
        raise NotFound(f"no route for {request.method} {path}")
    if request.content_type.startswith("multipart/"):
        return await _multipart(request)
    swapper = request.app[SWAPPER]
    config = swapper.config
    raw = await request.read()
    obj = parse_json_body(raw)
    model_id = resolve_model(config, model_from_json(obj) or request.query.get("model"))
    spec = config.models[model_id]
    body = rewrite_body(obj, spec) or raw
    if (
        spec.send_loading_state
        and obj.get("stream") is True
        and path.endswith("chat/completions")
        and swapper.slot(model_id).process.state is not ProcessState.READY
    ):
        return await _stream_with_loading_state(request, spec, body, obj.get("model") or model_id)
    return await _leased_forward(request, model_id, spec, body=body)


class _Spool:
    """A request body kept in memory up to 1 MiB, on disk beyond."""

    def __init__(self) -> None:
        self.size = 0
        self._memory = bytearray()
        self._file: IO[bytes] | None = None

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self._file is None and len(self._memory) + len(chunk) <= _SPOOL_IN_MEMORY:
            self._memory += chunk
            return
        if self._file is None:
            self._file = tempfile.TemporaryFile()
            self._file.write(self._memory)
            self._memory = bytearray()
        self._file.write(chunk)

    def find_model(self, boundary: bytes) -> str | None:
        if self._file is None:
            return find_multipart_field(bytes(self._memory), boundary)
        self._file.flush()
        with mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ) as view:
            return find_multipart_field(view, boundary)

    async def chunks(self) -> AsyncIterator[bytes]:
        if self._file is None:
            yield bytes(self._memory)
            return
        self._file.seek(0)
        while chunk := self._file.read(1 << 16):
            yield chunk

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


async def _spool_body(request: web.Request, limit: int) -> _Spool:
    """Read the request body into a spool; 413 as soon as it passes ``limit`` bytes."""
    spool = _Spool()
    try:
        async for chunk in request.content.iter_chunked(1 << 16):
            spool.write(chunk)
            if spool.size > limit:
                raise PayloadTooLarge(f"request body is larger than the limit of {limit} bytes (maxRequestBodyMB)")
    except BaseException:
        spool.close()
        raise
    return spool


async def _multipart(request: web.Request) -> web.StreamResponse:
    """Multipart uploads (audio transcriptions, image edits): route by the ``model`` form field.

    The upload is spooled (memory up to 1 MiB, then a temp file) so the model
    field can be found wherever it sits, and streamed on from there.
    """
    config = request.app[SWAPPER].config
    boundary = multipart_boundary(request.headers.get("Content-Type", ""))
    if boundary is None:
        raise BadRequest("multipart request without a boundary")
    spool = await _spool_body(request, request.app[MAX_BODY])
    try:
        model_id = resolve_model(config, spool.find_model(boundary) or request.query.get("model"))
        spec = config.models[model_id]
        headers = request_headers(request)
        headers["Content-Length"] = str(spool.size)
        return await _leased_forward(request, model_id, spec, body=spool.chunks(), headers=headers)
    finally:
        spool.close()


@api(tag="inference", query=[("model", "the model to ask (default: defaultModel, or the one running model)")])
async def native_get(request: web.Request) -> web.StreamResponse:
    """llama-server's native GET routes, routed by ?model= (else the default or the one running model)."""
    config = request.app[SWAPPER].config
    swapper = request.app[SWAPPER]
    requested = request.query.get("model")
    if requested is None and config.default_model is None:
        running = swapper.running()
        if len(running) == 1:
            requested = running[0]
    model_id = resolve_model(config, requested)
    return await _leased_forward(request, model_id, config.models[model_id])


# -- loading state (sendLoadingState) --------------------------------------------------------
def _sse_chunk(model: str, text: str) -> bytes:
    chunk = {
        "id": "swapproxy-loading",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": {"reasoning_content": text}, "finish_reason": None}],
    }
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


async def _stream_with_loading_state(
    request: web.Request, spec: ModelConfig, body: bytes, shown_model: str
) -> web.StreamResponse:
    """Answer 200 SSE at once, report loading progress, then relay the upstream's own stream."""
    swapper = request.app[SWAPPER]
    resp = web.StreamResponse(
        status=200,
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
    await resp.prepare(request)
    loop = asyncio.get_running_loop()
    began = loop.time()
    evicting = swapper.evictions_for(spec.id)
    plan = (f"stopping {', '.join(evicting)}; " if evicting else "") + f"starting {spec.id}\n"
    await resp.write(_sse_chunk(shown_model, plan))
    request[MODEL_KEY] = spec.id
    acquire = asyncio.ensure_future(swapper.acquire(spec.id))
    lease: Lease | None = None
    try:
        while True:
            done, _ = await asyncio.wait({acquire}, timeout=1.0)
            if done:
                break
            slot = swapper.slot(spec.id)
            state = slot.process.state.value
            waiting = f", {swapper.queue_depth()} request(s) queued" if swapper.queue_depth() else ""
            await resp.write(_sse_chunk(shown_model, f"{spec.id}: {state}, {loop.time() - began:.0f}s elapsed{waiting}\n"))
        lease = acquire.result()
    except SwapProxyError as err:
        await resp.write(_sse_chunk(shown_model, f"failed: {err.message}\n"))
        await resp.write(b"data: " + json.dumps(envelope(err.message, err.type, err.code)).encode() + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp
    finally:
        if not acquire.done():
            acquire.cancel()  # acquire lets go of whatever it held
        elif lease is None and not acquire.cancelled() and acquire.exception() is None:
            acquire.result().release()  # ready in the very turn our client left: give it back
    try:
        await resp.write(_sse_chunk(shown_model, f"{spec.id} ready after {loop.time() - began:.1f}s\n"))
        upstream = await open_upstream(request, request.app[SESSION], spec, body=body)
        complete = False
        try:
            if upstream.status != 200:
                detail = (await upstream.read()).decode("utf-8", errors="replace")
                await resp.write(b"data: " + json.dumps(envelope(detail, "upstream_error", str(upstream.status))).encode() + b"\n\n")
                complete = True
            else:
                tap = TokenTap()
                cut = await relay(upstream, resp, sse=True, on_chunk=tap, idle=spec.response_idle_timeout)
                complete = cut is None
                if cut is not None:
                    request.app[METRICS].count_cut(spec.id, cut)
                _observe(request, spec, tap, True)
        finally:
            (upstream.release if complete else upstream.close)()
        if complete:
            await resp.write_eof()
        else:
            drop_client(request)  # never wait on a client that may be the one not reading
        return resp
    finally:
        lease.release()


# -- model list ----------------------------------------------------------------------------
_STATUS_VALUE = {
    ProcessState.READY: "loaded",
    ProcessState.STARTING: "loading",
}


def _model_entry(config: Config, swapper: Swapper, spec: ModelConfig, shown_id: str, created: int) -> dict[str, Any]:
    proc = swapper.slot(spec.id).process
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
    config = request.app[SWAPPER].config
    swapper = request.app[SWAPPER]
    created = int(request.app[STARTED])
    data = []
    for spec in config.models.values():
        if spec.unlisted:
            continue
        data.append(_model_entry(config, swapper, spec, spec.id, created))
        if config.include_aliases_in_list:
            data.extend(_model_entry(config, swapper, spec, alias, created) for alias in spec.aliases)
    return web.json_response({"object": "list", "data": data})


# -- /upstream/{model}/{path} ----------------------------------------------------------------
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
    config = request.app[SWAPPER].config
    raw = request.raw_path.split("?", 1)
    tail = raw[0][len("/upstream/") :]
    model_id, rest = _model_for_path(config, tail)
    if any(seg in ("..", ".") for seg in unquote(rest).split("/")):
        raise BadRequest("path segments '.' and '..' are not allowed in /upstream/ paths")
    path_qs = "/" + rest + (("?" + raw[1]) if len(raw) > 1 else "")
    limit = request.app[MAX_BODY]
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"request body is larger than the limit of {limit} bytes (maxRequestBodyMB)")
    if not request.can_read_body:
        body: bytes | AsyncIterator[bytes] | None = None
    elif request.content_length is not None:
        body = request.content  # its length is known and within the limit: stream it as it comes
    else:  # chunked, length unknown: spool it so the limit holds before anything goes upstream
        spool = await _spool_body(request, limit)
        try:
            return await _leased_forward(request, model_id, config.models[model_id], path_qs=path_qs,
                                         body=spool.chunks())
        finally:
            spool.close()
    return await _leased_forward(request, model_id, config.models[model_id], path_qs=path_qs, body=body)


def add_routes(app: web.Application) -> None:
    """Register the inference routes; named ones first, the catch-alls last."""
    r = app.router
    r.add_get("/v1/models", list_models)
    r.add_get("/models", list_models)
    for path in (*OPENAI_POST, *sorted(NATIVE_POST)):
        r.add_post(path, inference)
    for path in sorted(NATIVE_GET):
        r.add_get(path, native_get)
    r.add_route("*", "/upstream/{tail:.+}", upstream_passthrough)
    r.add_route("*", "/{tail:.*}", inference)
