"""make_app(config): the aiohttp application — routes, middlewares, resources.

Resources are ``cleanup_ctx`` context managers torn down in reverse order:
the shared client session, then the guardian and the managed processes, then
the swapper (whose teardown stops every upstream). Inference handlers are in
:mod:`swapproxy.handlers`, management ones in :mod:`swapproxy.management`;
this module wires them up.

Observability is wired here too: every process state change and every
upstream output line is published on the app's :class:`~swapproxy.events.EventBus`
and counted in its :class:`~swapproxy.metrics.Metrics`; swapproxy's own log
records go to the ``proxy`` log buffer. Middlewares, outermost first: metrics
(sees the final status), errors (the OpenAI envelope), auth.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from base64 import b64decode
from typing import Any

import aiohttp
from aiohttp import HttpVersion11, web
from aiohttp.web_protocol import RequestPayloadError

from .config import Config, ModelConfig
from .errors import (
    BadRequest,
    ExpectationFailed,
    NotFound,
    PayloadTooLarge,
    SwapProxyError,
    Unauthorized,
    envelope,
    error_response,
)
from .guardian import Guardian
from .statefile import RunRecord, reap_leftovers
from .events import EventBus
from .logs import BufferHandler, LogBuffer
from .metrics import Metrics
from .process import ManagedProcess
from .proxy import make_client_session
from .reload import ReloadState
from .states import ProcessState
from .swap import Swapper

__all__ = [
    "RELOAD",
    "MANAGEMENT_ROUTES",
    "make_app", "route_label", "CONFIG", "SWAPPER", "SESSION", "PROXY_LOG", "UPSTREAM_LOG", "ALL_LOG", "EVENTS",
    "METRICS", "CLOSING", "BACKGROUND", "STATE_SINCE", "STARTED", "MAX_BODY", "MODEL_KEY", "START_KEY",
]

logger = logging.getLogger(__name__)

CONFIG = web.AppKey("config", Config)
SWAPPER = web.AppKey("swapper", Swapper)
SESSION = web.AppKey("session", aiohttp.ClientSession)
PROXY_LOG = web.AppKey("proxy_log", LogBuffer)  # swapproxy's own log records
UPSTREAM_LOG = web.AppKey("upstream_log", LogBuffer)  # every model's output, "[model] line"
ALL_LOG = web.AppKey("all_log", LogBuffer)  # both of the above, in arrival order
EVENTS = web.AppKey("events", EventBus)
METRICS = web.AppKey("metrics", Metrics)
CLOSING = web.AppKey("closing", asyncio.Event)  # set at shutdown: long-lived streams end
BACKGROUND = web.AppKey("background", set[asyncio.Task[None]])  # loads started by the API
STATE_SINCE = web.AppKey("state_since", dict[str, float])  # model id -> time.time() of its last state change
STARTED = web.AppKey("started", float)
MAX_BODY = web.AppKey("max_body", int)
MANAGEMENT_ROUTES = web.AppKey("management_routes", frozenset[web.AbstractRoute])  # need management keys
RELOAD = web.AppKey("reload", ReloadState)  # outcome of the last config reload (for /info and the UI)

#: request keys: the model a handler resolved (the metrics' model label), when the request arrived
if hasattr(web, "RequestKey"):  # aiohttp >= 3.13: typed request storage
    MODEL_KEY: Any = web.RequestKey("swapproxy_model", str)
    START_KEY: Any = web.RequestKey("swapproxy_started", float)
else:  # pragma: no cover - older aiohttp
    MODEL_KEY = "swapproxy.model"
    START_KEY = "swapproxy.started"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_OPEN_PATHS = frozenset({"/health", "/health/liveness"})
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


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error swapproxy itself produces leaves as an OpenAI envelope, never a traceback."""
    try:
        return await handler(request)
    except SwapProxyError as err:
        return error_response(err)
    except RequestPayloadError as exc:
        return error_response(BadRequest(f"request body could not be read: {exc}"))
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


def _keys_for(request: web.Request) -> tuple[str, ...] | None:
    """The keys that open this request's route; None when no key is configured at all.

    Two tiers: management routes (those management.add_routes registers: load and
    unload, logs, events, metrics, info, the UI) take management keys; every other
    route (/v1/..., native llama-server routes, /upstream passthrough) takes
    inference keys. llama-swap's ``apiKeys`` open both. Read from the live config,
    so a reload changes keys at once.
    """
    config = request.app[SWAPPER].config
    if not (config.api_keys or config.inference_keys or config.management_keys):
        return None
    if request.match_info.route in request.app[MANAGEMENT_ROUTES]:
        return (*config.api_keys, *config.management_keys)
    return (*config.api_keys, *config.inference_keys)


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    keys = _keys_for(request)
    if keys is not None and request.path not in _OPEN_PATHS and not _key_ok(_presented_key(request), keys):
        if request.path == "/" or request.path.startswith(_BROWSER_PATHS):
            # Pages a person opens: let the browser ask (any user name, the key as password);
            # it then sends the same credentials with the page's own fetch/EventSource calls.
            resp = error_response(Unauthorized("invalid or missing API key"))
            resp.headers["WWW-Authenticate"] = 'Basic realm="swapproxy", charset="UTF-8"'
            return resp
        raise Unauthorized("invalid or missing API key")
    return await handler(request)


def route_label(request: web.Request) -> str:
    """The matched route's canonical path (a fixed set), never the raw URL."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else ""


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count every request by model, route and final status (499: the client went away)."""
    started = time.perf_counter()
    request[START_KEY] = started
    status = 500
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
        request.app[METRICS].observe_request(
            request.get(MODEL_KEY), route_label(request), status, time.perf_counter() - started
        )


async def _resources(app: web.Application) -> AsyncIterator[None]:
    from .management import model_snapshot  # late import: management uses the AppKeys defined here

    config = app[CONFIG]
    events = app[EVENTS]
    metrics = app[METRICS]
    upstream_log, all_log = app[UPSTREAM_LOG], app[ALL_LOG]
    session = make_client_session()
    app[SESSION] = session
    if config.state_dir:
        # Upstreams an earlier run left behind would hold our ports: stop them first.
        await asyncio.to_thread(reap_leftovers, config.state_dir)
    guardian = Guardian()
    await guardian.start()
    record = RunRecord(config.state_dir) if config.state_dir else None
    trackers = [guardian] if record is None else [guardian, record]
    echo_upstream = config.log_to_stdout in ("upstream", "both")

    def on_line(model: str, line: str) -> None:
        tagged = f"[{model}] {line}"
        upstream_log.append(tagged)
        all_log.append(tagged)
        events.publish({"type": "log", "source": model, "line": line})
        if echo_upstream:
            sys.stdout.write(tagged + "\n")

    def on_state(proc: ManagedProcess, old: ProcessState, new: ProcessState) -> None:
        current = app[SWAPPER].slots.get(proc.name) if SWAPPER in app else None
        if current is not None and current.process is not proc:
            return  # a process a reload retired or replaced: the model's row is another process now
        app[STATE_SINCE][proc.name] = time.time()
        metrics.on_state_change(proc, old, new)
        if events.subscriber_count and current is not None:
            events.publish({"type": "state", "old": old.value, **model_snapshot(app, proc.name)})

    def new_process(spec: ModelConfig, keys: tuple[str, ...]) -> ManagedProcess:
        return ManagedProcess(spec, trackers=trackers, session=session, on_line=on_line, secrets=keys)

    processes = {mid: new_process(spec, config.all_keys) for mid, spec in config.models.items()}
    for proc in processes.values():
        proc.add_listener(on_state)
    # Models a reload adds or changes get the same wiring, with the then-current keys.
    swapper = Swapper(config, processes, factory=lambda spec: new_process(spec, swapper.config.all_keys))
    swapper.swap_listeners.append(
        lambda reason, stopped: events.publish({"type": "swap", "reason": reason, "stopped": stopped})
    )
    swapper.process_listeners.append(lambda proc: proc.add_listener(on_state))  # models added by a reload
    app[SWAPPER] = swapper
    metrics.bind(swapper)
    proxy_handler = BufferHandler(
        app[PROXY_LOG], all_log, on_line=lambda line: events.publish({"type": "log", "source": "proxy", "line": line})
    )
    package_logger = logging.getLogger("swapproxy")
    package_logger.addHandler(proxy_handler)
    preload: asyncio.Task[None] | None = None
    if config.preload:
        preload = asyncio.ensure_future(swapper.preload(config.preload))
    try:
        yield
    finally:
        if preload is not None:
            preload.cancel()
        background: set[asyncio.Task[None]] = app[BACKGROUND]
        for task in list(background):
            task.cancel()
        await swapper.shutdown()
        package_logger.removeHandler(proxy_handler)
        await guardian.close()
        if record is not None:
            record.close()
        await session.close()


async def _on_shutdown(app: web.Application) -> None:
    # Runs before aiohttp waits for open connections: log and event streams end now
    # instead of holding the shutdown for its whole timeout; no model starts any more.
    app[CLOSING].set()
    if SWAPPER in app:
        app[SWAPPER].close()


async def _expect_handler(request: web.Request) -> web.StreamResponse | None:
    """``Expect: 100-continue`` is honoured; anything else gets 417 in the envelope.

    aiohttp's default handler echoes the header's value into a text response and
    fails with a bare 500 (outside every middleware) when that value is not UTF-8.
    """
    if request.version != HttpVersion11:
        return None
    if request.headers.get("Expect", "").lower() == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the main response has not started yet
        return None
    return error_response(ExpectationFailed("only 'Expect: 100-continue' is supported"))


def _use_expect_handler(app: web.Application) -> None:
    for route in app.router.routes():
        # No public setter exists; the attribute is what add_route(expect_handler=...) fills.
        route._expect_handler = _expect_handler  # type: ignore[attr-defined]


def make_app(config: Config) -> web.Application:
    """Build the application for ``config`` (resources start with the app)."""
    from . import handlers, management  # late import: they use the AppKeys defined here

    max_size = int(config.max_request_body_mb * 1024 * 1024)
    app = web.Application(
        middlewares=[metrics_middleware, error_middleware, auth_middleware], client_max_size=max_size
    )
    app[CONFIG] = config
    app[STARTED] = time.time()
    app[MAX_BODY] = max_size
    app[RELOAD] = ReloadState()
    app[PROXY_LOG] = LogBuffer("proxy")
    app[UPSTREAM_LOG] = LogBuffer("upstream")
    app[ALL_LOG] = LogBuffer("all", maxlen=2000)
    app[EVENTS] = EventBus()
    app[METRICS] = Metrics(config)
    app[CLOSING] = asyncio.Event()
    app[BACKGROUND] = set()
    app[STATE_SINCE] = {}
    app.cleanup_ctx.append(_resources)
    app.on_shutdown.append(_on_shutdown)
    management.add_routes(app)  # specific routes first: handlers ends with the catch-alls
    app[MANAGEMENT_ROUTES] = frozenset(app.router.routes())
    handlers.add_routes(app)
    _use_expect_handler(app)
    return app

