"""Errors swapproxy produces itself, and the OpenAI-style envelope they travel in.

Every error that swapproxy (not the upstream) answers a client with is one of
these, rendered by :func:`error_response` as::

    {"error": {"message": "...", "type": "...", "code": "...", "param": null}}

The tree::

    SwapProxyError                      500 internal_error
    ├── BadRequest                      400 invalid_request_error
    │   └── ConfigInvalid               400 config_invalid       (+ problems: file, line, key, message)
    ├── Unauthorized                    401 authentication_error
    ├── Forbidden                       403 permission_error
    │   ├── CrossSiteRefused            403 cross_site_request   (a browser on another site)
    │   └── ConfigReadOnly              403 config_read_only     (the config file cannot be written)
    ├── NotFound                        404 not_found_error
    │   ├── ModelNotFound               404 model_not_found
    │   └── ModelDisabled               404 model_not_found      (a profile's empty pin)
    ├── Conflict                        409 conflict             (model not loaded; nothing may start it;
    │   │                                                          an instance that exists already)
    │   └── ConfigChanged               409 config_changed       (an edit against a stale version)
    ├── PayloadTooLarge                 413 request_too_large
    ├── UnsupportedMediaType            415 unsupported_media_type
    ├── ExpectationFailed               417 expectation_failed
    ├── HostNotAllowed                  421 host_not_allowed     (DNS rebinding guard)
    ├── TooManyRequests                 429 rate_limit_exceeded  (+ Retry-After)
    ├── NotSupported                    501 not_implemented
    ├── UpstreamUnreachable             502 upstream_unreachable
    │   └── UpstreamConnectFailed       502 upstream_unreachable (no connection: nothing was sent;
    │                                   504 upstream_timeout when the connect timed out)
    ├── ModelStartFailed                503 model_start_failed   (+ last log lines)
    │   └── HealthCheckTimeout          503 health_check_timeout
    ├── ShuttingDown                    503 shutting_down
    ├── NotRunning                      503 instance_not_running (llamactl's proxy to a stopped instance)
    ├── Unavailable                     503 unavailable          (performance samples off, no hardware snapshot)
    ├── NoTargetAvailable               503 no_target_available  (a selector's targets are all stopping)
    ├── PeerUnavailable                 503 peer_unavailable     (+ Retry-After; the peer is down)
    ├── RequestCancelled                503 request_cancelled    (POST /api/inflight/{id}/cancel)
    └── UpstreamTimeout                 504 upstream_timeout

Every 503 carries ``Retry-After`` (a class's ``retry_after``, or the instance's: a failed
start says when swapproxy would try it again). Those a client should not simply send again
(a failed start, a request an operator cancelled, an instance nobody started) also carry
``x-should-retry: false``, the header the openai and anthropic SDKs obey before their own
retry rules.

Upstream HTTP errors are never wrapped: they pass through as the upstream sent them. On
llamactl's routes (``/api/v1/...``) the same errors travel in llamactl's body instead,
``{"error": "message"}`` (:func:`error_response` with ``plain``); an error's :meth:`details`
(a config's problems) go beside the message in either shape.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from aiohttp import web

__all__ = [
    "SwapProxyError",
    "BadRequest",
    "ConfigInvalid",
    "Unauthorized",
    "Forbidden",
    "CrossSiteRefused",
    "ConfigReadOnly",
    "SlotFilesManaged",
    "NotFound",
    "ModelNotFound",
    "ModelDisabled",
    "Conflict",
    "ConfigChanged",
    "PayloadTooLarge",
    "UnsupportedMediaType",
    "ExpectationFailed",
    "HostNotAllowed",
    "TooManyRequests",
    "NotSupported",
    "UpstreamUnreachable",
    "UpstreamConnectFailed",
    "PeerUnavailable",
    "ModelStartFailed",
    "HealthCheckTimeout",
    "ShuttingDown",
    "NotRunning",
    "Unavailable",
    "NoTargetAvailable",
    "RequestCancelled",
    "UpstreamTimeout",
    "envelope",
    "error_response",
]


class SwapProxyError(Exception):
    """Base of every error swapproxy answers with; carries its HTTP status."""

    status: int = 500
    type: str = "internal_error"
    code: str = "internal_error"
    retry_after: int | None = None  # seconds: the Retry-After header
    should_retry: bool | None = None  # the x-should-retry header (SDKs obey it before their own rules)

    def __init_subclass__(cls, status: int | None = None, type: str | None = None, code: str | None = None,
                          **kwargs: object) -> None:
        """``class X(SwapProxyError, status=400, type="...", code="...")``: what X answers with."""
        super().__init_subclass__(**kwargs)
        if status is not None:
            cls.status = status
        if type is not None:
            cls.type = type
        if code is not None:
            cls.code = code

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def headers(self) -> dict[str, str]:
        """Extra response headers this error needs (Retry-After, x-should-retry)."""
        out: dict[str, str] = {}
        if self.retry_after is not None:
            out["Retry-After"] = str(self.retry_after)
        if self.should_retry is not None:
            out["x-should-retry"] = "true" if self.should_retry else "false"
        return out

    def details(self) -> dict[str, object]:
        """Extra fields of the error body (e.g. a config's problems)."""
        return {}


class BadRequest(SwapProxyError, status=400, type="invalid_request_error", code="invalid_request"):
    """The request is malformed: bad JSON, no model, a bad parameter."""


class ConfigInvalid(BadRequest, code="config_invalid"):
    """A config change that does not validate; ``problems`` as a reload reports them."""

    def __init__(self, message: str, problems: Sequence[Mapping[str, object]] = ()) -> None:
        super().__init__(message)
        self.problems = [dict(p) for p in problems]

    def details(self) -> dict[str, object]:
        return {"problems": self.problems}


class Unauthorized(SwapProxyError, status=401, type="authentication_error", code="invalid_api_key"):
    """No API key, or not one that opens this route."""


class Forbidden(SwapProxyError, status=403, type="permission_error", code="forbidden"):
    """The request is understood and refused."""


class CrossSiteRefused(Forbidden, code="cross_site_request"):
    """A browser sent a state-changing request from a page of another site (see web/browser.py)."""


class SlotFilesManaged(Forbidden, code="slot_cache_managed"):
    """A client asked to save or restore a slot of a model whose slot files swapproxy keeps."""


class ConfigReadOnly(Forbidden, code="config_read_only"):
    """The config file cannot be written, and changes are not to be kept in memory only."""


class NotFound(SwapProxyError, status=404, type="not_found_error", code="not_found"):
    """No such route, or no such thing."""


class ModelNotFound(NotFound, code="model_not_found"):
    """The request names a model the config does not have."""

    def __init__(self, model: str) -> None:
        super().__init__(f"model '{model}' not found in config", param="model")
        self.model = model


class ModelDisabled(NotFound, code="model_not_found"):
    """The active profile pins the requested name to nothing."""

    def __init__(self, model: str, profile: str) -> None:
        super().__init__(f"model '{model}' is disabled by the active profile '{profile}'", param="model")
        self.model = model


class Conflict(SwapProxyError, status=409, type="invalid_request_error", code="conflict"):
    """The request may not start the model it needs, and that model is not ready."""


class ConfigChanged(Conflict, code="config_changed"):
    """A config change names a version of the files that is no longer theirs."""


class PayloadTooLarge(SwapProxyError, status=413, type="invalid_request_error", code="request_too_large"):
    """The body passed maxRequestBodyMB."""


class UnsupportedMediaType(SwapProxyError, status=415, type="invalid_request_error",
                           code="unsupported_media_type"):
    """A body of a type this route does not take (a form body from another origin to a JSON route)."""


class ExpectationFailed(SwapProxyError, status=417, type="invalid_request_error", code="expectation_failed"):
    """An Expect header other than 100-continue."""


class HostNotAllowed(SwapProxyError, status=421, type="invalid_request_error", code="host_not_allowed"):
    """The Host header names a host this server does not answer for (allowedHosts)."""


class _RetryLater(SwapProxyError):
    """An error the client may retry after ``retry_after`` seconds (its Retry-After header)."""

    def __init__(self, message: str, *, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class TooManyRequests(_RetryLater, status=429, type="rate_limit_error", code="rate_limit_exceeded"):
    """The model's concurrencyLimit is reached; the client may retry after ``retry_after`` s."""


class NotSupported(SwapProxyError, status=501, type="invalid_request_error", code="not_implemented"):
    """A route swapproxy knows of but deliberately does not implement."""


class UpstreamUnreachable(SwapProxyError, status=502, type="upstream_error", code="upstream_unreachable"):
    """The upstream could not be reached, or broke off before its response began."""


class UpstreamConnectFailed(UpstreamUnreachable):
    """No connection to the upstream could be made (refused, unreachable, or not in time): nothing was
    sent, so another server may take the request. A connect that timed out answers 504."""

    def __init__(self, message: str, *, timed_out: bool = False) -> None:
        super().__init__(message)
        if timed_out:
            self.status, self.code = UpstreamTimeout.status, UpstreamTimeout.code


class ModelStartFailed(SwapProxyError, status=503, type="upstream_error", code="model_start_failed"):
    """The model's process failed to become ready; ``log_tail`` holds its last output.

    ``retry_after``: when swapproxy would start it again (the failure handler sets it to
    the back-off, or to the open breaker's time left). An SDK is told not to retry on its
    own: a start that failed seldom succeeds a second later, and each try may load a
    model's weights again.
    """

    retry_after = 1
    should_retry = False

    def __init__(self, message: str, *, log_tail: Sequence[str] = (), retry_after: int | None = None) -> None:
        self.log_tail = tuple(log_tail)
        full = message
        if self.log_tail:
            full += "\nlast output:\n" + "\n".join(self.log_tail)
        super().__init__(full)
        self.reason = message
        if retry_after is not None:
            self.retry_after = retry_after

    def again(self, retry_after: int) -> ModelStartFailed:
        """The same failure (class, message, output), to answer anew with ``retry_after``."""
        return type(self)(self.reason, log_tail=self.log_tail, retry_after=retry_after)


class HealthCheckTimeout(ModelStartFailed, code="health_check_timeout"):
    """The model's process did not become healthy within healthCheckTimeout."""


class ShuttingDown(SwapProxyError, status=503, type="server_error", code="shutting_down"):
    """swapproxy is stopping: no new work (a service manager may have it back in seconds)."""

    retry_after = 5


class NotRunning(SwapProxyError, status=503, type="server_error", code="instance_not_running"):
    """llamactl's proxy route: the instance is not running (it is not started for the request,
    so a retry alone does not help)."""

    retry_after = 5
    should_retry = False


class Unavailable(SwapProxyError, status=503, type="server_error", code="unavailable"):
    """A part of swapproxy that is turned off or could not start (performance samples, hardware detection):
    asking again soon changes nothing."""

    retry_after = 60
    should_retry = False


class NoTargetAvailable(SwapProxyError, status=503, type="server_error", code="no_target_available"):
    """A selector has no target that can take the request now."""

    retry_after = 1


class PeerUnavailable(_RetryLater, status=503, type="upstream_error", code="peer_unavailable"):
    """The peer that serves the model is down (its probe, or the last request, could not reach it)."""


class RequestCancelled(SwapProxyError, status=503, type="server_error", code="request_cancelled"):
    """An operator cancelled the request before its response began: an SDK must not send it again."""

    retry_after = 1
    should_retry = False


class UpstreamTimeout(SwapProxyError, status=504, type="upstream_error", code="upstream_timeout"):
    """The upstream did not answer, or finish its body, in time."""


def envelope(message: str, type_: str, code: str, param: str | None = None) -> dict[str, object]:
    """The OpenAI error body."""
    return {"error": {"message": message, "type": type_, "code": code, "param": param}}


def error_response(err: SwapProxyError, *, plain: bool = False) -> web.Response:
    """Render ``err`` as an OpenAI-style JSON error response; ``plain``: llamactl's ``{"error": message}``."""
    extra = err.details()
    if plain:
        body = json.dumps({"error": err.message, **extra})
    else:
        data = envelope(err.message, err.type, err.code, err.param)
        data["error"].update(extra)  # type: ignore[attr-defined]
        body = json.dumps(data)
    return web.Response(
        status=err.status,
        body=body.encode(),
        content_type="application/json",
        headers=err.headers(),
    )
