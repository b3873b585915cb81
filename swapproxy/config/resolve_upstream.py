"""Resolution of ``upstream``: which ``/upstream/<model>/<path>`` paths never start or swap a model.

``ignorePaths`` holds regular expressions searched in the path after the model's name;
an absent or empty list means llama-swap's default (static assets). llama-swap compiles
them as Go (RE2) expressions: the common syntax is the same in Python's ``re``.
"""

from __future__ import annotations

import re

from .model import DEFAULT_IGNORE_PATHS
from .problems import _Report
from .schema import RawConfig

__all__ = ["_resolve_upstream"]


def _resolve_upstream(report: _Report, raw: RawConfig) -> tuple[re.Pattern[str], ...]:
    patterns: list[re.Pattern[str]] = []
    for i, text in enumerate(raw.upstream.ignorePaths):
        try:
            patterns.append(re.compile(text))
        except re.error as exc:
            report.problem(("upstream", "ignorePaths", i), f"invalid regular expression {text!r}: {exc}")
    return tuple(patterns) or DEFAULT_IGNORE_PATHS
