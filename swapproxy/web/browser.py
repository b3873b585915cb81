"""Browser-facing rules: the request target, the Host header, CORS, and cross-site requests.

A default install listens on loopback without keys, and its operator's browser runs on the
same machine: any page they open can send requests to 127.0.0.1. Browsers say where a
request comes from (``Sec-Fetch-Site``, ``Origin``; page scripts cannot forge either), and
these rules use that; a client that sends neither (curl, SDKs, Open WebUI's backend) is not
a browser and passes as it always did. In the order :func:`browser_middleware` applies them:

1. **Request target**: only origin-form (``/path``); an absolute-form target
   (``POST http://x/...``, a forward-proxy request) is a 400, and nothing starts.
2. **Host** (DNS rebinding: a page whose name is made to resolve to 127.0.0.1 is
   same-origin with us from the browser's view, but its requests carry its own name in
   ``Host``): IP literals are always accepted (LAN access by IP, peers, gateways), and so are
   ``localhost`` and ``*.localhost``, this machine's name, ``host.docker.internal`` and the
   names in ``allowedHosts``; any other name gets 421.
3. **OPTIONS** is answered here, never passed on, so no OPTIONS request starts a model. A CORS
   preflight is answered as llama-server answers it: for an allowed origin (``corsOrigins``,
   default ``localhost``: every localhost origin) the origin is reflected with credentials,
   ``GET, POST, DELETE, OPTIONS`` and any header; for another origin, 200 without them, so
   the browser refuses. No key is needed: browsers send none with a preflight.
4. **Cross-site**: a route whose kind acts (:class:`~.runtime.Kind`: inference, load/unload,
   profile switching, request cancel, slot actions, and every WebSocket upgrade) refuses a
   browser request from a page that is neither ours nor of an allowed origin (403). This
   holds with keys configured too: browsers replay cached Basic credentials.
5. **Form bodies**: a route that takes a JSON body refuses a body a form could send (no
   preflight needed: ``text/plain``, ``application/x-www-form-urlencoded``, or no type) from
   any other origin, allowed or not (415): a page must send ``application/json``, which the
   browser checks with a preflight first.

Responses to an allowed origin carry ``Access-Control-Allow-Origin`` (and credentials), set
in :func:`add_cors_headers` on the app's ``on_response_prepare`` (streamed responses too),
unless the upstream already set its own.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from aiohttp import web

from ..config import Config
from ..errors import BadRequest, CrossSiteRefused, HostNotAllowed, SwapProxyError, UnsupportedMediaType
from .runtime import Kind, route_tag, runtime

__all__ = ["browser_middleware", "add_cors_headers", "browser_refusal", "host_allowed", "origin_allowed",
           "cross_site", "CORS_METHODS"]

logger = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: What a preflight answer allows (llama-server's defaults: --cors-methods, --cors-headers).
CORS_METHODS = "GET, POST, DELETE, OPTIONS"
CORS_HEADERS = "*"
_BUILTIN_HOSTS = frozenset({"localhost", "host.docker.internal"})
#: Body types a page can send to another origin without a preflight (others make the browser ask first).
_FORM_TYPES = frozenset({"text/plain", "application/x-www-form-urlencoded"})
_SHOWN = 100  # at most this much of a refused Host or Origin is echoed in an error


@functools.cache
def _machine_names() -> frozenset[str]:
    """This machine's names: its host name, the name's first label, and that label in ``.local`` (mDNS)."""
    name = socket.gethostname().lower().rstrip(".")
    short = name.split(".")[0]
    return frozenset(n for n in (name, short, f"{short}.local") if n)


def _host_name(host: str) -> str | None:
    """The name in a Host header value; None when it is an IP literal (always accepted)."""
    if host.startswith("["):
        return None  # an IPv6 literal: a rebinding page cannot use one (browsers send a name)
    name = host.rpartition(":")[0] if host.count(":") == 1 else host
    name = name.lower().rstrip(".")
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return name
    return None


def host_allowed(host: str, config: Config) -> bool:
    """Whether a Host header value is one this server answers for (module docstring, rule 2)."""
    return _host_allowed(host, config.allowed_hosts)


@functools.lru_cache(maxsize=256)  # clients send the same few Host values, once per request
def _host_allowed(host: str, allowed: tuple[str, ...]) -> bool:
    name = _host_name(host)
    if name is None or name in _BUILTIN_HOSTS or name.endswith(".localhost") or name in _machine_names():
        return True
    for entry in allowed:
        if entry == "*" or name == entry or (entry.startswith(".") and name.endswith(entry)):
            return True
    return False


def _local_origin(origin: str) -> bool:
    """llama-server's ``localhost`` origins: http(s) on localhost, ``*.localhost`` or a loopback IP, any port."""
    try:
        parts = urlsplit(origin)
        _ = parts.port  # a malformed port makes it no origin at all
    except ValueError:
        return False
    host = (parts.hostname or "").rstrip(".")
    if parts.scheme not in ("http", "https") or not host:
        return False
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def origin_allowed(origin: str, config: Config) -> bool:
    """Whether pages of ``origin`` may use this server (``corsOrigins``)."""
    entries = config.cors_origins
    if not entries:
        return False
    shown = origin.lower().rstrip("/")
    for entry in entries:
        if entry == "*" or entry == shown or (entry == "localhost" and _local_origin(shown)):
            return True
    return False


def _same_origin(origin: str, host: str | None) -> bool:
    """Whether ``origin`` is this server as the client addressed it (its ``Host``)."""
    try:
        return host is not None and urlsplit(origin).netloc.lower() == host.lower()
    except ValueError:
        return False


def cross_site(request: web.Request, config: Config) -> bool:
    """Whether a browser sent ``request`` from a page that is neither ours nor of an allowed origin."""
    headers = request.headers
    site = headers.get("Sec-Fetch-Site")
    origin = headers.get("Origin")
    if site is None and origin is None:
        return False  # not a browser (or one too old to say; it still sends Origin on a POST)
    if site in ("same-origin", "none"):  # "none": the person typed the address or used a bookmark
        return False
    if origin is None or origin == "null":
        return True  # another site, and none it would name: nothing to allow
    if _same_origin(origin, headers.get("Host")):
        return False
    return not origin_allowed(origin, config)


def _other_origin(request: web.Request) -> bool:
    """Whether a browser sent ``request`` from any page other than ours (an allowed origin included)."""
    headers = request.headers
    site = headers.get("Sec-Fetch-Site")
    origin = headers.get("Origin")
    if site is not None:
        return site not in ("same-origin", "none")
    return origin is not None and not _same_origin(origin, headers.get("Host"))


def _takes_json(request: web.Request) -> bool:
    """Whether the matched route's handler takes a JSON body (it documents one with ``@api(body=...)``)."""
    info = getattr(request.match_info.handler, "__openapi__", None)
    return info is not None and info.body is not None


def _shown(value: str) -> str:
    return value if len(value) <= _SHOWN else value[:_SHOWN] + "..."


def browser_refusal(request: web.Request) -> SwapProxyError | None:
    """The error this request gets under rules 1, 2, 4 and 5 (module docstring); None when it may go on."""
    raw = request.raw_path
    if not raw.startswith("/") and not (raw == "*" and request.method == "OPTIONS"):
        return BadRequest("the request target must be a path (/v1/...): swapproxy is not a forward proxy")
    config = runtime(request).config
    host = request.headers.get("Host")
    if host is not None and not host_allowed(host, config):
        return HostNotAllowed(
            f"Host '{_shown(host)}' is not a name this server answers for; add it to allowedHosts in the "
            "config (IP addresses, localhost and this machine's name are always accepted)")
    if request.method == "OPTIONS":
        return None  # answered by the middleware itself
    tag = route_tag(request)
    kind = Kind.WEBSOCKET if "websocket" in request.headers.get("Upgrade", "").lower() else (
        tag.kind if tag is not None else Kind.READ)
    if not kind.acts:
        return None
    if cross_site(request, config):
        origin = request.headers.get("Origin")
        return CrossSiteRefused(
            f"a web page of another site ({_shown(origin) if origin else 'unnamed'}) may not use "
            f"{request.method} {_shown(request.path)}; to let one, add its origin to corsOrigins in the config")
    if request.body_exists and _takes_json(request) and _other_origin(request):
        content_type = request.headers.get("Content-Type")
        if content_type is None or request.content_type in _FORM_TYPES:
            return UnsupportedMediaType("a request from another origin must send its JSON body as "
                                        "Content-Type: application/json")
    return None


def _preflight(request: web.Request) -> web.Response:
    """OPTIONS, answered here: CORS headers for an allowed origin, nothing for another (rule 3)."""
    resp = web.Response(status=200)
    origin = request.headers.get("Origin")
    if origin is not None and origin_allowed(origin, runtime(request).config):
        resp.headers["Access-Control-Allow-Methods"] = CORS_METHODS
        resp.headers["Access-Control-Allow-Headers"] = CORS_HEADERS
    return resp  # add_cors_headers adds the origin and credentials on the way out


@web.middleware
async def browser_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    refusal = browser_refusal(request)
    if refusal is not None:
        raise refusal
    if request.method == "OPTIONS":
        return _preflight(request)
    return await handler(request)


async def add_cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: reflect an allowed origin, with credentials (llama-server's way)."""
    origin = request.headers.get("Origin")
    if origin is None or "Access-Control-Allow-Origin" in response.headers:
        return
    if origin_allowed(origin, runtime(request).config):
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Allow-Credentials"] = "true"
        response.headers.add("Vary", "Origin")
