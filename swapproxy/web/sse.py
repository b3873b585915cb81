"""Server-sent events, written in one place: the headers, an event, a comment, the end marker."""

from __future__ import annotations

import json
from typing import Any

from ..errors import envelope

__all__ = ["HEADERS", "PING", "DONE", "event", "error_event"]

#: Response headers of every event stream swapproxy writes itself (``X-Accel-Buffering``: nginx must not buffer).
HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
#: A comment line: keeps a quiet stream's connection alive, and every SSE parser skips it.
PING = b": ping\n\n"
#: The end marker of an OpenAI stream.
DONE = b"data: [DONE]\n\n"


def event(obj: Any) -> bytes:
    """One ``data:`` event holding ``obj`` as compact JSON."""
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def error_event(message: str, type_: str, code: str) -> bytes:
    """An OpenAI error envelope as one event (what a stream carries when it fails mid-way)."""
    return event(envelope(message, type_, code))
