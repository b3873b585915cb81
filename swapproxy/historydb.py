"""The request history's sqlite database: schema, batched inserts, pruning, and the queries of the API.

Synchronous, and used from the history's own thread only (:mod:`swapproxy.history`
hands it batches and queries); nothing here runs on the event loop. One table,
``history``; its schema version is the file's ``user_version``, so a later swapproxy can
migrate it. A file is opened in WAL mode; pages freed by pruning go back to the file
system (``auto_vacuum = INCREMENTAL``), so the file tracks what it holds.

Bounds: in memory, the newest ``metricsMaxInMemory`` rows (llama-swap's rule); in a file,
rows older than ``store.maxAge`` go, and when the database holds more than
``store.maxSize`` the oldest rows go until it holds nine tenths of it.

In memory, a batch's rows wait in a bounded deque and reach the sqlite table only when a query
needs them: most rows of a busy swapproxy are pushed out by newer ones before anyone asks, and
inserting each one cost more than all else the history does per request.

The statistics (:func:`histogram`) are llama-swap's: Sturges' rule for the bin count
(clamped to 5..20), percentiles by linear interpolation between closest ranks.
"""

from __future__ import annotations

import json
import math
from collections import deque
from typing import TYPE_CHECKING
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

if TYPE_CHECKING:
    import sqlite3

from .config.model import HistoryConfig

__all__ = ["ActivityQuery", "HistoryDB", "SORT_COLUMNS", "SCHEMA_VERSION", "histogram", "now_ms", "percentile",
           "rfc3339"]

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts_ms INTEGER NOT NULL,
    model TEXT NOT NULL,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    status INTEGER NOT NULL,
    content_type TEXT NOT NULL,
    duration_ms REAL NOT NULL,
    ttfb_ms REAL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cached_tokens INTEGER NOT NULL,
    draft_tokens INTEGER NOT NULL,
    draft_accepted INTEGER NOT NULL,
    prompt_per_second REAL NOT NULL,
    gen_per_second REAL NOT NULL,
    waited_for TEXT,
    wait_ms REAL,
    error TEXT NOT NULL,
    metadata TEXT NOT NULL
);
"""
#: A file's indexes (time filters and the age limit; model filters): worth their cost per row
#: (about 2 µs) on up to store.maxSize of rows; the in-memory store's few rows do without.
_FILE_INDEXES = """
CREATE INDEX IF NOT EXISTS history_ts ON history (ts_ms);
CREATE INDEX IF NOT EXISTS history_model ON history (model, id);
"""
_COLUMNS = ("id", "ts_ms", "model", "method", "path", "status", "content_type", "duration_ms", "ttfb_ms",
            "prompt_tokens", "completion_tokens", "cached_tokens", "draft_tokens", "draft_accepted",
            "prompt_per_second", "gen_per_second", "waited_for", "wait_ms", "error", "metadata")
#: Rows per INSERT statement, largest first: one statement of many rows costs less per row than
#: executemany (about 3 µs against 5), and a few fixed sizes keep the statements compiled
#: (sqlite3's statement cache) whatever the size of a batch. At most 32,766 parameters each.
_CHUNKS = (256, 32, 4, 1)
_INSERTS = {n: f"INSERT INTO history ({', '.join(_COLUMNS)}) VALUES "
               + ", ".join([f"({', '.join('?' * len(_COLUMNS))})"] * n) for n in _CHUNKS}
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM history"
#: ``sort`` values (llama-swap's, then swapproxy's) and their columns.
SORT_COLUMNS = {
    "id": "id", "time": "ts_ms", "model": "model", "req_path": "path", "resp_status_code": "status",
    "resp_content_type": "content_type", "cached": "cached_tokens", "prompt": "prompt_tokens",
    "generated": "completion_tokens", "drafted": "draft_tokens", "prompt_speed": "prompt_per_second",
    "gen_speed": "gen_per_second", "duration": "duration_ms", "ttfb": "ttfb_ms", "wait": "wait_ms",
    "method": "method",
}
#: Seconds between two passes of the age limit over a file.
AGE_PASS_EVERY = 60.0
_WAL_LIMIT = 8 << 20  # bytes the write-ahead log is cut back to after a checkpoint
_CACHE_KIB = 1024  # a file's page cache (sqlite's default is 2 MiB): rows are appended, rarely read


def rfc3339(ms: int) -> str:
    """A Unix time in milliseconds as RFC 3339 in UTC."""
    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def now_ms() -> int:
    """The Unix time in whole milliseconds (what the history and the samples are stamped with)."""
    return round(time.time() * 1000)


@dataclass(frozen=True)
class ActivityQuery:
    """``GET /api/metrics/activity``'s filters, order and page (validated by the route)."""

    models: tuple[str, ...] = ()
    start: int | None = None  # Unix milliseconds, inclusive
    end: int | None = None
    min_id: int | None = None
    max_id: int | None = None
    limit: int = 25
    page: int = 1
    sort: str = "id"
    order: str = "desc"

    def where(self) -> tuple[str, list[Any]]:
        conditions: list[str] = []
        args: list[Any] = []
        if self.models:
            conditions.append(f"model IN ({', '.join('?' * len(self.models))})")
            args.extend(self.models)
        for condition, value in (("ts_ms >= ?", self.start), ("ts_ms <= ?", self.end), ("id >= ?", self.min_id),
                                 ("id <= ?", self.max_id)):
            if value is not None:
                conditions.append(condition)
                args.append(value)
        return (" WHERE " + " AND ".join(conditions) if conditions else ""), args

    def order_by(self) -> str:
        column, direction = SORT_COLUMNS[self.sort], "ASC" if self.order == "asc" else "DESC"
        return f" ORDER BY {column} {direction}" + ("" if column == "id" else f", id {direction}")


def percentile(ordered: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (0..100) of sorted values, interpolating linearly between closest ranks."""
    if not ordered:
        return 0.0
    rank = p / 100 * (len(ordered) - 1)
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (rank - low) * (ordered[high] - ordered[low])


def histogram(values: Sequence[float]) -> dict[str, Any] | None:
    """llama-swap's histogram of speeds: ``{bins, min, max, binSize, p50, p95, p99}``; None without values."""
    if not values:
        return None
    ordered = sorted(values)
    low, high = ordered[0], ordered[-1]
    out: dict[str, Any] = {"min": low, "max": high, "p50": percentile(ordered, 50), "p95": percentile(ordered, 95),
                           "p99": percentile(ordered, 99)}
    if low == high:
        return {"bins": [len(ordered)], **out, "binSize": 0.0}
    count = min(20, max(5, math.ceil(math.log2(len(ordered))) + 1))  # Sturges' rule, clamped
    size = (high - low) / count
    bins = [0] * count
    for value in ordered:
        bins[min(int((value - low) // size), count - 1)] += 1
    return {"bins": bins, **out, "binSize": size}


def _tokens(row: Sequence[Any]) -> dict[str, Any]:
    return {"cache_tokens": row[11], "draft_tokens": row[12], "draft_acc_tokens": row[13], "input_tokens": row[9],
            "output_tokens": row[10], "prompt_per_second": row[14], "tokens_per_second": row[15]}


def _tenth(ms: float | None) -> float | None:
    """Milliseconds to a tenth (a float's last digits are noise: 1104.9999999995634)."""
    return None if ms is None else round(ms, 1)


def _entry(row: Sequence[Any], has_capture: bool) -> dict[str, Any]:
    """One row in llama-swap's ActivityLogEntry shape, plus swapproxy's fields."""
    entry: dict[str, Any] = {
        "id": row[0], "timestamp": rfc3339(row[1]), "model": row[2], "req_path": row[4],
        "resp_content_type": row[6], "resp_status_code": row[5], "tokens": _tokens(row),
        "duration_ms": round(row[7]), "has_capture": has_capture,
        "method": row[3], "ttfb_ms": _tenth(row[8]), "waited_for": row[16], "wait_ms": _tenth(row[17]),
    }
    if row[18]:
        entry["error_msg"] = row[18]
    if row[19]:
        entry["metadata"] = json.loads(row[19])
    return entry


class HistoryDB:
    """One open history database (a file, or in memory when ``settings.store_path`` is None)."""

    def __init__(self, settings: HistoryConfig) -> None:
        self.settings = settings
        self.path = settings.store_path
        self._opened: sqlite3.Connection | None = None
        self.next_id = 1
        if self.path:  # in memory, the database is made when a query first needs it (sqlite3 with it)
            row = self._conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'history'").fetchone()
            self.next_id = (row[0] if row else 0) + 1
        self._age_pass = 0.0
        # in memory: rows (id first) not yet in the table, the newest max_in_memory at most
        self._unsynced: deque[tuple[Any, ...]] | None = (
            None if self.path else deque(maxlen=settings.max_in_memory))
        self.prune()

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._opened is None:
            self._opened = self._open(self.path)
        return self._opened

    @staticmethod
    def _open(path: str | None) -> sqlite3.Connection:
        import sqlite3  # here: an idle swapproxy that keeps its history in memory never loads it

        conn = sqlite3.connect(path or ":memory:", isolation_level=None)
        try:
            conn.execute("PRAGMA busy_timeout = 5000")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise sqlite3.DatabaseError(f"its history was written by a newer swapproxy (schema {version})")
            if path:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise sqlite3.DatabaseError(f"WAL mode refused (journal_mode is {mode})")
                conn.execute("PRAGMA synchronous = NORMAL")
                conn.execute(f"PRAGMA journal_size_limit = {_WAL_LIMIT}")
                conn.execute(f"PRAGMA cache_size = -{_CACHE_KIB}")
                if version == 0:  # a new file: freed pages go back to the file system (set before any table)
                    conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            conn.executescript(_SCHEMA + (_FILE_INDEXES if path else ""))
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except BaseException:
            conn.close()
            raise
        return conn

    def close(self) -> None:
        conn, self._opened = self._opened, None
        if conn is None:
            return
        try:
            if self.path:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()

    # -- writes --------------------------------------------------------------------------------
    def insert(self, rows: Sequence[Sequence[Any]]) -> int:
        """Insert ``rows`` (without their id) in one transaction; returns the first id given (then +1 each).

        In memory they are only queued (see the module docstring)."""
        first = self.next_id
        self.next_id = first + len(rows)
        if self._unsynced is not None:
            self._unsynced.extend((i, *row) for i, row in enumerate(rows, first))
            return first
        try:
            self._write([(i, *row) for i, row in enumerate(rows, first)])
        except BaseException:
            self.next_id = first
            raise
        return first

    def _write(self, rows: Sequence[Sequence[Any]]) -> None:
        """Rows with their ids, in one transaction."""
        conn = self._conn
        conn.execute("BEGIN")
        try:
            at = 0
            for size in _CHUNKS:
                while len(rows) - at >= size:
                    conn.execute(_INSERTS[size], [v for row in rows[at:at + size] for v in row])
                    at += size
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _sync(self) -> None:
        """In memory: the queued rows into the table, and the table cut to the newest max_in_memory."""
        if self._unsynced is None or not self._unsynced:
            return
        rows = list(self._unsynced)
        self._unsynced.clear()
        self._write(rows)
        self._conn.execute("DELETE FROM history WHERE id < ?", (self.next_id - self.settings.max_in_memory,))

    def prune(self) -> int:
        """Apply the bounds (see the module docstring); returns the rows deleted."""
        settings = self.settings
        if not self.path:
            if self._unsynced is not None and self._unsynced.maxlen != settings.max_in_memory:
                self._unsynced = deque(self._unsynced, maxlen=settings.max_in_memory)
            return 0  # the queue is bounded, and the table is cut when it is next read
        conn = self._conn
        gone = 0
        now = time.monotonic()
        if settings.max_age > 0 and now - self._age_pass >= AGE_PASS_EVERY:
            self._age_pass = now
            gone += conn.execute("DELETE FROM history WHERE ts_ms < ?",
                                 (now_ms() - round(settings.max_age * 1000),)).rowcount
        if settings.max_bytes > 0 and self.used_bytes() > settings.max_bytes:
            gone += self._shrink(settings.max_bytes * 9 // 10)
        if gone:
            conn.execute("PRAGMA incremental_vacuum")
        return gone

    def used_bytes(self) -> int:
        """Bytes of the database's pages in use (its file size, less free pages)."""
        conn = self._conn
        pages = conn.execute("PRAGMA page_count").fetchone()[0] - conn.execute("PRAGMA freelist_count").fetchone()[0]
        return pages * conn.execute("PRAGMA page_size").fetchone()[0]

    def _shrink(self, target: int) -> int:
        """Delete the oldest rows, in proportion, until about ``target`` bytes are in use."""
        gone = 0
        for _ in range(8):
            used = self.used_bytes()
            low, count = self._conn.execute("SELECT MIN(id), COUNT(*) FROM history").fetchone()
            if used <= target or not count:
                break
            share = min(1.0, max(0.01, 1 - target / used))
            cut = low + max(1, int(count * share))
            gone += self._conn.execute("DELETE FROM history WHERE id < ?", (cut,)).rowcount
        return gone

    def reconfigure(self, settings: HistoryConfig) -> None:
        """New bounds for the same store (a reload that kept store.path)."""
        self.settings = settings
        self._age_pass = 0.0
        self.prune()
        if not self.path and self._opened is not None:  # a smaller bound applies to the table too, at once
            self._opened.execute("DELETE FROM history WHERE id < ?", (self.next_id - settings.max_in_memory,))

    # -- queries --------------------------------------------------------------------------------
    def activity(self, query: ActivityQuery, captured: Any) -> dict[str, Any]:
        """One page of rows (``captured``: row id -> whether a capture is kept), llama-swap's page shape."""
        self._sync()
        where, args = query.where()
        total = self._conn.execute("SELECT COUNT(*) FROM history" + where, args).fetchone()[0]
        rows = self._conn.execute(_SELECT + where + query.order_by() + " LIMIT ? OFFSET ?",
                                  [*args, query.limit, (query.page - 1) * query.limit]).fetchall()
        return {"data": [_entry(row, row[0] in captured) for row in rows], "page": query.page, "limit": query.limit,
                "total": total, "total_pages": math.ceil(total / query.limit) if total else 0}

    def stats(self, model: str | None) -> dict[str, Any]:
        """Totals and speed histograms, all rows or one model's."""
        self._sync()
        where, args = ActivityQuery(models=(model,) if model else ()).where()
        requests, prompt, output, cached = self._conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(completion_tokens), 0), "
            "COALESCE(SUM(MAX(cached_tokens, 0)), 0) FROM history" + where, args).fetchone()
        speeds = self._conn.execute(
            "SELECT prompt_per_second, gen_per_second FROM history" + (where + " AND" if where else " WHERE")
            + " (prompt_per_second > 0 OR gen_per_second > 0)", args).fetchall()
        return {"total_requests": requests, "total_input_tokens": prompt, "total_output_tokens": output,
                "total_cache_tokens": cached,
                "prompt_histogram": histogram([p for p, _ in speeds if p > 0]),
                "gen_histogram": histogram([g for _, g in speeds if g > 0])}
