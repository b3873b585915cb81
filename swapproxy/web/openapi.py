"""OpenAPI 3.1 document generated from the app's registered routes, so it cannot drift.

Every (path, method) the router knows becomes an operation: the summary and
description come from the handler's docstring, path parameters from the
route's canonical path. Handlers may add what a docstring cannot say —
query parameters, a request body example, a tag — with the :func:`api`
decorator; nothing else is written by hand.
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from aiohttp import web

from .. import __version__

__all__ = ["api", "build_openapi", "ApiInfo"]

logger = logging.getLogger(__name__)

H = TypeVar("H", bound=Callable[..., Any])
_PARAM = re.compile(r"\{([^}:]+)(?::[^}]*)?\}")
_ANY_METHOD = ("get", "post", "put", "patch", "delete")


class ApiInfo:
    """What :func:`api` attaches to a handler."""

    def __init__(
        self,
        tag: str,
        query: Sequence[tuple[str, str]],
        body: Any,
        methods: Sequence[str] | None,
        content_type: str | None,
    ) -> None:
        self.tag = tag
        self.query = tuple(query)
        self.body = body
        self.methods = tuple(methods) if methods else None
        self.content_type = content_type


def api(
    *,
    tag: str,
    query: Sequence[tuple[str, str]] = (),
    body: Any = None,
    methods: Sequence[str] | None = None,
    content_type: str | None = None,
) -> Callable[[H], H]:
    """Describe a handler for the OpenAPI document.

    ``query``: (name, description) pairs; ``body``: an example JSON request body;
    ``methods``: what a ``*`` route really accepts; ``content_type``: the success response's type.
    """

    def mark(handler: H) -> H:
        handler.__openapi__ = ApiInfo(tag, query, body, methods, content_type)  # type: ignore[attr-defined]
        return handler

    return mark


def _docs(handler: Callable[..., Any]) -> tuple[str, str]:
    doc = inspect.getdoc(handler) or ""
    summary, _, rest = doc.partition("\n")
    return summary.strip(), rest.strip()


def _operation(path: str, method: str, handler: Callable[..., Any]) -> dict[str, Any]:
    info: ApiInfo | None = getattr(handler, "__openapi__", None)
    summary, description = _docs(handler)
    module = getattr(handler, "__module__", "").rsplit(".", 1)[-1]
    op: dict[str, Any] = {
        "operationId": re.sub(r"[^A-Za-z0-9]+", "_", f"{method}{path}").strip("_") or method,
        "summary": summary or handler.__name__,
        "tags": [info.tag if info else ("inference" if module in ("inference", "upstream") else module)],
    }
    if description:
        op["description"] = description
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in _PARAM.findall(path)
    ]
    if info:
        params += [
            {"name": name, "in": "query", "required": False, "description": text, "schema": {"type": "string"}}
            for name, text in info.query
        ]
    if params:
        op["parameters"] = params
    if info and info.body is not None and method in ("post", "put", "patch"):
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": {"type": "object"}, "example": info.body}},
        }
    content_type = info.content_type if info and info.content_type else "application/json"
    op["responses"] = {
        "200": {"description": "OK", "content": {content_type: {}}},
        "default": {
            "description": "An error, as an OpenAI envelope: {error: {message, type, code, param}}",
            "content": {"application/json": {}},
        },
    }
    return op


def build_openapi(app: web.Application) -> dict[str, Any]:
    """The OpenAPI document of every route registered on ``app``."""
    paths: dict[str, dict[str, Any]] = {}
    for resource in app.router.resources():
        path = _PARAM.sub(lambda m: "{" + m.group(1) + "}", resource.canonical)
        for route in resource:
            handler = route.handler
            if route.method == "HEAD":
                continue  # added by add_get; the GET says it all
            info: ApiInfo | None = getattr(handler, "__openapi__", None)
            if route.method == "*":
                methods: Sequence[str] = info.methods if info and info.methods else _ANY_METHOD
            else:
                methods = [route.method.lower()]
            entry = paths.setdefault(path, {})
            for method in methods:
                entry.setdefault(method, _operation(path, method, handler))
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "swapproxy",
            "version": __version__,
            "description": "Model-swap reverse proxy: OpenAI and llama-server routes, model management, "
            "logs, events and metrics. Generated from the registered routes.",
        },
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}, {}],
    }
