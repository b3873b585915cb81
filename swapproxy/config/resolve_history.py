"""Resolution of the request history's keys: ``store``, ``metricsMaxInMemory``, ``captureBuffer``, ``performance``.

``store.path`` is checked as llama-swap checks it when the config is read: not empty,
not a directory, and writable (the file, or the directory it would be created in).
``store.maxAge`` and ``store.maxSize`` (swapproxy) bound a file; ``metricsMaxInMemory``
bounds the in-memory store (<= 0 means llama-swap's 1000). ``captureBuffer`` is MB
(<= 0: no captures); ``performance.every`` is at least 5 s, as llama-swap requires.
"""

from __future__ import annotations

import os

from ..durations import format_duration, parse_duration
from ..sizes import parse_size
from .model import HistoryConfig
from .problems import _KeyPath, _Report
from .schema import RawConfig

__all__ = ["_resolve_history", "_store_path_problem", "MIN_PERFORMANCE_EVERY"]

#: llama-swap's minimum for performance.every, in seconds.
MIN_PERFORMANCE_EVERY = 5.0
_DEFAULT_IN_MEMORY = 1000


def _store_path_problem(path: str) -> str | None:
    """Why ``path`` cannot hold the store (None when it can)."""
    if not path.strip():
        return "must not be empty"
    if os.path.isdir(path):
        return f"{path} is a directory, not a file"
    if os.path.exists(path):
        return None if os.access(path, os.W_OK) else f"{path} is not writable"
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        return f"directory {folder} does not exist"
    return None if os.access(folder, os.W_OK) else f"directory {folder} is not writable"


def _duration(report: _Report, value: float | str, path: _KeyPath) -> float | None:
    try:
        return parse_duration(value)
    except ValueError as exc:
        report.problem(path, str(exc))
        return None


def _resolve_history(report: _Report, raw: RawConfig) -> HistoryConfig:
    store, perf = raw.store, raw.performance
    path = store.path
    if path is not None:
        path = os.path.expanduser(path)
        why = _store_path_problem(path)
        if why is not None:
            report.problem(("store", "path"), why)
    max_age = _duration(report, store.maxAge, ("store", "maxAge"))
    try:
        max_bytes = parse_size(store.maxSize)
    except ValueError as exc:
        report.problem(("store", "maxSize"), str(exc))
        max_bytes = 0
    every = _duration(report, perf.every, ("performance", "every"))
    if every is not None and every < MIN_PERFORMANCE_EVERY:
        report.problem(("performance", "every"), f"must be at least 5s, got {format_duration(every)}")
    capture_mb = raw.captureBuffer
    return HistoryConfig(
        store_path=path, max_age=max_age or 0.0, max_bytes=max_bytes,
        max_in_memory=raw.metricsMaxInMemory if raw.metricsMaxInMemory > 0 else _DEFAULT_IN_MEMORY,
        capture_bytes=int(capture_mb * 1024 * 1024) if capture_mb > 0 else 0,
        performance=not perf.disabled, performance_every=max(every or MIN_PERFORMANCE_EVERY, MIN_PERFORMANCE_EVERY))
