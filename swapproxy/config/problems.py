"""Problems and the line index: how every stage of a load reports a mistake with ``file:line``.

Each stage addresses a place in the file by its key path (``("models", "llama", "ttl")``);
:class:`_Report` maps that path to the line the YAML stage recorded for it and collects
:class:`Problem` s and notices, so that a load can report every mistake at once as one
:class:`ConfigError`. The helpers spell key paths (``models.llama.aliases[0]``), values and
"did you mean" suggestions the same way for every stage.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

__all__ = ["ConfigError", "Problem", "_KeyPath", "_Report", "_dotted", "_short", "_suggest"]

_KeyPath = tuple[Any, ...]


@dataclass(frozen=True)
class Problem:
    """One mistake in a config file; ``line`` is 1-based, 0 when unknown."""

    file: str
    line: int
    key_path: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.key_path}: {self.message}"


class ConfigError(Exception):
    """Every problem found while loading a config; ``str()`` gives one per line."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems: list[Problem] = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class _Report:
    """One load's line index (key path -> line) and the problems and notices found so far.

    A config merged from several files (``--config-dir``) also knows, in ``files``, which
    file each key path came from when it is not ``file``."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.lines: dict[_KeyPath, int] = {}
        self.files: dict[_KeyPath, str] = {}
        self.problems: list[Problem] = []
        self.notices: list[Problem] = []

    def where(self, path: _KeyPath) -> tuple[str, int]:
        """The file and line of ``path``; a missing key reports its parent's."""
        for end in range(len(path), 0, -1):
            if path[:end] in self.lines:
                return self.files.get(path[:end], self.file), self.lines[path[:end]]
        return self.file, 0

    def line_of(self, path: _KeyPath) -> int:
        return self.where(path)[1]

    def problem(self, path: _KeyPath, message: str) -> None:
        self.problems.append(Problem(*self.where(path), _dotted(path), message))

    def notice(self, path: _KeyPath, message: str) -> None:
        self.notices.append(Problem(*self.where(path), _dotted(path), message))

    def position(self, problem: Problem) -> tuple[int, int]:
        """Where ``problem`` sorts: files in the order they were merged, then by line."""
        if problem.file == self.file:
            return 0, problem.line
        files = list(dict.fromkeys(self.files.values()))
        return (files.index(problem.file) + 1 if problem.file in files else len(files) + 1), problem.line

    def error(self) -> ConfigError:
        return ConfigError(sorted(dict.fromkeys(self.problems), key=lambda p: (*self.position(p), p.key_path)))


def _dotted(path: _KeyPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) and not isinstance(part, bool) else (
            f".{part}" if out else str(part))
    return out or "(top)"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _suggest(key: str, candidates: Iterable[str]) -> str:
    by_lower = {c.lower(): c for c in candidates}
    close = difflib.get_close_matches(key.lower(), list(by_lower), n=1, cutoff=0.6)
    return f"unknown key '{key}'" + (f"; did you mean '{by_lower[close[0]]}'?" if close else "")
