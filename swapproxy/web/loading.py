"""The loading state (``sendLoadingState``): a streamed chat request for a model that is not ready.

swapproxy answers 200 with an event stream at once, reports the swap's
progress in ``reasoning_content`` chunks while the model starts, then relays
the upstream's own stream into the same response through the one forwarding
path (:func:`~swapproxy.web.forward.observed_forward`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from aiohttp import web

from ..config import ModelConfig
from ..errors import SwapProxyError
from ..scheduler import Lease
from . import sse
from .forward import observed_forward, tracked
from .runtime import RESPONDING_KEY, runtime

__all__ = ["stream_with_loading_state"]

#: Seconds between two progress chunks while the model starts.
PROGRESS_EVERY = 1.0


def _chunk(model: str, text: str) -> bytes:
    return sse.event({
        "id": "swapproxy-loading",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": {"reasoning_content": text}, "finish_reason": None}],
    })


async def stream_with_loading_state(
    request: web.Request, spec: ModelConfig, body: bytes, shown_model: str, *, release: Callable[[], None] | None = None
) -> web.StreamResponse:
    """Answer 200 SSE at once, report loading progress, then relay the upstream's own stream
    (a request in flight from the start, see :func:`~swapproxy.web.forward.tracked`)."""
    return await tracked(request, spec.id, lambda: _loading_then_relay(request, spec, body, shown_model), release)


async def _loading_then_relay(request: web.Request, spec: ModelConfig, body: bytes,
                              shown_model: str) -> web.StreamResponse:
    scheduler = runtime(request).scheduler
    resp = web.StreamResponse(status=200, headers=sse.HEADERS)
    request[RESPONDING_KEY] = True
    await resp.prepare(request)
    loop = asyncio.get_running_loop()
    began = loop.time()
    evicting = scheduler.evictions_for(spec.id)
    plan = (f"stopping {', '.join(evicting)}; " if evicting else "") + f"starting {spec.id}\n"
    await resp.write(_chunk(shown_model, plan))
    acquire = asyncio.ensure_future(scheduler.acquire(spec.id))
    lease: Lease | None = None
    try:
        while True:
            done, _ = await asyncio.wait({acquire}, timeout=PROGRESS_EVERY)
            if done:
                break
            state = scheduler.slot(spec.id).process.state.value
            depth = scheduler.queue_depth()
            waiting = f", {depth} request(s) queued" if depth else ""
            await resp.write(_chunk(shown_model, f"{spec.id}: {state}, {loop.time() - began:.0f}s elapsed{waiting}\n"))
        lease = acquire.result()
    except SwapProxyError as err:
        await resp.write(_chunk(shown_model, f"failed: {err.message}\n"))
        await resp.write(sse.error_event(err.message, err.type, err.code))
        await resp.write(sse.DONE)
        await resp.write_eof()
        return resp
    finally:
        if not acquire.done():
            acquire.cancel()  # acquire lets go of whatever it held
        elif lease is None and not acquire.cancelled() and acquire.exception() is None:
            acquire.result().release()  # ready in the very turn our client left: give it back
    try:
        await resp.write(_chunk(shown_model, f"{spec.id} ready after {loop.time() - began:.1f}s\n"))
        return await observed_forward(request, spec, body=body, into=resp)
    finally:
        lease.release()
