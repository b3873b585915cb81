"""Errors swapproxy produces itself, and the OpenAI-style envelope they travel in.

Every error that swapproxy (not the upstream) answers a client with is one of
these, rendered by :func:`error_response` as::

    {"error": {"message": "...", "type": "...", "code": "...", "param": null}}

The tree::

    SwapProxyError                      500 internal_error
    ├── BadRequest                      400 invalid_request_error
    ├── Unauthorized                    401 authentication_error
    ├── NotFound                        404 not_found_error
    │   └── ModelNotFound               404 model_not_found
    ├── PayloadTooLarge                 413 request_too_large
    ├── ExpectationFailed               417 expectation_failed
    ├── TooManyRequests                 429 rate_limit_exceeded  (+ Retry-After)
    ├── UpstreamUnreachable             502 upstream_unreachable
    ├── ModelStartFailed                503 model_start_failed   (+ last log lines)
    │   └── HealthCheckTimeout          503 health_check_timeout
    ├── ShuttingDown                    503 shutting_down
    └── UpstreamTimeout                 504 upstream_timeout

Upstream HTTP errors are never wrapped: they pass through as the upstream sent them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from aiohttp import web

__all__ = [
    "SwapProxyError",
    "BadRequest",
    "Unauthorized",
    "NotFound",
    "ModelNotFound",
    "PayloadTooLarge",
    "ExpectationFailed",
    "TooManyRequests",
    "UpstreamUnreachable",
    "ModelStartFailed",
    "HealthCheckTimeout",
    "ShuttingDown",
    "UpstreamTimeout",
    "envelope",
    "error_response",
]


class SwapProxyError(Exception):
    """Base of every error swapproxy answers with; carries its HTTP status."""

    status: int = 500
    type: str = "internal_error"
    code: str = "internal_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def headers(self) -> dict[str, str]:
        """Extra response headers this error needs (e.g. Retry-After)."""
        return {}


class BadRequest(SwapProxyError):
    status, type, code = 400, "invalid_request_error", "invalid_request"


class Unauthorized(SwapProxyError):
    status, type, code = 401, "authentication_error", "invalid_api_key"


class NotFound(SwapProxyError):
    status, type, code = 404, "not_found_error", "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"

    def __init__(self, model: str) -> None:
        super().__init__(f"model '{model}' not found in config", param="model")
        self.model = model


class PayloadTooLarge(SwapProxyError):
    status, type, code = 413, "invalid_request_error", "request_too_large"


class ExpectationFailed(SwapProxyError):
    status, type, code = 417, "invalid_request_error", "expectation_failed"


class TooManyRequests(SwapProxyError):
    status, type, code = 429, "rate_limit_error", "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class UpstreamUnreachable(SwapProxyError):
    status, type, code = 502, "upstream_error", "upstream_unreachable"


class ModelStartFailed(SwapProxyError):
    """The model's process failed to become ready; ``log_tail`` holds its last output."""

    status, type, code = 503, "upstream_error", "model_start_failed"

    def __init__(self, message: str, *, log_tail: Sequence[str] = ()) -> None:
        self.log_tail = tuple(log_tail)
        full = message
        if self.log_tail:
            full += "\nlast output:\n" + "\n".join(self.log_tail)
        super().__init__(full)
        self.reason = message


class HealthCheckTimeout(ModelStartFailed):
    code = "health_check_timeout"


class ShuttingDown(SwapProxyError):
    status, type, code = 503, "server_error", "shutting_down"


class UpstreamTimeout(SwapProxyError):
    status, type, code = 504, "upstream_error", "upstream_timeout"


def envelope(message: str, type_: str, code: str, param: str | None = None) -> dict[str, object]:
    """The OpenAI error body."""
    return {"error": {"message": message, "type": type_, "code": code, "param": param}}


def error_response(err: SwapProxyError) -> web.Response:
    """Render ``err`` as an OpenAI-style JSON error response."""
    body = json.dumps(envelope(err.message, err.type, err.code, err.param))
    return web.Response(
        status=err.status,
        body=body.encode(),
        content_type="application/json",
        headers=err.headers(),
    )
