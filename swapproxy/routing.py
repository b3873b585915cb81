"""Which model does a request name, and what body goes upstream.

Pure functions over bytes and mappings: no I/O, no aiohttp. The hot path reads
the JSON body once to find ``model``; the original bytes go upstream untouched
unless the model's config asks for a rewrite (``useModelName``, ``filters``) or
the name was pinned by a profile or chosen by a selector.

A name goes through llama-swap's steps in its order (:func:`route`): the active
profile's pin first, then a selector (its choice is the caller's, who knows
the models' states), then aliases, and last a peer's model (``peer/model``, or
a bare id one peer alone lists: local names win); ``setParamsByID`` is keyed by
the name the request uses after those rewrites.
"""

from __future__ import annotations

import json
import mmap
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .config import Config, ModelConfig, PeerRoute, SelectorConfig
from .errors import BadRequest, ModelDisabled, ModelNotFound

__all__ = [
    "parse_json_body",
    "model_from_json",
    "resolve_model",
    "Route",
    "route",
    "rewrite_body",
    "multipart_boundary",
    "find_multipart_field",
    "multipart_field_span",
    "PROTECTED_PARAMS",
]

#: Body keys a filter may never strip or set.
PROTECTED_PARAMS = frozenset({"model"})


def parse_json_body(body: bytes) -> dict[str, Any]:
    """Decode a JSON request body that must be an object; 400 otherwise."""
    if not body:
        raise BadRequest("request body is empty; expected a JSON object")
    try:
        obj = json.loads(body)
    except UnicodeDecodeError:
        raise BadRequest("request body is not valid UTF-8") from None
    except ValueError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise BadRequest("request body is nested too deeply to be parsed") from None
    if not isinstance(obj, dict):
        raise BadRequest(f"request body must be a JSON object, not {type(obj).__name__}")
    return obj


def model_from_json(obj: Mapping[str, Any]) -> str | None:
    """The ``model`` field of a decoded body, or None when absent."""
    model = obj.get("model")
    if model is None:
        return None
    if not isinstance(model, str):
        raise BadRequest("'model' must be a string", param="model")
    return model or None


def resolve_model(config: Config, requested: str | None) -> str:
    """Map a requested name (id, alias, or None for the default) to a model id."""
    if requested is None:
        if config.default_model is None:
            raise BadRequest("the request names no model and no defaultModel is configured", param="model")
        return config.default_model
    model_id = config.resolve(requested)
    if model_id is None:
        raise ModelNotFound(requested)
    return model_id


@dataclass(frozen=True)
class Route:
    """Where a requested name leads: the model id, and the name the request uses from now on.

    For a peer's model, ``peer`` says which, and ``model_id`` is its ``peer/model``."""

    model_id: str
    name: str | None  # after the profile's pin and the selector's choice; None: the default model
    renamed: bool = False  # a pin or a selector changed the name: the body's model says so upstream
    selector: str | None = None  # the selector the name went through
    peer: PeerRoute | None = None  # a peer serves it: no scheduling, no swap


def route(config: Config, requested: str | None, *, profile: str | None = None,
          pick: Callable[[SelectorConfig], str] | None = None) -> Route:
    """Follow ``requested`` through the ``profile``'s pins, a selector and aliases to a model id.

    ``pick`` chooses a selector's target (see :mod:`swapproxy.selectors`); without it a
    selector takes its first. An empty pin is a 404, as is a name that leads nowhere.
    """
    if requested is None:
        return Route(resolve_model(config, None), None)
    name = requested
    pins = config.profiles[profile].pins if profile in config.profiles else {}
    if name in pins:
        name = pins[name]
        if not name:
            raise ModelDisabled(requested, str(profile))
    selector = config.selectors.get(name)
    if selector is not None:
        name = pick(selector) if pick is not None else selector.targets[0]
    chosen = selector.id if selector else None
    model_id = config.resolve(name)
    if model_id is None:  # no local name: a peer's model, or nothing at all
        peer = config.peer_route(name)
        if peer is None:
            raise ModelNotFound(name)
        return Route(peer.fqn, name, name != requested, chosen, peer)
    return Route(model_id, name, name != requested, chosen)


def rewrite_body(obj: dict[str, Any], spec: ModelConfig, name: str | None = None,
                 renamed: bool = False, send_as: str | None = None) -> bytes | None:
    """The body to send upstream when ``spec`` asks for a rewrite, else None (send as is).

    ``name``: the name the request uses (``setParamsByID`` is keyed by it); ``renamed``: it
    is not the one the client sent, so the body's ``model`` becomes ``name``; ``send_as``: the
    body's ``model`` becomes that instead (a peer's model, as the peer knows it).
    """
    filters = spec.filters
    by_id = filters.set_params_by_id.get(name) if name is not None and filters.set_params_by_id else None
    model = send_as if send_as is not None else name if renamed else None
    if not (spec.use_model_name or filters.strip_params or filters.set_params or by_id or model):
        return None
    out = dict(obj)
    if model is not None:
        out["model"] = model
    for key in filters.strip_params:
        if key not in PROTECTED_PARAMS:
            out.pop(key, None)
    for params in (filters.set_params, by_id or {}):  # by id last: it overrides setParams
        for key, value in params.items():
            if key not in PROTECTED_PARAMS:
                out[key] = value
    if spec.use_model_name and "model" in out:
        out["model"] = spec.use_model_name
    return json.dumps(out, ensure_ascii=False, separators=(",", ":")).encode()


_BOUNDARY = re.compile(r'boundary="?([^";,]+)"?', re.IGNORECASE)
_MODEL_FIELD = re.compile(rb'content-disposition:[^\r\n]*\bname="?model"?(?:;|\r|$)', re.IGNORECASE | re.MULTILINE)


def multipart_boundary(content_type: str) -> bytes | None:
    """The boundary parameter of a multipart Content-Type."""
    match = _BOUNDARY.search(content_type)
    return match.group(1).encode("latin-1") if match else None


def multipart_field_span(buf: bytes | mmap.mmap, boundary: bytes) -> tuple[int, int] | None:
    """Where the value of the text form field ``model`` lies in raw multipart bytes (start, end).

    ``buf`` may be an mmap of a spooled upload: only part headers are matched,
    so a file part's content is never decoded or copied.
    """
    delimiter = b"--" + boundary
    part_head = re.compile(re.escape(delimiter) + rb"\r\n((?:[^\r\n]+\r\n)*?)\r\n")
    for match in part_head.finditer(buf):
        headers = match.group(1)
        if _MODEL_FIELD.search(headers) is None or b"filename=" in headers.lower():
            continue
        end = buf.find(b"\r\n" + delimiter, match.end())
        return (match.end(), end) if end >= 0 else None
    return None


def find_multipart_field(buf: bytes | mmap.mmap, boundary: bytes) -> str | None:
    """The value of the text form field ``model`` in raw multipart bytes (see :func:`multipart_field_span`)."""
    span = multipart_field_span(buf, boundary)
    if span is None:
        return None
    try:
        return bytes(buf[span[0] : span[1]]).decode("utf-8").strip() or None
    except UnicodeDecodeError:
        raise BadRequest("multipart field 'model' is not valid UTF-8", param="model") from None
