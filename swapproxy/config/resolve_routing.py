"""Resolution of ``routing``: the router (groups or llama-swap's matrix) and the scheduler's settings.

Spellings, as llama-swap reads them: ``routing.router.use: matrix`` with
``routing.router.settings.matrix``, or the older top-level ``matrix`` block.
Under ``routing.router.settings`` both ``groups`` and ``matrix`` may be given:
``use`` picks one and the other is ignored (with a notice). The older
top-level ``matrix`` cannot be mixed with top-level ``groups``, nor with a
``routing.router`` block; each mix is one problem naming both keys.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from ..matrix import Matrix, MatrixError, compile_matrix
from .model import Router, SchedulerConfig, _FrozenDict
from .problems import _KeyPath, _Report
from .schema import RawConfig, RawMatrix
from .validate import _checked

__all__ = ["_resolve_router", "_resolve_scheduler"]

_NEW = ("routing", "router")


def _resolve_router(report: _Report, raw: RawConfig, ids: Collection[str]) -> tuple[Router, Matrix | None]:
    """Which router runs, and the compiled matrix when it is the matrix."""
    router = raw.routing.router
    new_block = "use" in router.model_fields_set or router.settings.matrix is not None or bool(
        router.settings.groups)
    if raw.matrix is not None:
        if raw.groups:
            report.problem(("matrix",), "both 'groups' and 'matrix' are set; a config uses one of them")
            return "group", None
        if new_block:
            report.problem(("matrix",), "the top-level 'matrix' (an older spelling) cannot be mixed with "
                                        "'routing.router'; move it to routing.router.settings.matrix")
            return "group", None
        return "matrix", _compile(report, raw.matrix, ("matrix",), ids)
    if router.use == "group":
        if router.settings.matrix is not None:
            report.notice((*_NEW, "settings", "matrix"), "ignored: routing.router.use is 'group'")
        return "group", None
    if router.settings.matrix is None:
        report.problem((*_NEW, "use"), "routing.router.use is 'matrix' but routing.router.settings.matrix "
                                       "is not set")
        return "group", None
    if router.settings.groups:
        report.notice((*_NEW, "settings", "groups"), "ignored: routing.router.use is 'matrix'")
    if raw.groups:
        report.problem(("groups",), "top-level 'groups' cannot be mixed with routing.router.use: matrix; "
                                    "a config uses groups or a matrix")
        return "group", None
    return "matrix", _compile(report, router.settings.matrix, (*_NEW, "settings", "matrix"), ids)


def _compile(report: _Report, data: Mapping[str, Any], base: _KeyPath, ids: Collection[str]) -> Matrix | None:
    checked = _checked(report, RawMatrix, data, base)
    if checked is None:
        return None
    try:
        return compile_matrix(checked.sets, checked.vars, checked.evict_costs, ids)
    except MatrixError as exc:
        report.problem(base, f"matrix: {exc}")
        return None


def _resolve_scheduler(report: _Report, raw: RawConfig, resolve: Mapping[str, str]) -> SchedulerConfig:
    """The scheduler's settings; priority keys may be model ids or aliases (``resolve`` maps both to ids)."""
    scheduler = raw.routing.scheduler
    fifo = scheduler.settings.fifo
    priority: dict[str, int] = {}
    for name, value in fifo.priority.items():
        model_id = resolve.get(name)
        if model_id is None:
            report.problem(("routing", "scheduler", "settings", "fifo", "priority", name),
                           f"'{name}' is not a model id or alias")
        else:
            priority[model_id] = value
    return SchedulerConfig(scheduler.use, _FrozenDict(priority), fifo.maxWait)
