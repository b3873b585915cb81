"""The error tree: every error swapproxy answers with says what a client should do next."""

from __future__ import annotations

import inspect

from swapproxy import errors
from swapproxy.errors import ModelStartFailed, SwapProxyError, TooManyRequests


def _instances() -> list[SwapProxyError]:
    out: list[SwapProxyError] = []
    for _, cls in inspect.getmembers(errors, inspect.isclass):
        if issubclass(cls, SwapProxyError):
            params = inspect.signature(cls).parameters
            out.append(cls("m") if "model" in params and "profile" not in params
                       else cls("m", "p") if "profile" in params else cls("why"))
    return out


def test_every_503_carries_retry_after() -> None:
    unavailable = [err for err in _instances() if err.status == 503]
    assert {type(err).__name__ for err in unavailable} >= {"ModelStartFailed", "HealthCheckTimeout", "ShuttingDown",
                                                           "NoTargetAvailable", "RequestCancelled"}
    for err in unavailable:
        response = errors.error_response(err)
        assert int(response.headers["Retry-After"]) >= 1, type(err).__name__


def test_what_an_sdk_must_not_send_again_says_so() -> None:
    """x-should-retry: false (the openai and anthropic SDKs obey it) where an automatic retry is wrong."""
    said = {type(err).__name__: err.headers().get("x-should-retry") for err in _instances()}
    assert said["ModelStartFailed"] == said["HealthCheckTimeout"] == said["RequestCancelled"] == "false"
    assert said["ShuttingDown"] is None and said["TooManyRequests"] is None
    assert TooManyRequests("busy", retry_after=3).headers() == {"Retry-After": "3"}


def test_a_failed_start_answered_again_is_the_same_failure() -> None:
    first = errors.HealthCheckTimeout("upstream health check timed out after 5s", log_tail=("a", "b"))
    again = first.again(retry_after=4)
    assert type(again) is errors.HealthCheckTimeout and isinstance(again, ModelStartFailed)
    assert (again.message, again.code, again.log_tail) == (first.message, first.code, first.log_tail)
    assert again.headers()["Retry-After"] == "4"
