"""Middlewares, outermost first: metrics (sees the final status), errors (the OpenAI envelope),
the browser rules (:mod:`.browser`: request target, Host, OPTIONS and CORS, cross-site), auth.

Also the ``Expect`` handler, which aiohttp runs before any middleware: it applies the
browser rules and auth itself, so ``100 Continue`` never invites the body of a request that
is then refused.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from base64 import b64decode
from collections.abc import Awaitable, Callable

from aiohttp import HttpVersion11, web
from aiohttp.web_protocol import RequestPayloadError

from ..errors import (
    BadRequest,
    ExpectationFailed,
    NotFound,
    SwapProxyError,
    Unauthorized,
    envelope,
    error_response,
)
from .browser import browser_middleware, browser_refusal
from .forward import record_request
from .runtime import MODEL_KEY, NOTE_KEY, START_KEY, Tier, route_label, route_tag, runtime
from .spool import too_large

__all__ = ["LLAMACTL_PREFIX", "MIDDLEWARES", "opens_inference", "use_expect_handler"]

logger = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_OPEN_PATHS = frozenset({"/health", "/health/liveness", "/v1/health", "/wol-health"})
_BROWSER_PATHS = ("/ui", "/swagger")  # a 401 here asks the browser for credentials (Basic)


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
    # aiohttp decodes header bytes that are not UTF-8 as surrogates: encode them back, never fail.
    given = presented.encode("utf-8", "surrogateescape")
    ok = False
    for key in keys:  # compare against every key: timing does not reveal which matched
        ok |= hmac.compare_digest(given, key.encode())
    return ok


#: llamactl's routes: errors there are llamactl's body, ``{"error": "message"}`` (its API reference)
LLAMACTL_PREFIX = "/api/v1/"


def _error(request: web.Request, err: SwapProxyError) -> web.Response:
    """``err`` in the body shape of the request's API: llamactl's below /api/v1/, else OpenAI's envelope."""
    return error_response(err, plain=request.path.startswith(LLAMACTL_PREFIX))


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error swapproxy itself produces leaves as an OpenAI envelope (llamactl's body on its
    routes), never a traceback."""
    try:
        return await handler(request)
    except SwapProxyError as err:
        return _error(request, err)
    except RequestPayloadError as exc:
        return _error(request, BadRequest(f"request body could not be read: {exc}"))
    except web.HTTPRequestEntityTooLarge:
        return _error(request, too_large(runtime(request).max_body))
    except web.HTTPNotFound:
        return _error(request, NotFound(f"no route for {request.method} {request.path}"))
    except web.HTTPMethodNotAllowed as exc:
        resp = _error(request, SwapProxyError(f"method {request.method} not allowed on {request.path}"))
        resp.set_status(405)
        resp.headers["Allow"] = ",".join(sorted(exc.allowed_methods))
        return resp
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if request.path.startswith(LLAMACTL_PREFIX):
            return web.json_response({"error": exc.reason}, status=exc.status)
        body = envelope(exc.reason, "invalid_request_error" if exc.status < 500 else "server_error", str(exc.status))
        return web.json_response(body, status=exc.status)
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        logger.exception("unhandled error in %s %s", request.method, request.path)
        return _error(request, SwapProxyError("internal error in swapproxy; see its log"))


def _keys_for(request: web.Request) -> tuple[str, ...] | None:
    """The keys that open this request's route; None when no key is configured at all.

    Two tiers: management routes (load and unload, logs, events, metrics, info, the
    UI) take management keys; every other route (/v1/..., native llama-server routes,
    /upstream passthrough) takes inference keys. llama-swap's ``apiKeys`` open both.
    Read from the live config, so a reload changes keys at once.
    """
    rt = runtime(request)
    config = rt.config
    if not (config.api_keys or config.inference_keys or config.management_keys):
        return None
    tag = route_tag(request)
    if tag is not None and tag.tier is Tier.MANAGEMENT:
        return (*config.api_keys, *config.management_keys)
    return (*config.api_keys, *config.inference_keys)


def opens_inference(request: web.Request) -> bool:
    """Whether the key this request presents (or none, when no key is configured) opens the
    inference routes: the UI's playground asks before it calls them with the browser's
    credentials, which a browser forgets on a 401 (the whole UI would lose them)."""
    config = runtime(request).config
    if not (config.api_keys or config.inference_keys or config.management_keys):
        return True
    return _key_ok(_presented_key(request), (*config.api_keys, *config.inference_keys))


def _auth_refusal(request: web.Request) -> web.Response | None:
    """The 401 this request gets, or None when its key opens its route (or no key is configured)."""
    keys = _keys_for(request)
    if keys is None or request.path in _OPEN_PATHS or _key_ok(_presented_key(request), keys):
        return None
    resp = _error(request, Unauthorized("invalid or missing API key"))
    if request.path == "/" or request.path.startswith(_BROWSER_PATHS):
        # Pages a person opens: let the browser ask (any user name, the key as password);
        # it then sends the same credentials with the page's own fetch/EventSource calls.
        resp.headers["WWW-Authenticate"] = 'Basic realm="swapproxy", charset="UTF-8"'
    return resp


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    refusal = _auth_refusal(request)
    if refusal is not None:
        return refusal
    return await handler(request)


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count every request by model, route and final status (499: the client went away); a proxied
    request (one with a history note) goes to the request history too."""
    started = time.perf_counter()
    request[START_KEY] = started
    status = 500
    resp: web.StreamResponse | None = None
    try:
        resp = await handler(request)
        status = resp.status
        return resp
    except web.HTTPException as exc:
        status = exc.status
        raise
    except (asyncio.CancelledError, ConnectionResetError):
        status = 499
        raise
    finally:
        seconds = time.perf_counter() - started
        runtime(request).metrics.observe_request(request.get(MODEL_KEY), route_label(request), status, seconds)
        note = request.get(NOTE_KEY)
        if note is not None:
            record_request(request, note, status, resp, seconds)


MIDDLEWARES = (metrics_middleware, error_middleware, browser_middleware, auth_middleware)


async def _expect_handler(request: web.Request) -> web.StreamResponse | None:
    """``Expect: 100-continue`` is honoured once the request passes the browser rules and auth.

    A request they refuse gets its refusal instead of ``100 Continue``; any other Expect
    value gets 417 in the envelope.

    aiohttp's default handler echoes the header's value into a text response and
    fails with a bare 500 (outside every middleware) when that value is not UTF-8.
    """
    if request.version != HttpVersion11:
        return None
    if request.headers.get("Expect", "").lower() == "100-continue":
        # What the middlewares would refuse is refused now, before the client sends its body.
        refused = browser_refusal(request)
        if refused is not None:
            return _error(request, refused)
        denied = _auth_refusal(request)
        if denied is not None:
            return denied
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the main response has not started yet
        return None
    return _error(request, ExpectationFailed("only 'Expect: 100-continue' is supported"))


def use_expect_handler(app: web.Application) -> None:
    """Put :func:`_expect_handler` on every route registered so far."""
    for route in app.router.routes():
        # No public setter exists; the attribute is what add_route(expect_handler=...) fills.
        route._expect_handler = _expect_handler  # type: ignore[attr-defined]
