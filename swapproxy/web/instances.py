"""llamactl's API (``/api/v1/...``) on swapproxy's models: instances created, changed and removed at runtime.

Every configured model is an instance; its name is the model id. The routes and shapes are
llamactl's API reference's:

* ``GET /api/v1/instances`` and ``GET /api/v1/instances/{name}``: ``{"name", "status",
  "created"}``; status is ``stopped``, ``starting``, ``running``, ``stopping`` or ``failed``
  (swapproxy's process states, :data:`STATUS`). One instance also carries ``options``: its
  entry as the config file has it;
* ``POST /api/v1/instances/{name}`` creates a model (201; 409 if one has the name) from
  llamactl's options (:mod:`swapproxy.llamactl`) and starts it (``?start=0``: not);
  ``PUT`` changes it (a running model that changed is restarted once its requests are done);
  ``DELETE`` stops and removes it (204). These go through :mod:`swapproxy.configstore`:
  validated like a reload, written to the config file, applied as a diff. ``If-Match`` (or
  ``?version=``) names the config version the change was made against: 409 when the files
  have another. Answers carry the version as ``ETag``;
* ``POST .../{name}/start`` (answers at once, ``starting``), ``/stop`` (once stopped;
  ``?force=1`` cuts its requests), ``/restart``; ``GET .../{name}/logs?lines=N`` (plain text;
  all lines by default or with -1); ``.../{name}/proxy/{path}``: to the instance's own server,
  the prefix stripped, 503 while it is not running (it is not started for it);
* ``GET /api/v1/version`` and ``GET /api/v1/server/help|version|devices`` (the configured
  llama-server's answers, :mod:`swapproxy.llamabin`), all plain text.

Errors here are llamactl's body, ``{"error": "..."}`` (see :mod:`.middleware`). llamactl's
"maximum running instances" 409 does not arise: starting a model stops the ones swapproxy's
rules say it may not run beside. Management tier; creating, changing and deleting are
``Kind.CONFIG``, start/stop/restart ``Kind.LOAD``, so the browser rules refuse them cross-site.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import Any

from aiohttp import web

from .. import __version__
from ..config.edit import EditError, model_entry, remove_model, set_model, update_model
from ..configstore import Edited
from ..errors import BadRequest, Conflict, NotFound, NotRunning
from ..llamabin import INFO_FLAGS, ServerInfo, llama_server
from ..llamactl import BodyError, entry_changes
from ..routing import parse_json_body
from ..states import ProcessState
from .forward import publish_inflight
from .openapi import api
from .runtime import Kind, RouteTag, Runtime, Tier, register, runtime
from .upstream import FORCE_QUERY, force_param, passthrough

__all__ = ["STATUS", "add_routes", "instance_json"]

logger = logging.getLogger(__name__)

#: llamactl's status for each of swapproxy's process states.
STATUS = {ProcessState.STOPPED: "stopped", ProcessState.STARTING: "starting", ProcessState.READY: "running",
          ProcessState.STOPPING: "stopping", ProcessState.FAILED: "failed", ProcessState.SHUTDOWN: "stopped"}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@+-]{0,127}")
_INFO = web.AppKey("server_info", ServerInfo)
_VERSION_QUERY = [("version", "the config version the change was made against (or If-Match); 409 if stale")]


def instance_json(rt: Runtime, model_id: str, status: str | None = None) -> dict[str, Any]:
    """llamactl's instance object, plus swapproxy's pid and port (and the error of a failed start)."""
    proc = rt.scheduler.slot(model_id).process
    out: dict[str, Any] = {"name": model_id, "status": status or STATUS[proc.state],
                           "created": int(rt.created.get(model_id, rt.started)), "pid": proc.pid,
                           "port": proc.spec.port}
    if proc.state is ProcessState.FAILED and proc.last_error is not None:
        out["error"] = proc.last_error.reason
    return out


def _model(request: web.Request, *, exact: bool = False) -> str:
    """The instance the path names: a model id (or, unless ``exact``, one of its aliases); 404 otherwise."""
    name = request.match_info["name"]
    config = runtime(request).config
    model_id = name if name in config.models else None if exact else config.resolve(name)
    if model_id is None:
        raise NotFound(f"instance '{name}' not found")
    return model_id


def _version(request: web.Request) -> str | None:
    """The version a change names: ``If-Match`` (an entity tag, quoted or not) or ``?version=``."""
    tag = request.headers.get("If-Match", "").strip()
    if tag and tag != "*":
        return tag.removeprefix("W/").strip('"')
    return request.query.get("version") or None


def _answer(body: Any, version: str | None, status: int = 200) -> web.Response:
    """JSON, with the config's version as its ETag."""
    resp = web.json_response(body, status=status)
    if version is not None:
        resp.headers["ETag"] = f'"{version}"'
    return resp


def _edit_fields(edited: Edited, notices: list[str]) -> dict[str, Any]:
    """What a change adds to the instance object: where it was written, or why it was not, and notices."""
    out: dict[str, Any] = {"config_version": edited.version, "file": edited.file, "saved": edited.saved}
    if not edited.saved:
        out["warning"] = f"kept in memory only, not written: {edited.reason}"
    if notices:
        out["notices"] = notices
    return out


def _start(rt: Runtime, model_id: str) -> str:
    """Start ``model_id`` in the background (as llama.cpp's router does); its llamactl status now."""
    proc = rt.scheduler.slot(model_id).process
    if proc.state in (ProcessState.READY, ProcessState.STARTING):
        return STATUS[proc.state]
    _load(rt, model_id)
    return "starting"


def _load(rt: Runtime, model_id: str) -> None:
    """The scheduler's load of ``model_id``, in the background; a failure is logged (its output is in its log)."""

    def done(task: asyncio.Task[None]) -> None:
        publish_inflight(rt, model_id)
        if not task.cancelled() and task.exception() is not None:
            err = task.exception()
            logger.warning("start of %s failed: %s", model_id, getattr(err, "reason", None) or err)

    rt.background.spawn(rt.scheduler.load(model_id), on_done=done)


def _binary(rt: Runtime) -> tuple[str, ...]:
    return llama_server(rt.config.instances.llama_server)


# -- instances ---------------------------------------------------------------------------------------------
@api(tag="llamactl")
async def list_instances(request: web.Request) -> web.Response:
    """Every model as a llamactl instance: name, status, created."""
    rt = runtime(request)
    return web.json_response([instance_json(rt, mid) for mid in rt.scheduler.slots])


@api(tag="llamactl")
async def get_instance(request: web.Request) -> web.Response:
    """One instance; ``options`` is its entry as the config file has it."""
    rt = runtime(request)
    model_id = _model(request)
    body = instance_json(rt, model_id)
    if not rt.store.has_files:
        return web.json_response(body)
    src = await rt.store.sources()
    owner = await asyncio.to_thread(rt.store.owner, src, model_id)
    if owner is not None:
        body["options"] = await asyncio.to_thread(model_entry, src.texts[owner], model_id)
        body["file"] = owner
    body["config_version"] = src.version
    return _answer(body, src.version)


def _start_param(request: web.Request) -> bool:
    value = request.query.get("start", "1").lower()
    if value not in ("1", "0", "true", "false", "yes", "no"):
        raise BadRequest(f"start must be 1 or 0, not {value!r}", param="start")
    return value in ("1", "true", "yes")


@api(tag="llamactl", body={"model": "/models/llama-2-7b.gguf", "ctx_size": 4096},
     query=[("start", "swapproxy: 0 = create it without starting it (default 1)"), *_VERSION_QUERY])
async def create_instance(request: web.Request) -> web.Response:
    """Create a model from llamactl's options (or llama-swap model keys) and start it; 201."""
    rt = runtime(request)
    name = request.match_info["name"]
    if not _NAME.fullmatch(name):
        raise BadRequest(f"invalid instance name {name!r}: letters, digits and . _ : @ + - (at most 128)",
                         param="name")
    config = rt.config
    if name in config.models:
        raise Conflict(f"instance '{name}' already exists")
    if config.resolve(name) is not None or name in config.selectors:
        owner = config.resolve(name)
        raise Conflict(f"'{name}' is already " + (f"an alias of model '{owner}'" if owner else "a selector"))
    start = _start_param(request)
    body = parse_json_body(await request.read())
    notices: list[str] = []

    def change(text: str) -> str:
        entry, found = _changes(body, _binary(rt), None)
        notices.extend(found)
        return set_model(text, name, {k: v for k, v in entry.items() if v is not None})

    edited = await rt.store.change_model(name, change, version=_version(request), new=True)
    status = _start(rt, name) if start else None
    return _answer({**instance_json(rt, name, status), **_edit_fields(edited, notices)}, edited.version, 201)


def _changes(body: Any, binary: tuple[str, ...], existing: dict[str, Any] | None) -> tuple[dict[str, Any], list[str]]:
    try:
        return entry_changes(body, binary, existing)
    except BodyError as exc:
        raise BadRequest(str(exc), param=exc.key) from None


@api(tag="llamactl", body={"ctx_size": 8192, "ttl": 600}, query=_VERSION_QUERY)
async def update_instance(request: web.Request) -> web.Response:
    """Change a model: llama-server options change its command in place; model keys (null removes one)."""
    rt = runtime(request)
    model_id = _model(request, exact=True)
    body = parse_json_body(await request.read())
    notices: list[str] = []

    def change(text: str) -> str:
        entry = model_entry(text, model_id)
        if entry is None:
            raise EditError(f"models.{model_id} is not a mapping in the file")
        keys, found = _changes(body, _binary(rt), entry)
        notices.extend(found)
        return update_model(text, model_id, keys)

    was_active = rt.scheduler.slot(model_id).process.state in (ProcessState.STARTING, ProcessState.READY)
    edited = await rt.store.change_model(model_id, change, version=_version(request), new=False)
    status = None
    if was_active and model_id in edited.report.get("changed", ()):
        status = "restarting"  # llamactl restarts a running instance that changed; its requests finish first
        _load(rt, model_id)
    return _answer({**instance_json(rt, model_id, status), **_edit_fields(edited, notices)}, edited.version)


@api(tag="llamactl", query=_VERSION_QUERY)
async def delete_instance(request: web.Request) -> web.Response:
    """Stop a model (once its requests in flight are done) and remove it from the config; 204."""
    rt = runtime(request)
    model_id = _model(request, exact=True)
    slot = rt.scheduler.slot(model_id)
    edited = await rt.store.change_model(model_id, lambda text: remove_model(text, model_id),
                                         version=_version(request), new=False)
    await slot.idle.wait()
    await slot.process.shutdown()  # the reload retires it the same way; both wait for one stop
    resp = web.Response(status=204)
    resp.headers["ETag"] = f'"{edited.version}"'
    if not edited.saved:
        resp.headers["Warning"] = '199 swapproxy "kept in memory only, not written"'
    return resp


# -- operations --------------------------------------------------------------------------------------------
@api(tag="llamactl")
async def start_instance(request: web.Request) -> web.Response:
    """Start a model; answers at once with ``starting`` (``running`` if it is)."""
    rt = runtime(request)
    model_id = _model(request)
    return web.json_response(instance_json(rt, model_id, _start(rt, model_id)))


@api(tag="llamactl", query=FORCE_QUERY)
async def stop_instance(request: web.Request) -> web.Response:
    """Stop a model once its requests in flight are done (at once with ?force=1); answers when stopped."""
    rt = runtime(request)
    model_id = _model(request)
    await rt.scheduler.unload(model_id, "stopped via API", force=force_param(request))
    return web.json_response(instance_json(rt, model_id))


@api(tag="llamactl", query=FORCE_QUERY)
async def restart_instance(request: web.Request) -> web.Response:
    """Stop a model (as /stop does), then start it again; answers with ``restarting``."""
    rt = runtime(request)
    model_id = _model(request)
    await rt.scheduler.unload(model_id, "restarted via API", force=force_param(request))
    _start(rt, model_id)
    return web.json_response(instance_json(rt, model_id, "restarting"))


@api(tag="llamactl", content_type="text/plain", query=[("lines", "how many of the last lines (default, or -1: all)")])
async def instance_logs(request: web.Request) -> web.Response:
    """The output of a model's server (its current or last process), as plain text."""
    rt = runtime(request)
    model_id = _model(request)
    raw = request.query.get("lines", "-1")
    try:
        lines = int(raw)
    except ValueError:
        raise BadRequest(f"lines must be a whole number (-1: all), not {raw!r}", param="lines") from None
    tail = rt.scheduler.slot(model_id).process.log.tail(None if lines < 0 else lines)
    return web.Response(text="".join(line + "\n" for line in tail), content_type="text/plain")


@api(tag="llamactl")
async def instance_proxy(request: web.Request) -> web.StreamResponse:
    """Any request to the instance's own server, the /api/v1/instances/{name}/proxy prefix stripped.

    503 while it is not running: this route never starts it.
    """
    rt = runtime(request)
    model_id = _model(request)
    if rt.scheduler.slot(model_id).process.state is not ProcessState.READY:
        raise NotRunning(f"instance '{model_id}' is not running")
    raw = request.raw_path.split("?", 1)
    rest = raw[0].split("/proxy/", 1)[1] if "/proxy/" in raw[0] else ""
    try:
        return await passthrough(request, model_id, rest, raw[1] if len(raw) > 1 else None,
                                 "llamactl's proxy does not start an instance")
    except Conflict:
        raise NotRunning(f"instance '{model_id}' is not running") from None


# -- about the server --------------------------------------------------------------------------------------
@api(tag="llamactl", content_type="text/plain")
async def llamactl_version(request: web.Request) -> web.Response:
    """swapproxy's version, in llamactl's shape (Version, Commit, Build Time)."""
    return web.Response(text=f"Version: {__version__}\nCommit: unknown\nBuild Time: unknown\n",
                        content_type="text/plain")


@api(tag="llamactl", content_type="text/plain")
async def server_info(request: web.Request) -> web.Response:
    """The configured llama-server's own --help, --version or --list-devices output."""
    rt = runtime(request)
    flag = INFO_FLAGS[request.match_info["what"]]
    started = time.monotonic()
    text = await request.app[_INFO].ask(_binary(rt), flag, rt.config.all_keys)
    logger.debug("llama-server %s answered in %.2fs", flag, time.monotonic() - started)
    return web.Response(text=text, content_type="text/plain")


def add_routes(app: web.Application, tags: dict[web.AbstractRoute, RouteTag]) -> None:
    """Register llamactl's routes (management tier; errors in llamactl's body, see :mod:`.middleware`)."""
    app[_INFO] = ServerInfo()
    read, load, config = Kind.READ, Kind.LOAD, Kind.CONFIG
    base = "/api/v1/instances/{name}"
    register(app, tags, Tier.MANAGEMENT, [
        ("GET", "/api/v1/version", llamactl_version, read),
        ("GET", "/api/v1/server/{what:help|version|devices}", server_info, read),
        ("GET", "/api/v1/instances", list_instances, read),
        ("GET", base, get_instance, read), ("POST", base, create_instance, config),
        ("PUT", base, update_instance, config), ("DELETE", base, delete_instance, config),
        ("POST", base + "/start", start_instance, load), ("POST", base + "/stop", stop_instance, load),
        ("POST", base + "/restart", restart_instance, load), ("GET", base + "/logs", instance_logs, read),
        ("*", base + "/proxy/{tail:.*}", instance_proxy, Kind.INFERENCE),
    ])

