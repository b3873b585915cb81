"""Resolution of the swap groups: ``groups`` and ``routing.router.settings.groups``.

Both spellings are read (the older top-level one first); a model belongs to at most one
group, and the models that none lists form the implicit ``(default)`` group.
"""

from __future__ import annotations

from .model import DEFAULT_GROUP, GroupConfig
from .problems import _KeyPath, _Report
from .schema import RawConfig

__all__ = ["_resolve_groups"]


def _resolve_groups(report: _Report, raw: RawConfig,
                    ids: list[str]) -> tuple[list[GroupConfig], list[tuple[_KeyPath, str]]]:
    """Both spellings of groups, then ``(default)`` for the models none of them lists; also
    the members that name no model id, for the caller to report once aliases are known."""
    newer = raw.routing.router.settings.groups
    sources = ((("groups",), raw.groups), (("routing", "router", "settings", "groups"), newer))
    out: list[GroupConfig] = []
    unknown: list[tuple[_KeyPath, str]] = []
    member_of: dict[str, str] = {}
    for base, table in sources:
        for name, group in table.items():
            if name == DEFAULT_GROUP or any(g.name == name for g in out):
                report.problem((*base, name), f"group name '{name}' is reserved or already used")
                continue
            members: list[str] = []
            for i, member in enumerate(group.members):
                path = (*base, name, "members", i)
                if member not in ids:
                    unknown.append((path, member))
                elif member in members:
                    report.problem(path, f"'{member}' is listed twice in this group")
                elif member in member_of:
                    report.problem(path, f"'{member}' is already in group '{member_of[member]}'; "
                                         f"a model belongs to one group")
                else:
                    members.append(member)
                    member_of[member] = name
            out.append(GroupConfig(name, group.swap, group.exclusive, group.persistent,
                                   tuple(members)))
    rest = tuple(mid for mid in ids if mid not in member_of)
    if rest:
        # memory.shareDefaultGroup: models in no group may run together; memory alone keeps them apart
        share = raw.memory.shareDefaultGroup
        out.append(GroupConfig(DEFAULT_GROUP, swap=not share, exclusive=not share, members=rest))
    return out, unknown
