"""Resolution of the browser-facing settings: ``corsOrigins`` and ``allowedHosts``.

Both are read by :mod:`swapproxy.web.browser`. ``corsOrigins`` is llama-server's
``--cors-origins``: ``localhost`` (any ``http(s)://localhost``, ``127.x.x.x`` or ``[::1]``
origin, any port: the default), ``*`` (any origin), or exact origins such as
``http://localhost:3000``; a YAML list or one comma-separated string. ``allowedHosts``
lists the names the ``Host`` header may carry besides the ones always accepted; ``.example.com``
takes every subdomain of example.com, ``*`` turns the check off.
"""

from __future__ import annotations

import re
import urllib.parse

from .problems import _Report
from .schema import RawConfig

__all__ = ["_allowed_hosts", "_cors_origins"]

_DEFAULT_PORTS = {"http": 80, "https": 443}
_HOST_NAME = re.compile(r"\.?[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*")


def _origin(entry: str) -> str | None:
    """``scheme://host[:port]`` normalised as a browser sends it (lower case, no default port); None if not one."""
    try:
        parts = urllib.parse.urlsplit(entry)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname or parts.username is not None:
        return None
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}" + ("" if port in (None, _DEFAULT_PORTS[parts.scheme]) else f":{port}")


def _cors_origins(report: _Report, raw: RawConfig) -> tuple[str, ...]:
    value = raw.corsOrigins
    items = value.split(",") if isinstance(value, str) else value
    out: dict[str, None] = {}
    for i, item in enumerate(items):
        path = ("corsOrigins",) if isinstance(value, str) else ("corsOrigins", i)
        entry = item.strip().lower()
        if not entry and isinstance(value, str):
            continue
        normalised = entry if entry in ("*", "localhost") else _origin(entry)
        if normalised is None:
            report.problem(path, f"{item.strip()!r} is not an origin: use 'localhost', '*' or scheme://host[:port] "
                                 f"(e.g. http://localhost:3000), without a path")
            continue
        if normalised == "*":
            report.notice(path, "'*' lets every web page its visitors open use this server through their "
                                "browser (load, unload, inference); list the origins you need instead")
        out[normalised] = None
    return tuple(out)


def _allowed_hosts(report: _Report, raw: RawConfig) -> tuple[str, ...]:
    out: dict[str, None] = {}
    for i, item in enumerate(raw.allowedHosts):
        entry = item.strip().lower().rstrip(".")
        if entry != "*" and not _HOST_NAME.fullmatch(entry):
            report.problem(("allowedHosts", i), f"{item!r} is not a host name: give the name alone, without "
                                                "scheme, port or path ('.example.com' takes its subdomains)")
            continue
        out[entry] = None
    return tuple(out)
