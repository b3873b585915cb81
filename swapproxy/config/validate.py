"""Schema checks as problems: pydantic's validation errors turned into ``file:line`` problems.

:func:`_checked` validates data against one of the raw models of :mod:`.schema`, reports
each error (an unknown key with a "did you mean" from the keys the schema allows there) and
retries without the offending keys, so that one mistake hides nothing else. The loader runs it
on the whole file (stage 4); resolution runs :func:`_translate` on values only known after
macro expansion (``capabilities``).
"""

from __future__ import annotations

import types
from collections.abc import Sequence
from typing import Any, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from .problems import _KeyPath, _Report, _short, _suggest

__all__ = ["_checked", "_translate"]

_M = TypeVar("_M", bound=BaseModel)
_TYPE_MESSAGES = {"model_type": "expected a mapping", "dict_type": "expected a mapping",
                  "list_type": "expected a list", "string_type": "expected a string"}


def _checked(report: _Report, schema: type[_M], data: Any, prefix: _KeyPath) -> _M | None:
    """Validate; on errors report them, then retry without the offending keys so that
    the rest is still resolved and checked (defaults stand in for what was dropped)."""
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        _translate(report, exc, prefix, schema)
        bad = {err["loc"][0] for err in exc.errors() if err["loc"]}
    try:
        return schema.model_validate({k: v for k, v in data.items() if k not in bad})
    except (ValidationError, AttributeError):
        return None


def _translate(report: _Report, exc: ValidationError, prefix: _KeyPath, root: type[BaseModel]) -> None:
    for err in exc.errors(include_url=False):
        loc = tuple(p for p in err["loc"] if p != "[key]")
        if err["type"] == "extra_forbidden":
            report.problem((*prefix, *loc), _suggest(str(loc[-1]), _keys_at(root, loc[:-1])))
        elif err["type"] == "missing":
            report.problem((*prefix, *loc), "required key is missing")
        else:
            message = _TYPE_MESSAGES.get(err["type"], err["msg"])
            report.problem((*prefix, *loc), f"{message} (got {_short(err.get('input'))})")


def _unwrap_optional(tp: Any) -> Any:
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        return args[0] if args else tp
    return tp


def _keys_at(root: type[BaseModel], loc: Sequence[Any]) -> list[str]:
    """The keys the schema allows at ``loc`` (for "did you mean")."""
    tp: Any = root
    for part in loc:
        tp = _unwrap_optional(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            hits = [f for n, f in tp.model_fields.items() if (f.alias or n) == part]
            if not hits:
                return []
            tp = hits[0].annotation
        elif get_origin(tp) in (dict, list):
            tp = get_args(tp)[-1]
        else:
            return []
    tp = _unwrap_optional(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [f.alias or n for n, f in tp.model_fields.items()]
    return []
