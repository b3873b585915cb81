"""Server-sent events, written in one place: the headers, an event, a comment, an error, the end marker."""

from __future__ import annotations

import json
from typing import Any

from ..errors import envelope

__all__ = ["HEADERS", "PING", "DONE", "event", "comment", "error_event", "upstream_error_event"]

#: Response headers of every event stream swapproxy writes itself (``X-Accel-Buffering``: nginx must not buffer).
HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
#: A comment line: keeps a quiet stream's connection alive, and every SSE parser skips it.
PING = b": ping\n\n"
#: The end marker of an OpenAI stream.
DONE = b"data: [DONE]\n\n"


def event(obj: Any) -> bytes:
    """One ``data:`` event holding ``obj`` as compact JSON."""
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def comment(text: str) -> bytes:
    """One comment line (``: text``), which every SSE parser skips; line breaks become spaces."""
    return b": " + " ".join(text.split("\n")).replace("\r", " ").encode() + b"\n\n"


def error_event(message: str, type_: str, code: str) -> bytes:
    """An OpenAI error envelope as one event (what a stream carries when it fails mid-way)."""
    return event(envelope(message, type_, code))


def upstream_error_event(status: int, body: bytes) -> bytes:
    """An upstream's error answer as one event, for a stream whose 200 was already sent.

    The upstream's own error object goes through as it is (llama-server's
    ``{"error": {"code", "message", "type", ...}}`` keeps its message, type and
    code: a client sees the same error it would have seen as the status); a body
    that holds none is wrapped in an envelope of type ``upstream_error`` whose code
    is the upstream's status.
    """
    text = body.decode("utf-8", errors="replace")
    try:
        obj = json.loads(text)
    except ValueError:
        obj = None
    if isinstance(obj, dict) and isinstance(obj.get("error"), dict):
        return event({"error": obj["error"]})
    message = obj["error"] if isinstance(obj, dict) and isinstance(obj.get("error"), str) else text.strip()
    return error_event(message or f"upstream answered {status}", "upstream_error", str(status))
