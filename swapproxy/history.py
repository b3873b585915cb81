"""The request history: every proxied request, recorded off the request path, kept in sqlite.

While a request runs, the web layer fills in its :class:`Note` (its model, how long it
waited for a swap or a start, its response's token tap); when it ends, one tuple of
references (:data:`PENDING_FIELDS`) goes into a bounded list, and the request is done.
Every :data:`FLUSH_DELAY` seconds the list is handed, as one batch, to the history's own
thread, which works out the token counts, speeds and error messages, inserts the rows
(:class:`~swapproxy.historydb.HistoryDB`), keeps their captures
(:class:`~swapproxy.captures.Captures`) and applies the bounds. Then, back on the
event loop, each new row is announced on the event bus as ``{"type": "activity", "id": N}``.
When the list is full (the thread cannot keep up), a request's record is dropped and
counted (:attr:`History.dropped`): a request never waits for the history.

The database and the captures belong to that thread: the API's queries run there too,
never on the event loop. A store that cannot be opened (a damaged file) is logged, and
the history is kept in memory instead; swapproxy serves on.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, TypeVar

from .captures import Captures, body_cap, capture_json
from .config.model import HistoryConfig
from .events import EventBus
from .exposition import counter, gauge
from .historydb import ActivityQuery, HistoryDB
from .redact import Redactor
from .tokens import TailCounts, TokenTap

__all__ = ["History", "HistoryState", "Note", "PENDING_FIELDS", "FLUSH_DELAY", "MAX_PENDING", "error_message"]

logger = logging.getLogger(__name__)

#: Seconds between the end of a request and the write of its batch (more requests join it meanwhile).
FLUSH_DELAY = 0.25
#: Records waiting for the thread at most; more are dropped (and counted).
MAX_PENDING = 10_000
#: The longest error message kept (llama-swap's limit).
ERROR_CHARS = 500
#: What the request path hands over per request, in this order (one tuple: the cheapest to build).
PENDING_FIELDS = ("ts", "model", "method", "path", "status", "reason", "content_type", "duration_ms", "ttfb_ms",
                  "counts", "waited_for", "wait_ms", "priority", "selector", "error_body", "error", "material")
T = TypeVar("T")


class HistoryState(enum.Enum):
    """Whether the history takes records."""

    CLOSED = "closed"  # not opened yet, or shut down: records are ignored
    OPEN = "open"


class Note:
    """What the request path learns of one proxied request while it runs."""

    __slots__ = ("model", "selector", "priority", "waited_for", "wait_ms", "tap", "counts", "req_body", "error")

    def __init__(self) -> None:
        self.model = ""
        self.selector: str | None = None  # the selector the requested name went through
        self.priority: int | None = None  # the fifo priority it was served with
        self.waited_for: str | None = None  # "swap", "start" or "queue" (see Lease); None: served at once
        self.wait_ms: float | None = None
        self.tap: TokenTap | None = None  # the relayed body's tap (its tail; a capture's first chunks)
        self.counts: TailCounts | None = None  # the tail's token counts, parsed once
        self.req_body: bytes | None = None  # the body sent upstream, for a capture
        self.error: str | None = None  # an error the client got inside a 200 (the loading stream)


def error_message(status: int, reason: str | None, body: bytes | None) -> str:
    """A failed answer's message: from ``error.message``, ``error``, ``message`` or ``detail``; else its status."""
    if body:
        try:
            obj = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            obj = None
        if isinstance(obj, dict):
            error = obj.get("error")
            for value in (error.get("message") if isinstance(error, dict) else None, error, obj.get("message"),
                          obj.get("detail")):
                if isinstance(value, str) and value.strip():
                    text = value.strip()
                    return text if len(text) <= ERROR_CHARS else text[:ERROR_CHARS] + "..."
    return f"{status} {reason}" if reason else f"HTTP {status}"


def _int(value: Any) -> int:
    return value if type(value) is int else -1


def _float(value: Any) -> float:
    return float(value) if type(value) in (int, float) else -1.0


def _cached_from_usage(usage: dict[str, Any]) -> int:
    """Cached prompt tokens as OpenAI (prompt_tokens_details), the Responses API or Anthropic report them."""
    details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details")
    if isinstance(details, dict) and type(details.get("cached_tokens")) is int:
        return details["cached_tokens"]
    return _int(usage.get("cache_read_input_tokens"))


#: metadata JSON by (fifo priority, selector): a handful of distinct values, serialised once each
_METADATA: dict[tuple[int | None, str | None], str] = {}


def _metadata(priority: int | None, selector: str | None) -> str:
    key = (priority, selector)
    text = _METADATA.get(key)
    if text is None:
        found: dict[str, str] = {}
        if priority is not None:
            found["fifo_priority"] = str(priority)
        if selector is not None:
            found["selector"] = selector
        text = json.dumps(found) if found else ""
        if len(_METADATA) < 4096:
            _METADATA[key] = text
    return text


def _row(item: tuple[Any, ...]) -> tuple[Any, ...]:
    """A pending record (see PENDING_FIELDS) as a database row, without its id."""
    (ts, model, method, path, status, reason, content_type, duration_ms, ttfb_ms, counts, waited_for, wait_ms,
     priority, selector, error_body, error, _) = item
    prompt = completion = 0
    cached = draft = accepted = -1
    prompt_speed = gen_speed = -1.0
    if counts is not None:
        if counts.tokens is not None:
            prompt, completion = counts.tokens
        timings = counts.timings
        if timings is not None:
            cached = _int(timings.get("cache_n"))
            prompt_speed = _float(timings.get("prompt_per_second"))
            gen_speed = _float(timings.get("predicted_per_second"))
            if "draft_n" in timings:
                draft, accepted = _int(timings["draft_n"]), _int(timings.get("draft_n_accepted"))
        if cached < 0 and counts.usage is not None:
            cached = _cached_from_usage(counts.usage)
    if status >= 400 and not error:
        error = error_message(status, reason, error_body)
    content_type = content_type.partition(";")[0].strip().lower()  # the header as sent: its media type
    return (round(ts * 1000), model, method, path, status, content_type, duration_ms, ttfb_ms, prompt, completion,
            cached, draft, accepted, prompt_speed, gen_speed, waited_for, wait_ms, error or "",
            _metadata(priority, selector))


class History:
    """The recorder (on the event loop) and its thread (the database, the captures)."""

    def __init__(self, settings: HistoryConfig, events: EventBus, *, enabled: bool = True) -> None:
        self.settings = settings
        self.events = events
        self.enabled = enabled  # False: nothing is recorded (the cost benchmark's baseline)
        self.state = HistoryState.CLOSED
        self.dropped = 0  # records dropped because the thread could not keep up
        self.written = 0  # rows written
        self.max_pending = MAX_PENDING
        self.body_cap = body_cap(settings.capture_bytes) if enabled else 0  # 0: no captures
        self._pending: list[tuple[Any, ...]] = []
        self._flush_at: asyncio.TimerHandle | None = None
        self._writing: asyncio.Future[tuple[int, int]] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._db: HistoryDB | None = None  # the thread's
        self._captures = Captures(settings.capture_bytes)  # the thread's

    # -- life -----------------------------------------------------------------------------------
    async def open(self) -> None:
        """Open the store (in the history's thread) and take records from now on."""
        self._loop = asyncio.get_running_loop()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="swapproxy-history")
        await self._run(self._open_db, self.settings)
        self.state = HistoryState.OPEN

    def _open_db(self, settings: HistoryConfig) -> None:
        if settings.store_path is None:  # in memory: made when first read (HistoryDB), nothing to fail now
            self._db = HistoryDB(settings)
            return
        import sqlite3  # here, as HistoryDB imports it: an idle in-memory history never loads it

        try:
            self._db = HistoryDB(settings)
        except (sqlite3.Error, OSError) as exc:
            logger.error("store.path %s: cannot open the request history (%s); it is kept in memory instead",
                         settings.store_path, exc)
            self._db = HistoryDB(replace(settings, store_path=None))

    async def close(self) -> None:
        """Write what is pending, then close the store."""
        if self.state is not HistoryState.OPEN:
            return
        self.state = HistoryState.CLOSED
        if self._flush_at is not None:
            self._flush_at.cancel()
        if self._writing is not None:
            await asyncio.wait([self._writing])
        if self._pending:
            batch, self._pending = self._pending, []
            await self._run(self._write, batch)
        await self._run(self._close_db)
        assert self._executor is not None
        self._executor.shutdown(wait=False)

    def _close_db(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def reconfigure(self, settings: HistoryConfig) -> None:
        """A reload: a new store.path opens that store; new bounds apply at once."""
        if settings == self.settings or self._executor is None:
            return
        self.settings = settings
        self.body_cap = body_cap(settings.capture_bytes) if self.enabled else 0
        self._executor.submit(self._reconfigure_db, settings)

    def _reconfigure_db(self, settings: HistoryConfig) -> None:
        self._captures.resize(settings.capture_bytes)
        if self._db is not None and self._db.path == settings.store_path:
            self._db.reconfigure(settings)
            return
        self._close_db()
        self._captures.clear()  # their ids were the old store's
        self._open_db(settings)
        logger.info("request history: now in %s", settings.store_path or "memory")

    # -- records --------------------------------------------------------------------------------
    def record(self, item: tuple[Any, ...]) -> None:
        """Take one request's record (see PENDING_FIELDS); never waits. Dropped (counted) when full."""
        if self.state is not HistoryState.OPEN:
            return
        if len(self._pending) >= self.max_pending:
            self.dropped += 1
            return
        self._pending.append(item)
        if self._flush_at is None and self._writing is None:
            assert self._loop is not None
            self._flush_at = self._loop.call_later(FLUSH_DELAY, self._flush)

    def _flush(self) -> None:
        self._flush_at = None
        if not self._pending or self._writing is not None or self.state is not HistoryState.OPEN:
            return
        batch, self._pending = self._pending, []
        assert self._loop is not None
        self._writing = self._loop.run_in_executor(self._executor, self._write, batch)
        self._writing.add_done_callback(self._written)

    def _write(self, batch: list[tuple[Any, ...]]) -> tuple[int, int]:
        """(The thread.) Insert a batch, keep its captures, apply the bounds: (first id, rows)."""
        db = self._db
        assert db is not None
        first = db.insert([_row(item) for item in batch])
        if self._captures.limit:
            for offset, item in enumerate(batch):
                material = item[-1]
                if material is not None:
                    self._captures.add(first + offset, material)
        db.prune()
        return first, len(batch)

    def _written(self, done: asyncio.Future[tuple[int, int]]) -> None:
        self._writing = None
        if done.cancelled():
            return
        error = done.exception()
        if error is not None:
            logger.error("request history: a batch could not be written (%s)", error)
        else:
            first, count = done.result()
            self.written += count
            if self.events.subscriber_count:
                for row_id in range(first, first + count):
                    self.events.publish({"type": "activity", "id": row_id})
        if self._pending and self._flush_at is None and self.state is HistoryState.OPEN:
            assert self._loop is not None
            self._flush_at = self._loop.call_later(FLUSH_DELAY, self._flush)

    # -- queries (in the thread) ----------------------------------------------------------------
    async def _run(self, call: Callable[..., T], *args: Any) -> T:
        assert self._loop is not None and self._executor is not None
        return await self._loop.run_in_executor(self._executor, call, *args)

    async def activity(self, query: ActivityQuery) -> dict[str, Any]:
        """``GET /api/metrics/activity``'s page."""
        return await self._run(lambda: self._live().activity(query, self._captures))

    async def stats(self, model: str | None) -> dict[str, Any]:
        """``GET /api/metrics/stats``' totals and histograms."""
        return await self._run(lambda: self._live().stats(model))

    async def capture(self, row_id: int, redactor: Redactor) -> dict[str, Any] | None:
        """Capture ``row_id`` with its secrets taken out; None when none is kept."""
        def read() -> dict[str, Any] | None:
            found = self._captures.get(row_id)
            return None if found is None else capture_json(row_id, found, redactor)
        return await self._run(read)

    @property
    def capture_bytes(self) -> int:
        """What the captures hold now (the thread's figure, read as it stands)."""
        return self._captures.size

    def exposition(self) -> str:
        """Its figures for /metrics: rows written, records dropped, the captures' bytes."""
        return (counter("swapproxy_history_recorded", "Requests written to the request history", [("", self.written)])
                + counter("swapproxy_history_dropped", "Requests not recorded: the history's queue was full",
                          [("", self.dropped)])
                + gauge("swapproxy_history_capture_bytes", "Memory the request captures hold (at most captureBuffer)",
                        [("", self.capture_bytes)]))

    def _live(self) -> HistoryDB:
        if self._db is None:
            raise RuntimeError("the request history is closed")
        return self._db

