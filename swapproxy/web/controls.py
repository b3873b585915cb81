"""Operator controls from llama-swap's API: the active profile, and the requests in flight.

* ``GET /api/profiles``, ``PUT /api/profiles/active`` — at most one profile is
  active; none at start (it is not persisted), and a reload keeps it while the
  new config still has it;
* ``GET /api/inflight`` (swapproxy: llama-swap has it only on its event stream)
  and ``POST /api/inflight/{id}/cancel`` — cut one request: before its response
  began it gets a 503 envelope, after, its connection is closed mid-response.

Changes are published on the event bus (``profile`` and ``request`` events),
which the UI follows.
"""

from __future__ import annotations

import logging

from aiohttp import web

from ..errors import BadRequest, NotFound
from ..routing import parse_json_body
from .openapi import api
from .runtime import Kind, RouteTag, Tier, register, runtime

__all__ = ["add_routes"]

logger = logging.getLogger(__name__)


def _profiles_body(request: web.Request) -> dict[str, object]:
    rt = runtime(request)
    profiles = rt.config.profiles
    return {"active": rt.profile,
            "profiles": [{"id": name, "description": profiles[name].description or "", "pins": dict(profiles[name].pins)}
                         for name in sorted(profiles)]}


@api(tag="profiles")
async def get_profiles(request: web.Request) -> web.Response:
    """The profiles of the config and the active one (null: none); a disabled pin shows as ""."""
    return web.json_response(_profiles_body(request))


@api(tag="profiles", body={"name": "coding"})
async def put_active_profile(request: web.Request) -> web.Response:
    """Make a profile active ({"name": "coding"}), or none ({"name": null} or "")."""
    try:
        obj = parse_json_body(await request.read())
    except BadRequest:
        raise BadRequest("invalid profile request: the body must be a JSON object such as {\"name\": \"coding\"}") \
            from None
    if "name" not in obj:
        raise BadRequest("profile name is required", param="name")
    name = obj["name"]
    if name is not None and not isinstance(name, str):
        raise BadRequest("profile name must be a string or null", param="name")
    rt = runtime(request)
    name = name or None
    if name is not None and name not in rt.config.profiles:
        raise NotFound(f"profile '{name}' not found")
    if name != rt.profile:
        rt.active_profile = name
        logger.info("active profile: %s", name or "none")
        rt.events.publish({"type": "profile", "active": name})
    return web.json_response({"active": name})


@api(tag="requests")
async def list_inflight(request: web.Request) -> web.Response:
    """The requests in flight (swapproxy): id, model, method, path, remote address, start, elapsed."""
    return web.json_response({"requests": [entry.as_json() for entry in runtime(request).inflight.list()]})


@api(tag="requests")
async def cancel_inflight(request: web.Request) -> web.Response:
    """Cut one request in flight: its upstream request is aborted, and so is its response."""
    request_id = request.match_info["id"]
    if not runtime(request).inflight.cancel(request_id):
        raise NotFound(f"inflight request {request_id!r} not found")
    logger.info("request %s cancelled by an operator", request_id)
    return web.json_response({"msg": "ok"})


def add_routes(app: web.Application, tags: dict[web.AbstractRoute, RouteTag]) -> None:
    """Register the controls (management tier)."""
    register(app, tags, Tier.MANAGEMENT, [
        ("GET", "/api/profiles", get_profiles, Kind.READ),
        ("PUT", "/api/profiles/active", put_active_profile, Kind.PROFILE),
        ("GET", "/api/inflight", list_inflight, Kind.READ),
        ("POST", "/api/inflight/{id}/cancel", cancel_inflight, Kind.CANCEL),
    ])
