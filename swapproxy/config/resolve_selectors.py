"""Resolution of ``selectors``: virtual model ids that pick one of their targets per request.

Each target must name a model (id or alias, never another selector) or a peer's model
(``peer/model``, or a bare id one peer alone lists: its ``target_ids`` entry is then
``peer/model``); a selector's own id must not be a model's id or alias. A ``spillover``
selector's targets must be distinct, and its local ones able to run at the same time:
:func:`_resolve_selectors` asks the router's check for that (``together``; the group router's
is :func:`_in_one_shared_group`), so another router brings its own rule as one more function,
not a change here. Unlike llama-swap, a ``warm`` selector may name peer models too: it prefers
the target that has its model loaded, wherever that is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .model import GroupConfig, SelectorConfig, _FrozenDict
from .problems import _Report
from .schema import RawConfig

__all__ = ["Together", "_in_one_shared_group", "_resolve_selectors"]

#: Why these distinct model ids cannot all run at once, or None when they can.
Together = Callable[[Sequence[str]], str | None]


def _in_one_shared_group(groups: Sequence[GroupConfig], targets: Sequence[str]) -> str | None:
    """The group router's rule: the models run together when one group with ``swap: false``
    holds them all (llama-swap's rule for spillover targets)."""
    group_of = {member: g for g in groups for member in g.members}
    first = group_of.get(targets[0])
    for target in targets[1:]:
        if group_of.get(target) is not first:
            return (f"'{targets[0]}' and '{target}' are in different groups; spillover targets must "
                    f"share one group with swap: false")
    if first is not None and first.swap:
        return (f"group '{first.name}' has swap: true, so its members replace each other; spillover "
                f"targets must share one group with swap: false")
    return None


def _no_peer(name: str) -> str | None:
    return None


def _resolve_selectors(report: _Report, raw: RawConfig, find: Callable[[str], str | None],
                       together: Together, peer: Callable[[str], str | None] = _no_peer) -> dict[str, SelectorConfig]:
    """The valid selectors; each mistake is reported at its key. ``find`` maps a model id or
    alias to its id; ``peer`` maps a peer model's name to its ``peer/model`` (None for any other)."""
    out: dict[str, SelectorConfig] = {}
    for sid, sel in raw.selectors.items():
        base = ("selectors", sid)
        owner = find(sid)
        if not sid.strip():
            report.problem(base, "a selector id must not be empty")
            continue
        if owner is not None:
            what = "a model id" if owner == sid else f"an alias of model '{owner}'"
            report.problem(base, f"selector id '{sid}' is also {what}")
            continue
        if not sel.targets:
            report.problem((*base, "targets"), "a selector needs at least one target")
            continue
        ids: list[str] = []
        local: list[str] = []
        for i, target in enumerate(sel.targets):
            path = (*base, "targets", i)
            model_id = find(target)
            fqn = peer(target) if model_id is None else None
            if model_id is not None:
                ids.append(model_id)
                local.append(model_id)
            elif target in raw.selectors:
                report.problem(path, f"'{target}' is a selector; a selector's targets must be models")
            elif fqn is not None:
                ids.append(fqn)
            else:
                report.problem(path, f"'{target}' is not a model id{', alias or peer model' if raw.peers else ' or alias'}")
        if len(ids) < len(sel.targets):
            continue
        if sel.strategy == "spillover":
            repeated = sorted({m for m in ids if ids.count(m) > 1})
            if repeated:
                report.problem((*base, "targets"), f"targets name model '{repeated[0]}' more than once")
                continue
            why = together(local) if len(local) > 1 else None
            if why is not None:
                report.problem((*base, "targets"), why)
                continue
        out[sid] = SelectorConfig(
            id=sid, strategy=sel.strategy, targets=tuple(sel.targets), target_ids=tuple(ids),
            spillover=sel.settings.spillover, name=sel.name or None, description=sel.description or None,
            unlisted=sel.unlisted, metadata=_FrozenDict(sel.metadata))
    return out
