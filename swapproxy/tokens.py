"""Token counts from the end of a response: the ``usage`` or ``timings`` upstreams put there.

(:func:`timings_from_tail` hands over llama-server's whole ``timings``, whose ``cache_n``
tells the slot cache whether a restored slot was reused.)

:class:`TokenTap` keeps only the last few KiB of the bytes relayed (amortised O(1) per chunk,
no parsing on the hot path); :func:`usage_from_tail` parses that tail once, after the last
byte went to the client (:mod:`swapproxy.metrics` counts what it finds).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any

__all__ = ["TokenTap", "usage_from_tail", "timings_from_tail"]


class TokenTap:
    """``on_chunk`` callback for :func:`swapproxy.web.proxy.forward`: keeps the response's tail.

    Also notes when the first body byte went out (time to first byte).
    """

    __slots__ = ("limit", "tail", "total", "first_at")

    def __init__(self, limit: int = 8192) -> None:
        self.limit = limit
        self.tail = bytearray()
        self.total = 0
        self.first_at: float | None = None

    def __call__(self, chunk: bytes) -> None:
        if self.first_at is None:
            self.first_at = time.perf_counter()
        self.total += len(chunk)
        tail = self.tail
        tail += chunk
        if len(tail) > 2 * self.limit:  # trim rarely: amortised O(1) per byte
            del tail[: -self.limit]

    @property
    def complete(self) -> bool:
        """True when the tail holds the whole body."""
        return self.total == len(self.tail)


def _counts(obj: Any) -> tuple[tuple[int, int] | None, tuple[int, int] | None]:
    """(usage counts, timings counts) found in one decoded JSON object."""
    if not isinstance(obj, dict):
        return None, None
    usage = obj.get("usage")
    if not isinstance(usage, dict) and isinstance(obj.get("response"), dict):
        usage = obj["response"].get("usage")  # Responses API: response.completed event
    from_usage = None
    if isinstance(usage, dict):
        prompt = usage.get("prompt_tokens", usage.get("input_tokens"))
        completion = usage.get("completion_tokens", usage.get("output_tokens", 0))
        if isinstance(prompt, int) and isinstance(completion, int):
            from_usage = (prompt, completion)
    timings = obj.get("timings")
    from_timings = None
    if isinstance(timings, dict):
        prompt, predicted = timings.get("prompt_n"), timings.get("predicted_n")
        if isinstance(prompt, int) and isinstance(predicted, int):
            from_timings = (prompt, predicted)
    return from_usage, from_timings


_EVENT_SPLIT = re.compile(rb"\r?\n\r?\n")
_DECODER = json.JSONDecoder()


def _may_count(data: bytes | bytearray) -> bool:
    """Whether JSON text can hold a ``usage`` or ``timings`` key (a \\u escape could spell one)."""
    return b"usage" in data or b"timings" in data or b"\\u" in data


def _events_newest_first(text: bytes) -> Iterator[bytes]:
    """``text`` split into SSE events (blank-line separated), the last one first.

    Without a \\r in the text this walks back from the end and stops when the caller
    does, instead of splitting all of it (the regex took ~170 µs on a 10 KiB tail). In a
    run of three or more newlines the odd one may land on the other side of a split than
    in a left-to-right split; either way it only adds an empty line to an event.
    """
    if b"\r" in text:
        yield from reversed(_EVENT_SPLIT.split(text))
        return
    end = len(text)
    while (i := text.rfind(b"\n\n", 0, end)) >= 0:
        yield text[i + 2 : end]
        end = i
    yield text[:end]


def _sse_objects(tail: bytes | bytearray, max_events: int = 8) -> Iterator[Any]:
    """The JSON payloads of the last ``max_events`` complete-looking SSE events, newest first.

    Only events whose text could hold token counts are decoded (and yielded): a stream's
    end is mostly plain token deltas. This runs once per stream, but when many streams end
    together each one's cost holds back the others' last events.
    """
    seen = 0
    for raw in _events_newest_first(bytes(tail)):
        if seen >= max_events:
            return
        data = b"\n".join(line[5:].strip() for line in raw.splitlines() if line.startswith(b"data:"))
        if not data or data == b"[DONE]":
            continue
        seen += 1
        if not _may_count(data):
            continue
        try:
            yield json.loads(data)
        except ValueError:
            continue  # the first event of the tail is usually cut


def _find_object(tail: str, key: str) -> Any:
    """Decode the JSON value after the last ``"key":`` in a cut JSON text (None if none)."""
    at = tail.rfind(f'"{key}"')
    if at < 0:
        return None
    colon = tail.find(":", at)
    if colon < 0:
        return None
    start = colon + 1
    while start < len(tail) and tail[start] in " \t\r\n":
        start += 1
    try:
        value, _ = _DECODER.raw_decode(tail, start)
    except ValueError:
        return None
    return {key: value}


def usage_from_tail(tail: bytes | bytearray, *, sse: bool, complete: bool) -> tuple[int, int] | None:
    """(prompt tokens, completion tokens) from the end of a response, or None.

    ``usage`` wins over llama.cpp's ``timings`` (which leaves out cached prompt tokens).
    """
    fallback: tuple[int, int] | None = None
    if sse:
        for obj in _sse_objects(tail):
            usage, timings = _counts(obj)
            if usage is not None:
                return usage
            fallback = fallback or timings
        return fallback
    if complete:
        if not _may_count(tail):
            return None  # nothing to count: spare decoding the whole body
        try:
            usage, timings = _counts(json.loads(tail))
        except ValueError:
            return None
        return usage or timings
    text = bytes(tail).decode("utf-8", errors="replace")
    usage, _ = _counts(_find_object(text, "usage"))
    if usage is not None:
        return usage
    _, timings = _counts(_find_object(text, "timings"))
    return timings


def timings_from_tail(tail: bytes | bytearray, *, sse: bool) -> dict[str, Any] | None:
    """llama-server's ``timings`` object at the end of a response (None if it has none)."""
    if sse:
        for obj in _sse_objects(tail):
            if isinstance(obj, dict) and isinstance(obj.get("timings"), dict):
                return obj["timings"]
        return None
    found = _find_object(bytes(tail).decode("utf-8", errors="replace"), "timings")
    return found["timings"] if found is not None and isinstance(found["timings"], dict) else None
