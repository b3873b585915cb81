"""How far a model's start has come: its stage (from llama-server's own log) and, where swapproxy
has seen this command start before, a progress value and the time left.

llama-server prints no percentage while it loads (its own progress callback is
silent outside llama.cpp's router), but its log names the steps: reading the
GGUF's metadata, loading the tensors, building the context, warming up,
listening. :func:`stage_of` maps a line to the stage it begins. The value comes
from time: the elapsed share of the median of this command's recent starts
(:meth:`~swapproxy.learned.Learned.expected_start`), held below 1 until the
model is ready, and never going back. A command never started before has no
value and no time left: it says so (``first start``) rather than invent one.
A start slower than usual stays just below 1 and says it takes longer than usual.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

__all__ = ["STAGES", "StartProgress", "stage_of", "later", "start_progress", "router_progress"]

#: The stages of a start, in order. ``starting``: spawned, nothing said yet; ``health check``:
#: the server says it listens and swapproxy waits for its check endpoint; ``restoring slots``:
#: the slot cache (see :mod:`swapproxy.slotcache`).
STAGES = ("starting", "reading model", "loading tensors", "creating context", "warming up", "health check",
          "restoring slots")

_MARKERS: tuple[tuple[re.Pattern[str], str], ...] = (  # the first that matches a line decides
    (re.compile(r"load_model: loading model|llama_model_loader: |\bprint_info: "), "reading model"),
    (re.compile(r"\bload_tensors: "), "loading tensors"),
    (re.compile(r"llama_context: |llama_kv_cache|threadpool init|load_model: initializing"), "creating context"),
    (re.compile(r"warming up|warmup"), "warming up"),
    (re.compile(r"model loaded"), "health check"),  # ("listening" comes before the load in older builds)
)
#: While a start is under way its value stays below this (only READY is 1).
_CEILING = 0.99


def stage_of(line: str) -> str | None:
    """The stage a log line begins (None: a line that says nothing about it)."""
    for pattern, stage in _MARKERS:
        if pattern.search(line):
            return stage
    return None


def later(current: str | None, seen: str) -> str:
    """The later of two stages (log lines may come out of order between stdout and stderr)."""
    if current not in STAGES:
        return seen
    return seen if STAGES.index(seen) > STAGES.index(current) else current


@dataclass(frozen=True)
class StartProgress:
    """One model's start right now."""

    stage: str
    elapsed_s: float
    expected_s: float | None  # the median of this command's recent starts; None before the first
    value: float | None  # 0..1 (below 1 until ready); None without an expected time

    @property
    def eta_s(self) -> float | None:
        """Seconds left by the expected time (0 once past it); None without one."""
        return None if self.expected_s is None else max(self.expected_s - self.elapsed_s, 0.0)

    def as_json(self) -> dict[str, Any]:
        eta = self.eta_s
        return {"stage": self.stage, "elapsed_s": round(self.elapsed_s, 2),
                "expected_s": None if self.expected_s is None else round(self.expected_s, 2),
                "value": None if self.value is None else round(self.value, 3),
                "eta_s": None if eta is None else round(eta, 1), "first_start": self.expected_s is None}

    def describe(self) -> str:
        """One line for people: ``loading tensors, 45%, about 3 s left``."""
        if self.expected_s is None:
            return f"{self.stage}, {self.elapsed_s:.0f}s (first start: no estimate yet)"
        if self.elapsed_s > self.expected_s:
            return f"{self.stage}, {self.elapsed_s:.0f}s, longer than its usual {self.expected_s:.0f}s"
        return f"{self.stage}, {100 * (self.value or 0):.0f}%, about {self.eta_s:.0f}s left"


def start_progress(stage: str | None, elapsed: float, expected: float | None) -> StartProgress:
    """The progress of a start ``elapsed`` seconds in (it only grows: time does)."""
    value = None if not expected else min(max(elapsed, 0.0) / expected, _CEILING)
    return StartProgress(stage or STAGES[0], max(elapsed, 0.0), expected, value)


def router_progress(progress: dict[str, Any]) -> dict[str, Any]:
    """llama.cpp router mode's ``progress`` object (``stages``, ``current``, ``value``) for a
    :meth:`StartProgress.as_json`; without ``value`` on a first start, where there is nothing to
    base one on."""
    out: dict[str, Any] = {"stages": list(STAGES), "current": progress["stage"]}
    if progress.get("value") is not None:
        out["value"] = progress["value"]
    return out
