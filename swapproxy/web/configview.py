"""The config view's routes: the config files as text, and a save that validates and applies as a reload does.

* ``GET /api/config`` → ``{"version", "files": [{"path", "text", "writable",
  "read_only_reason", "unsaved"}], "on_read_only", "edits"}``: every source file in merge order
  (the ``-c`` file, then ``--config-dir``'s), exactly as on disk (or as kept in memory);
* ``PUT /api/config`` with ``{"path", "text", "version"}`` replaces one file's text:
  validated like a reload (400 ``config_invalid`` with ``problems``: file, line, key path,
  message — nothing written), written atomically, applied as a diff (unchanged models keep
  running). ``version`` is required: 409 ``config_changed`` when the files changed since; 403
  ``config_read_only`` when the file cannot be written (unless ``instances.onReadOnly: memory``).

Management tier; the save is ``Kind.CONFIG`` (refused cross-site). The files are shown as they
are, keys written in them included: keep secrets in ``${env.X}``.
"""

from __future__ import annotations

from aiohttp import web

from ..errors import BadRequest
from ..routing import parse_json_body
from .openapi import api
from .runtime import Kind, RouteTag, Tier, register, runtime

__all__ = ["add_routes"]


@api(tag="config")
async def get_config(request: web.Request) -> web.Response:
    """The config files' text and version (what the UI's config editor shows)."""
    rt = runtime(request)
    version, files = await rt.store.files()
    resp = web.json_response({"version": version, "files": [f.as_json() for f in files],
                              "on_read_only": rt.config.instances.on_read_only,
                              "edits": rt.config.instances.edits})
    resp.headers["ETag"] = f'"{version}"'
    return resp


@api(tag="config", body={"path": "/etc/swapproxy/config.yaml", "text": "models: ...", "version": "3f2a..."})
async def put_config(request: web.Request) -> web.Response:
    """Replace one config file's text: validated like a reload, written, applied as a diff."""
    rt = runtime(request)
    body = parse_json_body(await request.read())
    path, text, version = (_text(body, key) for key in ("path", "text", "version"))
    edited = await rt.store.replace_file(path, text, version)
    resp = web.json_response({"version": edited.version, "file": edited.file, "saved": edited.saved,
                              "reason": edited.reason, "report": edited.report})
    resp.headers["ETag"] = f'"{edited.version}"'
    return resp


def _text(body: dict[str, object], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or (key != "text" and not value):
        raise BadRequest(f"'{key}' must be a string" + ("" if key == "text" else " (from GET /api/config)"), param=key)
    return value


def add_routes(app: web.Application, tags: dict[web.AbstractRoute, RouteTag]) -> None:
    """Register ``/api/config`` (management tier)."""
    register(app, tags, Tier.MANAGEMENT, [("GET", "/api/config", get_config, Kind.READ),
                                          ("PUT", "/api/config", put_config, Kind.CONFIG)])
