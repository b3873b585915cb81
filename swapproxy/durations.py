"""Durations as people write them in a config: Go's ``5s``, ``1m30s``, ``500ms``, ``2h``, plus ``d`` for days.

llama-swap reads ``performance.every`` with Go's ``time.ParseDuration``; swapproxy
reads the same strings, adds ``d`` (24 h: ``store.maxAge: 30d``), and takes a plain
number as seconds (Go's YAML decoder would take it as nanoseconds).
"""

from __future__ import annotations

import re

from .sizes import plain_number

__all__ = ["parse_duration", "format_duration"]

_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h|d)")
_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0,
         "d": 86400.0}


def parse_duration(value: int | float | str) -> float:
    """Seconds from ``value``: a number of seconds, or a string of number-unit parts (``1h30m``).

    Raises ValueError for anything else, or a negative duration.
    """
    number = plain_number(value, "duration")
    if number is not None:
        return float(number)
    assert isinstance(value, str)
    text = value.strip()
    if text in ("0", "+0"):
        return 0.0
    text = text.removeprefix("+")
    total, at = 0.0, 0
    for match in _PART.finditer(text):
        if match.start() != at:
            break
        total += float(match[1]) * _UNIT[match[2]]
        at = match.end()
    if at == 0 or at != len(text):
        raise ValueError(f"not a duration: {value!r} (write e.g. 5s, 1m30s, 2h or 30d)")
    return total


def format_duration(seconds: float) -> str:
    """``seconds`` the way Go prints a duration, roughly: ``5s``, ``1m30s``, ``500ms``."""
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(int(minutes), 60)
    out = (f"{hours}h" if hours else "") + (f"{minutes}m" if hours or minutes else "")
    return out + f"{secs:g}s"
