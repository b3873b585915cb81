"""Readiness probing: the schedule of probes and the hint that says "probe now".

Pure functions and one small async helper; nothing here knows about processes.
The schedule probes at once and then on a short growing interval capped low,
so a server that becomes healthy is noticed within ~25 ms (llama-swap waits
250 ms and then polls every second). A log line that announces the server is
listening cuts the current wait short.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

__all__ = ["probe_intervals", "READY_HINT", "is_ready_hint"]

#: Output lines after which a probe is likely to succeed (llama-server prints
#: "main: server is listening on ..." once the model is loaded).
READY_HINT = re.compile(r"listening|model loaded|server is ready|startup complete", re.IGNORECASE)


def probe_intervals(first: float = 0.005, factor: float = 1.5, cap: float = 0.025) -> Iterator[float]:
    """Seconds to wait before each successive probe: 0, first, first*factor, ... capped."""
    yield 0.0
    delay = first
    while True:
        yield delay
        delay = min(delay * factor, cap)


def is_ready_hint(line: str) -> bool:
    """Whether an output line suggests the server has just become reachable."""
    return READY_HINT.search(line) is not None
