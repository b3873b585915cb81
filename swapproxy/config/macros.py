"""Macros: ``${NAME}`` definitions (global, then per model) and their expansion inside one model.

:func:`_macro_defs` checks a ``macros:`` table; :func:`_expand_macros` expands each macro
with those defined before it. :class:`_Scope` then substitutes in one model's values: user
macros first, then the reserved ``${MODEL_ID}``, ``${PORT}`` and (in ``cmdStop`` only) ``${PID}``.
A macro value is spelled the way llama-swap (Go's ``%v``) spells it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from .model import _FrozenDict
from .problems import _KeyPath, _Report

__all__ = ["_MacroDef", "_Scope", "_expand_macros", "_macro_defs"]

_MacroDef = tuple[Any, _KeyPath]  # (value, where it is defined)
_RESERVED = frozenset({"PORT", "PID", "MODEL_ID"})
_REF = re.compile(r"\$\{([A-Za-z0-9_-]+)\}")


def _fmt(value: Any) -> str:
    """A macro value as text, spelled the way llama-swap (Go's %v) spells it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _macro_defs(report: _Report, macros: Mapping[str, Any], base: _KeyPath) -> dict[str, _MacroDef]:
    out: dict[str, _MacroDef] = {}
    for name, value in macros.items():
        path = (*base, name)
        if not _REF.fullmatch(f"${{{name}}}"):
            report.problem(path, "a macro name must match ^[A-Za-z0-9_-]+$")
        elif len(name) >= 64:
            report.problem(path, "a macro name must be shorter than 64 characters")
        elif name in _RESERVED:
            report.problem(path, f"'{name}' is reserved and cannot be defined as a macro")
        elif not isinstance(value, (str, int, float)):
            report.problem(path, f"a macro value must be a string, number or boolean "
                                 f"(got {type(value).__name__})")
        else:
            out[name] = (value, path)
    return out


def _expand_macros(report: _Report, defs: Mapping[str, _MacroDef], bad: set[str]) -> dict[str, Any]:
    """Expand each macro with those defined before it; reserved names stay for later.
    Names reported here are added to ``bad`` so their uses are not reported again."""
    names, done = list(defs), dict[str, Any]()
    for index, (name, (value, path)) in enumerate(defs.items()):
        if isinstance(value, str):
            later = names[index + 1:]

            def earlier(m: re.Match[str], name: str = name, path: _KeyPath = path,
                        later: list[str] = later) -> str:
                if m[1] in done:
                    return _fmt(done[m[1]])
                if m[1] not in _RESERVED:
                    bad.add(m[1])
                if m[1] == name:
                    report.problem(path, f"macro '{name}' refers to itself")
                elif m[1] in later:
                    report.problem(path, f"'{m[0]}' is defined after '{name}'; a macro can "
                                         f"only use macros defined before it")
                elif m[1] not in _RESERVED:
                    report.problem(path, f"unknown macro '{m[0]}'")
                return m[0]

            value = _REF.sub(earlier, value)
        done[name] = value
    return done


class _Scope:
    """Macro substitution inside one model: user macros first, then the reserved ones."""

    def __init__(self, report: _Report, model_id: str) -> None:
        self.report = report
        self.model_id = model_id
        self.macros: Mapping[str, Any] = {}
        self.bad_refs: set[str] = set()  # reported where a macro definition uses them
        self.port: int | None = None

    def user(self, text: str) -> str:
        """Expand user macros only; reserved and unknown references stay as written."""
        return _REF.sub(lambda m: _fmt(self.macros[m[1]]) if m[1] in self.macros else m[0], text)

    def finish(self, text: str, path: _KeyPath, allow_pid: bool = False) -> str:
        """Expand ${MODEL_ID} and ${PORT}; report ${PID} outside cmdStop and unknown names."""

        def reserved(match: re.Match[str]) -> str:
            name = match[1]
            if name == "MODEL_ID":
                return self.model_id
            if name == "PORT" and self.port is not None:
                return str(self.port)
            if name == "PORT":
                self.report.problem(path, "${PORT} is only available when cmd uses ${PORT}")
            elif name == "PID" and not allow_pid:
                self.report.problem(path, "${PID} is only available in cmdStop")
            elif name != "PID" and name not in self.bad_refs:
                self.report.problem(path, f"unknown macro '${{{name}}}'")
            return match[0]

        return _REF.sub(reserved, text)

    def text(self, text: str, path: _KeyPath, allow_pid: bool = False) -> str:
        return self.finish(self.user(text), path, allow_pid)

    def value(self, value: Any, path: _KeyPath) -> Any:
        """Substitute inside nested data; a string that is exactly one macro keeps its type."""
        if isinstance(value, str):
            exact = _REF.fullmatch(value)
            if exact and not isinstance(self.macros.get(exact[1], ""), str):
                return self.macros[exact[1]]
            if exact and exact[1] == "PORT" and self.port is not None:
                return self.port
            return self.text(value, path)
        if isinstance(value, dict):
            return _FrozenDict({k: self.value(v, (*path, k)) for k, v in value.items()})
        if isinstance(value, (list, tuple)):
            return tuple(self.value(v, (*path, i)) for i, v in enumerate(value))
        return value
