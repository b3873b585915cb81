"""make_app(config): the aiohttp application — routes, middlewares, resources.

Resources are ``cleanup_ctx`` context managers torn down in reverse order:
the shared client session, then the guardian and the managed processes, then
the swapper (whose teardown stops every upstream). Inference handlers are in
:mod:`swapproxy.handlers`; this module wires them up.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from base64 import b64decode

import aiohttp
from aiohttp import web

from .config import Config
from .errors import (
    NotFound,
    PayloadTooLarge,
    SwapProxyError,
    Unauthorized,
    envelope,
    error_response,
)
from .guardian import Guardian
from .logs import LogBuffer
from .process import ManagedProcess
from .proxy import make_client_session
from .swap import Swapper

__all__ = ["make_app", "CONFIG", "SWAPPER", "SESSION", "PROXY_LOG", "STARTED", "MAX_BODY"]

logger = logging.getLogger(__name__)

CONFIG = web.AppKey("config", Config)
SWAPPER = web.AppKey("swapper", Swapper)
SESSION = web.AppKey("session", aiohttp.ClientSession)
PROXY_LOG = web.AppKey("proxy_log", LogBuffer)
STARTED = web.AppKey("started", float)
MAX_BODY = web.AppKey("max_body", int)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_OPEN_PATHS = frozenset({"/health", "/health/liveness"})


def _presented_key(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value:
        return value.strip()
    if scheme.lower() == "basic" and value:
        try:
            return b64decode(value.strip()).decode("utf-8").partition(":")[2]
        except (ValueError, UnicodeDecodeError):
            return None
    return request.headers.get("x-api-key")


def _key_ok(presented: str | None, keys: tuple[str, ...]) -> bool:
    if presented is None:
        return False
    ok = False
    for key in keys:  # compare against every key: timing does not reveal which matched
        ok |= hmac.compare_digest(presented.encode(), key.encode())
    return ok


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error swapproxy itself produces leaves as an OpenAI envelope, never a traceback."""
    try:
        return await handler(request)
    except SwapProxyError as err:
        return error_response(err)
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[MAX_BODY]
        return error_response(
            PayloadTooLarge(f"request body is larger than the limit of {limit} bytes (maxRequestBodyMB)")
        )
    except web.HTTPNotFound:
        return error_response(NotFound(f"no route for {request.method} {request.path}"))
    except web.HTTPMethodNotAllowed as exc:
        resp = error_response(SwapProxyError(f"method {request.method} not allowed on {request.path}"))
        resp.set_status(405)
        resp.headers["Allow"] = ",".join(sorted(exc.allowed_methods))
        return resp
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        body = envelope(exc.reason, "invalid_request_error" if exc.status < 500 else "server_error", str(exc.status))
        return web.json_response(body, status=exc.status)
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        logger.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(SwapProxyError("internal error in swapproxy; see its log"))


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    keys = request.app[CONFIG].api_keys
    if keys and request.path not in _OPEN_PATHS and not _key_ok(_presented_key(request), keys):
        raise Unauthorized("invalid or missing API key")
    return await handler(request)


async def _resources(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    session = make_client_session()
    app[SESSION] = session
    guardian = Guardian()
    await guardian.start()
    echo_upstream = config.log_to_stdout in ("upstream", "both")

    def on_line(model: str, line: str) -> None:
        if echo_upstream:
            sys.stdout.write(f"[{model}] {line}\n")

    processes = {
        mid: ManagedProcess(spec, guardian=guardian, session=session, on_line=on_line)
        for mid, spec in config.models.items()
    }
    swapper = Swapper(config, processes)
    app[SWAPPER] = swapper
    preload: asyncio.Task[None] | None = None
    if config.preload:
        preload = asyncio.ensure_future(swapper.preload(config.preload))
    try:
        yield
    finally:
        if preload is not None:
            preload.cancel()
        await swapper.shutdown()
        await guardian.close()
        await session.close()


def make_app(config: Config) -> web.Application:
    """Build the application for ``config`` (resources start with the app)."""
    from . import handlers  # late import: handlers use the AppKeys defined here

    max_size = int(config.max_request_body_mb * 1024 * 1024)
    app = web.Application(middlewares=[error_middleware, auth_middleware], client_max_size=max_size)
    app[CONFIG] = config
    app[STARTED] = time.time()
    app[MAX_BODY] = max_size
    app[PROXY_LOG] = LogBuffer("proxy")
    app.cleanup_ctx.append(_resources)
    handlers.add_routes(app)
    return app

