"""Route handlers: inference (JSON, multipart, native GET), model list, upstream control.

Each inference handler finds the model a request names (:mod:`routing`),
leases it from the :class:`~swapproxy.swap.Swapper` (which makes it ready) and
hands the request to :func:`~swapproxy.proxy.forward`. The lease is held
until the last response byte is written, so a swap never cuts a request.
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

from .app import CONFIG, MAX_BODY, SESSION, STARTED, SWAPPER
from .config import Config, ModelConfig
from .errors import BadRequest, NotFound, PayloadTooLarge, SwapProxyError, envelope
from .proxy import forward, open_upstream, relay, request_headers
from .routing import (
    find_multipart_field,
    model_from_json,
    multipart_boundary,
    parse_json_body,
    resolve_model,
    rewrite_body,
)
from .states import ProcessState
from .swap import Swapper

__all__ = ["add_routes", "NATIVE_POST", "NATIVE_GET"]

logger = logging.getLogger(__name__)

#: llama-server's own POST routes (outside /v1/) that name a model in their JSON body.
NATIVE_POST = frozenset(
    {"/completion", "/completions", "/chat/completions", "/infill", "/rerank", "/reranking", "/embedding",
     "/embeddings", "/tokenize", "/detokenize", "/apply-template"}
)
#: llama-server's own GET routes, routed by ``?model=``.
NATIVE_GET = frozenset({"/props", "/slots", "/lora-adapters"})
_SPOOL_IN_MEMORY = 1 << 20


# -- inference -----------------------------------------------------------------------------
async def inference(request: web.Request) -> web.StreamResponse:
    """POST under /v1/ or a native llama-server route: route by the body's ``model``."""
    path = request.path
    if request.method != "POST" or not (path.startswith("/v1/") or path in NATIVE_POST):
        raise NotFound(f"no route for {request.method} {path}")
    if request.content_type.startswith("multipart/"):
        return await _multipart(request)
    config = request.app[CONFIG]
    raw = await request.read()
    obj = parse_json_body(raw)
    model_id = resolve_model(config, model_from_json(obj) or request.query.get("model"))
    spec = config.models[model_id]
    body = rewrite_body(obj, spec) or raw
    swapper = request.app[SWAPPER]
    if (
        spec.send_loading_state
        and obj.get("stream") is True
        and path.endswith("chat/completions")
        and swapper.slot(model_id).process.state is not ProcessState.READY
    ):
        return await _stream_with_loading_state(request, spec, body, obj.get("model") or model_id)
    async with swapper.lease(model_id):
        return await forward(request, request.app[SESSION], spec, body=body)


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


async def _multipart(request: web.Request) -> web.StreamResponse:
    """Multipart uploads (audio transcriptions, image edits): route by the ``model`` form field.

    The upload is spooled (memory up to 1 MiB, then a temp file) so the model
    field can be found wherever it sits, and streamed on from there.
    """
    config = request.app[CONFIG]
    boundary = multipart_boundary(request.headers.get("Content-Type", ""))
    if boundary is None:
        raise BadRequest("multipart request without a boundary")
    limit = request.app[MAX_BODY]
    spool = _Spool()
    try:
        async for chunk in request.content.iter_chunked(1 << 16):
            spool.write(chunk)
            if spool.size > limit:
                raise PayloadTooLarge(f"request body is larger than the limit of {limit} bytes")
        model_id = resolve_model(config, spool.find_model(boundary) or request.query.get("model"))
        spec = config.models[model_id]
        headers = request_headers(request)
        headers["Content-Length"] = str(spool.size)
        async with request.app[SWAPPER].lease(model_id):
            return await forward(request, request.app[SESSION], spec, body=spool.chunks(), headers=headers)
    finally:
        spool.close()


async def native_get(request: web.Request) -> web.StreamResponse:
    """GET /props, /slots, ...: route by ``?model=``, else the default or the one running model."""
    config = request.app[CONFIG]
    swapper = request.app[SWAPPER]
    requested = request.query.get("model")
    if requested is None and config.default_model is None:
        running = swapper.running()
        if len(running) == 1:
            requested = running[0]
    model_id = resolve_model(config, requested)
    async with swapper.lease(model_id):
        return await forward(request, request.app[SESSION], config.models[model_id])


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
    acquire = asyncio.ensure_future(swapper.acquire(spec.id))
    try:
        while True:
            done, _ = await asyncio.wait({acquire}, timeout=1.0)
            if done:
                break
            slot = swapper.slot(spec.id)
            state = slot.process.state.value
            waiting = f", {swapper.queue_depth()} request(s) queued" if swapper.queue_depth() else ""
            await resp.write(_sse_chunk(shown_model, f"{spec.id}: {state}, {loop.time() - began:.0f}s elapsed{waiting}\n"))
        acquire.result()
    except SwapProxyError as err:
        await resp.write(_sse_chunk(shown_model, f"failed: {err.message}\n"))
        await resp.write(b"data: " + json.dumps(envelope(err.message, err.type, err.code)).encode() + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp
    finally:
        if not acquire.done():
            acquire.cancel()
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
                complete = await relay(upstream, resp, sse=True)
        finally:
            (upstream.release if complete else upstream.close)()
        await resp.write_eof()
        return resp
    finally:
        swapper.release(spec.id)


# -- model list ----------------------------------------------------------------------------
_STATUS_VALUE = {
    ProcessState.READY: "loaded",
    ProcessState.STARTING: "loading",
}


def _model_entry(config: Config, swapper: Swapper, spec: ModelConfig, shown_id: str, created: int) -> dict[str, Any]:
    proc = swapper.slot(spec.id).process
    status: dict[str, Any] = {"value": _STATUS_VALUE.get(proc.state, "unloaded"), "args": list(spec.cmd)}
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


async def list_models(request: web.Request) -> web.Response:
    """GET /v1/models and /models: every listed model with its state."""
    config = request.app[CONFIG]
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


# -- management basics ---------------------------------------------------------------------
async def health(request: web.Request) -> web.Response:
    swapper = request.app[SWAPPER]
    models = {
        mid: {"status": "running", "pid": slot.process.pid}
        for mid, slot in swapper.slots.items()
        if slot.process.state is ProcessState.READY
    }
    return web.json_response({"status": "ok", "models": models})


async def running(request: web.Request) -> web.Response:
    return web.json_response({"running": request.app[SWAPPER].running()})


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
    raise NotFound(f"model '{decoded.split('/')[0]}' not found in config")


async def upstream_passthrough(request: web.Request) -> web.StreamResponse:
    """/upstream/{model}/{path}: any method, raw to that model's server (started if needed)."""
    config = request.app[CONFIG]
    raw = request.raw_path.split("?", 1)
    tail = raw[0][len("/upstream/") :]
    model_id, rest = _model_for_path(config, tail)
    if any(seg in ("..", ".") for seg in unquote(rest).split("/")):
        raise BadRequest("path segments '.' and '..' are not allowed in /upstream/ paths")
    swapper = request.app[SWAPPER]
    if request.method == "DELETE" and rest == "":
        stopped = await swapper.unload(model_id, "unloaded via API")
        if stopped:
            return web.json_response({"status": "ok", "message": f"{model_id} stopped"})
        return web.json_response({"status": "error", "message": f"{model_id} is not running"})
    if request.method == "GET" and rest == "load":
        async with swapper.lease(model_id):
            pass
        return web.json_response({"status": "ok", "message": f"{model_id} is ready"})
    path_qs = "/" + rest + (("?" + raw[1]) if len(raw) > 1 else "")
    body = request.content if request.can_read_body else None
    async with swapper.lease(model_id):
        return await forward(request, request.app[SESSION], config.models[model_id], path_qs=path_qs, body=body)


async def unload_all(request: web.Request) -> web.Response:
    stopped = await request.app[SWAPPER].unload_all("unloaded via API")
    return web.json_response({"status": "ok", "message": f"stopped {len(stopped)} model(s)", "stopped": stopped})


async def unload_one(request: web.Request) -> web.Response:
    config = request.app[CONFIG]
    model_id = resolve_model(config, request.match_info["model"])
    stopped = await request.app[SWAPPER].unload(model_id, "unloaded via API")
    if stopped:
        return web.json_response({"status": "ok", "message": f"{model_id} stopped"})
    return web.json_response({"status": "error", "message": f"{model_id} is not running"})


def add_routes(app: web.Application) -> None:
    """Register every route; specific ones before the catch-alls."""
    r = app.router
    r.add_get("/health", health)
    r.add_get("/running", running)
    r.add_get("/v1/models", list_models)
    r.add_get("/models", list_models)
    r.add_get("/unload", unload_all)
    r.add_post("/api/models/unload", unload_all)
    r.add_post("/api/models/unload/{model:.+}", unload_one)
    for path in sorted(NATIVE_GET):
        r.add_get(path, native_get)
    r.add_route("*", "/upstream/{tail:.+}", upstream_passthrough)
    r.add_route("*", "/{tail:.*}", inference)
