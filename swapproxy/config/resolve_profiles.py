"""Resolution of ``profiles``: named sets of pins that an operator switches on (one at a time).

A pin maps a requested name to a target: a model id, an alias, a selector or a peer's model
(``peer/model``, or a bare id one peer alone lists); an empty
target (``""`` or ``~``) disables the name. A pin's name may be new or may shadow an
existing id while its profile is active.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

from .model import ProfileConfig, _FrozenDict
from .problems import _Report
from .schema import RawConfig

__all__ = ["_resolve_profiles"]


def _resolve_profiles(report: _Report, raw: RawConfig, find: Callable[[str], str | None],
                      selectors: Collection[str], peer: Callable[[str], object] = lambda name: None
                      ) -> dict[str, ProfileConfig]:
    """The profiles; a pin whose target names nothing is reported at its key (``peer`` maps a peer
    model's name to something, None for any other name)."""
    out: dict[str, ProfileConfig] = {}
    for name, profile in raw.profiles.items():
        base = ("profiles", name)
        if not name.strip():
            report.problem(base, "a profile name must not be empty")
            continue
        if not profile.pins:
            report.problem((*base, "pins"), "a profile needs at least one pin")
        pins: dict[str, str] = {}
        for key, target in profile.pins.items():
            path = (*base, "pins", key)
            target = (target or "").strip()
            if not key.strip():
                report.problem(path, "a pin name must not be empty")
            elif target and find(target) is None and target not in selectors and peer(target) is None:
                kinds = "alias, selector or peer model" if raw.peers else "alias or selector"
                report.problem(path, f"'{target}' is not a model id, {kinds}")
            else:
                pins[key] = target
        out[name] = ProfileConfig(name, profile.description or None, _FrozenDict(pins))
    return out
