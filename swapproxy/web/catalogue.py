"""The model catalogue: ``GET /v1/models`` and ``/models``, and what swapproxy does not do with it.

Each entry has OpenAI's shape plus llama.cpp router mode's: a ``status`` object,
the model's ``aliases`` and ``tags``; and what the model is (:mod:`swapproxy.describe`):
its parameter count, quantisation and size from its GGUF file, as Open WebUI's model
picker reads them, and llama-server's ``meta`` (with the context size it runs with,
once loaded). Selectors are listed too (unless
``unlisted``), with their strategy and targets, and, while a profile is active,
each pin whose name is not already listed; then each peer's models by their
full name, ``peer/model`` (as llama-swap lists them; bare ids are not listed),
with the status the peer's last probe read and ``peer``: the peer's id. llama-server's router downloads
(``POST /models``) and deletes (``DELETE /models?model=``) models, as Open
WebUI's llama.cpp connection asks; swapproxy runs the models its config names,
so both answer 501 with an envelope that says so.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..config import ModelConfig, SelectorConfig
from ..describe import describe
from ..errors import NotSupported
from ..states import ProcessState
from .naming import target_status
from .openapi import api
from .runtime import Kind, RouteTag, Runtime, Tier, register, runtime

__all__ = ["add_routes", "list_models"]

_STATUS_VALUE = {
    ProcessState.READY: "loaded",
    ProcessState.STARTING: "loading",
}


def _model_entry(rt: Runtime, spec: ModelConfig, shown_id: str, created: int) -> dict[str, Any]:
    proc = rt.scheduler.slot(spec.id).process
    # llama.cpp's router lists each model's args here; ours would show the whole command line to
    # any inference client, upstream keys and all, so only the program's name is given.
    status: dict[str, Any] = {"value": _STATUS_VALUE.get(proc.state, "unloaded"), "args": list(spec.cmd[:1])}
    if proc.state is ProcessState.FAILED:
        status["failed"] = True
        if proc.exit_code is not None:
            status["exit_code"] = proc.exit_code
    entry: dict[str, Any] = {"id": shown_id, "object": "model", "created": created, "owned_by": "swapproxy"}
    for key in ("name", "description"):
        value = getattr(spec, key)
        if value:
            entry[key] = value
    # What the model is (its GGUF) and runs with (its /props): Open WebUI's fields, llama-server's meta.
    fields, meta = describe(rt.memory.facts(spec),
                            rt.upstream_props.context(proc) if proc.state is ProcessState.READY else None)
    meta.update(spec.metadata)  # the config's own metadata wins
    if meta:
        entry["meta"] = meta
    if spec.capabilities:
        entry["capabilities"] = dict(spec.capabilities)
    entry.update(fields)
    entry["aliases"] = list(spec.aliases)
    entry["tags"] = list(spec.tags)
    entry["status"] = status
    return entry


def _selector_entry(rt: Runtime, selector: SelectorConfig, created: int) -> dict[str, Any]:
    """A selector's entry; its status is its first loaded target's (pin: only its first target)."""
    considered = selector.target_ids[:1] if selector.strategy == "pin" else selector.target_ids
    states = [target_status(rt, model_id).state for model_id in considered]
    value = "loaded" if ProcessState.READY in states else "loading" if ProcessState.STARTING in states else "unloaded"
    entry: dict[str, Any] = {"id": selector.id, "object": "model", "created": created, "owned_by": "swapproxy"}
    for key in ("name", "description"):
        if getattr(selector, key):
            entry[key] = getattr(selector, key)
    if selector.metadata:
        entry["meta"] = dict(selector.metadata)
    info: dict[str, Any] = {"strategy": selector.strategy, "targets": list(selector.targets)}
    if selector.strategy == "spillover":
        info["spillover"] = selector.spillover
    entry.update(selector=info, aliases=[], tags=[], status={"value": value})
    return entry


@api(tag="models")
async def list_models(request: web.Request) -> web.Response:
    """Every listed model and selector, OpenAI's shape plus llama.cpp router mode's.

    status.value is loaded, loading or unloaded (after a failed start also failed: true and
    exit_code); aliases and tags as configured; a selector says its strategy and targets; while
    a profile is active, its pins that name something new are listed with "profile"; each peer's
    models as peer/model, with "peer" and the status its peer's last probe read.
    """
    rt = runtime(request)
    scheduler = rt.scheduler
    config = scheduler.config
    created = int(rt.started)
    data = []
    for spec in config.models.values():
        if spec.unlisted:
            continue
        data.append(_model_entry(rt, spec, spec.id, created))
        if config.include_aliases_in_list:
            data.extend(_model_entry(rt, spec, alias, created) for alias in spec.aliases if alias != spec.id)
    data.extend(_selector_entry(rt, s, created) for s in config.selectors.values() if not s.unlisted)
    profile = rt.profile
    if profile is not None:
        for name, target in config.profiles[profile].pins.items():
            if target and config.resolve(name) is None and name not in config.selectors:
                data.append({"id": name, "object": "model", "created": created, "owned_by": "swapproxy",
                             "profile": profile, "aliases": [], "tags": [], "status": {"value": "unloaded"}})
    for peer in config.peers.values():
        health = rt.peers.health(peer.id)
        for model in peer.models:
            value = _STATUS_VALUE.get(health.state(model), "unloaded") if health.up is not False else "unloaded"
            data.append({"id": f"{peer.id}/{model}", "object": "model", "created": created, "owned_by": "swapproxy",
                         "name": f"{peer.id}: {model}", "peer": peer.id, "aliases": [], "tags": [],
                         "status": {"value": value}})
    return web.json_response({"object": "list", "data": data})


@api(tag="llama.cpp router", query=[("model", "DELETE: the model to delete")])
async def catalogue_changes(request: web.Request) -> web.Response:
    """llama.cpp router mode's model download (POST) and delete (DELETE): 501 Not Implemented.

    swapproxy runs the models its config file names; it does not download or delete models.
    """
    what = "download models" if request.method == "POST" else "delete models"
    raise NotSupported(f"swapproxy runs the models of its config file and does not {what}; add or remove the "
                       f"model in the config (its UI's Add model, the /api/v1/instances API, or the file "
                       f"itself, then reload: SIGHUP or --watch-config)")


def add_routes(app: web.Application, tags: dict[web.AbstractRoute, RouteTag]) -> None:
    """The router's download and delete (management tier; they change nothing, but say so as loads
    would), then the list (inference tier, as in llama-swap)."""
    register(app, tags, Tier.MANAGEMENT, [("POST", "/models", catalogue_changes, Kind.LOAD),
                                          ("DELETE", "/models", catalogue_changes, Kind.LOAD)])
    register(app, tags, Tier.INFERENCE, [("GET", "/v1/models", list_models, Kind.READ),
                                         ("GET", "/models", list_models, Kind.READ)])
