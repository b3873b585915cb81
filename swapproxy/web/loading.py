"""The loading state (``sendLoadingState``): a streamed chat request for a model that is not ready.

swapproxy answers 200 with an event stream at once, keeps it going while the
model starts, then relays the upstream's own stream into the same response
through the one forwarding path (:func:`~swapproxy.web.forward.observed_forward`).
Two modes:

* ``true`` (llama-swap's): the progress is written as ``reasoning_content``
  chunks, for UIs that render it. They carry the id ``swapproxy-loading`` and the
  upstream's model name (what its own chunks will say: llama-server's alias, as
  its ``/props`` reported it when it last ran, else the name the request sends
  upstream). Clients keep them as part of the answer.
* ``keepalive`` (swapproxy's): SSE comment lines only, which every SSE parser
  skips; a client's records hold nothing but the upstream's own chunks.

Refusals that need no waiting (429 at the concurrency limit, 503 while
shutting down, within a failed start's back-off or with the breaker open) are
answered as plain errors before any of this (:meth:`Scheduler.admit`). After
the 200, an error can only be an event: a failed start is swapproxy's error
envelope; an upstream's error answer is the upstream's own error object; either
way the stream then ends without ``[DONE]``, as llama-server ends a stream that
failed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from aiohttp import web

from ..config import ModelConfig
from ..errors import SwapProxyError
from ..scheduler import Lease
from ..status import model_status
from . import sse
from .forward import note_lease, observed_forward, tracked
from .runtime import RESPONDING_KEY, note_of, runtime

__all__ = ["stream_with_loading_state", "LOADING_ID", "PROGRESS_EVERY"]

#: Seconds between two progress chunks (or comment lines) while the model starts.
PROGRESS_EVERY = 1.0
#: The id of every loading chunk (``sendLoadingState: true``): a client can tell them apart.
LOADING_ID = "swapproxy-loading"

Report = Callable[[str], bytes]


def _chunk(model: str, text: str) -> bytes:
    return sse.event({
        "id": LOADING_ID,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": {"reasoning_content": text}, "finish_reason": None}],
    })


def _reporter(spec: ModelConfig, upstream_name: str) -> Report:
    """How progress is written: a comment line (keepalive), or a reasoning_content chunk."""
    if spec.send_loading_state == "keepalive":
        return lambda text: sse.comment(f"swapproxy: {text}")
    return lambda text: _chunk(upstream_name, text + "\n")


async def stream_with_loading_state(
    request: web.Request, spec: ModelConfig, body: bytes, upstream_name: str, *,
    release: Callable[[], None] | None = None
) -> web.StreamResponse:
    """Answer 200 SSE at once, report loading progress, then relay the upstream's own stream
    (a request in flight from the start, see :func:`~swapproxy.web.forward.tracked`).

    The caller has asked :meth:`~swapproxy.scheduler.Scheduler.admit` first, so that what is
    refused at once is refused with its status, not inside a 200.
    """
    report = _reporter(spec, runtime(request).upstream_props.name(spec) or upstream_name)
    return await tracked(request, spec.id, lambda: _loading_then_relay(request, spec, body, report), release)


def _note_error(request: web.Request, err: SwapProxyError) -> None:
    """The request's history keeps the error its client got inside the 200."""
    note = note_of(request)
    if note is not None:
        note.error = err.message


async def _end_with(resp: web.StreamResponse, *events: bytes) -> web.StreamResponse:
    for data in events:
        await resp.write(data)
    await resp.write_eof()
    return resp


async def _loading_then_relay(request: web.Request, spec: ModelConfig, body: bytes,
                              report: Report) -> web.StreamResponse:
    scheduler = runtime(request).scheduler
    resp = web.StreamResponse(status=200, headers=sse.HEADERS)
    request[RESPONDING_KEY] = True
    await resp.prepare(request)
    loop = asyncio.get_running_loop()
    began = loop.time()
    evicting = scheduler.evictions_for(spec.id)
    await resp.write(report((f"stopping {', '.join(evicting)}; " if evicting else "") + f"starting {spec.id}"))
    acquire = asyncio.ensure_future(scheduler.acquire(spec.id))
    lease: Lease | None = None
    try:
        while True:
            done, _ = await asyncio.wait({acquire}, timeout=PROGRESS_EVERY)
            if done:
                break
            status = model_status(scheduler, spec.id)
            depth = scheduler.queue_depth()
            waiting = f", {depth} request(s) queued" if depth else ""
            where = status.progress.describe() if status.progress is not None else (
                f"{status.state.value}, {loop.time() - began:.0f}s elapsed")  # (waiting for a swap)
            await resp.write(report(f"{spec.id}: {where}{waiting}"))
        lease = acquire.result()
    except SwapProxyError as err:
        failed = report(f"failed: {err.message}") if spec.send_loading_state is True else b""
        _note_error(request, err)
        return await _end_with(resp, failed, sse.error_event(err.message, err.type, err.code))
    finally:
        if not acquire.done():
            acquire.cancel()  # acquire lets go of whatever it held
        elif lease is None and not acquire.cancelled() and acquire.exception() is None:
            acquire.result().release()  # ready in the very turn our client left: give it back
    note_lease(request, lease)
    try:
        await resp.write(report(f"{spec.id} ready after {loop.time() - began:.1f}s"))
        return await observed_forward(request, spec, body=body, into=resp)
    except SwapProxyError as err:  # the upstream could not be reached, or did not answer in time
        _note_error(request, err)
        return await _end_with(resp, sse.error_event(err.message, err.type, err.code))
    finally:
        lease.release()
