"""Token counts from the end of a response: the ``usage`` or ``timings`` upstreams put there.

(:class:`TailCounts` also hands over llama-server's whole ``timings``, whose ``cache_n``
tells the slot cache whether a restored slot was reused, and which the request history reads.)

:class:`TokenTap` keeps only the last few KiB of the bytes relayed (amortised O(1) per chunk,
no parsing on the hot path); :func:`tail_counts` parses that tail once, after the last
byte went to the client (:mod:`swapproxy.metrics` counts what it finds).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any

__all__ = ["TailCounts", "TokenTap", "tail_counts", "usage_from_tail"]


class TokenTap:
    """``on_chunk`` callback for :func:`swapproxy.web.proxy.forward`: keeps the response's tail.

    Also notes when the first body byte went out (time to first byte), and with ``cap`` keeps the
    body's first ``cap`` bytes for the request history's capture (the chunks as they came:
    nothing is copied; ``chunks`` is None without it). One class, not a subclass, as this runs
    for every chunk of every response.
    """

    __slots__ = ("limit", "tail", "total", "first_at", "chunks", "kept", "cap")

    def __init__(self, limit: int = 8192, cap: int = 0) -> None:
        self.limit = limit
        self.tail = bytearray()
        self.total = 0
        self.first_at: float | None = None
        self.chunks: list[bytes] | None = [] if cap > 0 else None
        self.kept = 0
        self.cap = cap

    def __call__(self, chunk: bytes) -> None:
        if self.first_at is None:
            self.first_at = time.perf_counter()
        self.total += len(chunk)
        tail = self.tail
        tail += chunk
        if len(tail) > 2 * self.limit:  # trim rarely: amortised O(1) per byte
            del tail[: -self.limit]
        if self.kept < self.cap:
            self.chunks.append(chunk)  # type: ignore[union-attr]  # cap > 0: a list
            self.kept += len(chunk)

    @property
    def complete(self) -> bool:
        """True when the tail holds the whole body."""
        return self.total == len(self.tail)


class TailCounts:
    """What the end of a response says of its tokens, parsed once for the metrics, the slot
    cache and the request history.

    ``tokens``: (prompt, completion), from ``usage`` if the answer has one, else from
    llama-server's ``timings`` (which leave out cached prompt tokens); ``usage`` and
    ``timings`` are the objects themselves (newest first in a stream), for whoever wants
    more of them (the history reads cached tokens and speeds off the event loop).
    """

    __slots__ = ("usage", "timings", "_from_usage", "_from_timings", "_summed")

    def __init__(self) -> None:
        self.usage: dict[str, Any] | None = None
        self.timings: dict[str, Any] | None = None
        self._from_usage: tuple[int, int] | None = None
        self._from_timings: tuple[int, int] | None = None
        self._summed: tuple[int, int] | None = None  # a list body's items, added up

    @property
    def tokens(self) -> tuple[int, int] | None:
        """(prompt, completion): a list body's sum, else ``usage``'s, else the newest ``timings``' counts."""
        return self._summed or self._from_usage or self._from_timings

    def take(self, obj: Any) -> bool:
        """Note ``obj``'s usage and timings unless newer ones were found; True once both are known."""
        if not isinstance(obj, dict):
            return False
        if self._from_usage is None:
            usage = obj.get("usage")
            if not isinstance(usage, dict) and isinstance(obj.get("response"), dict):
                usage = obj["response"].get("usage")  # Responses API: response.completed event
            if isinstance(usage, dict):
                prompt = usage.get("prompt_tokens", usage.get("input_tokens"))
                completion = usage.get("completion_tokens", usage.get("output_tokens", 0))
                if isinstance(prompt, int) and isinstance(completion, int):
                    self.usage = usage
                    self._from_usage = (prompt, completion)
        timings = obj.get("timings")
        if isinstance(timings, dict):
            if self.timings is None:  # the newest, whatever it holds (the slot cache reads its cache_n)
                self.timings = timings
            if self._from_timings is None:
                prompt, predicted = timings.get("prompt_n"), timings.get("predicted_n")
                if isinstance(prompt, int) and isinstance(predicted, int):
                    self._from_timings = (prompt, predicted)
        return self._from_usage is not None and self._from_timings is not None

    def take_items(self, items: list[Any]) -> None:
        """A list body (``/completion`` with several prompts, ``/infill``): the last item's objects,
        and the tokens of all of them added up (when every item reports its own)."""
        counts = []
        for item in reversed(items):
            one = TailCounts()
            one.take(item)
            self.take(item)
            counts.append(one.tokens)
        if counts and all(c is not None for c in counts):
            self._summed = (sum(c[0] for c in counts if c), sum(c[1] for c in counts if c))

    @property
    def cache_n(self) -> int | None:
        """llama-server's count of prompt tokens its slot's cache held (None: not reported)."""
        value = self.timings.get("cache_n") if self.timings is not None else None
        return value if isinstance(value, int) else None


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


def tail_counts(tail: bytes | bytearray, *, sse: bool, complete: bool) -> TailCounts:
    """The token counts (and usage and timings objects) at the end of a response."""
    found = TailCounts()
    if sse:
        for obj in _sse_objects(tail):
            if found.take(obj):
                break
        return found
    if complete:
        if not _may_count(tail):
            return found  # nothing to count: spare decoding the whole body
        try:
            obj = json.loads(tail)
        except ValueError:
            obj = None  # not JSON as a whole: look for the objects in its text, as in a cut body
        else:
            if isinstance(obj, list):
                found.take_items(obj)
            else:
                found.take(obj)
            return found
    text = bytes(tail).decode("utf-8", errors="replace")
    found.take(_find_object(text, "usage"))
    found.take(_find_object(text, "timings"))
    return found


def usage_from_tail(tail: bytes | bytearray, *, sse: bool, complete: bool) -> tuple[int, int] | None:
    """(prompt tokens, completion tokens) from the end of a response, or None.

    ``usage`` wins over llama.cpp's ``timings`` (which leaves out cached prompt tokens).
    """
    return tail_counts(tail, sse=sse, complete=complete).tokens
