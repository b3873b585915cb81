"""The swap policy: which models must stop so that another may run. Pure functions.

Given the config, the models that hold resources now and (when budgets are
known) their memory, :func:`plan` answers which of them must stop before
``target`` may run, and whether it may start while they are still stopping.
No I/O, no logging, no clocks: the scheduler (:mod:`swapproxy.scheduler`)
asks, then does the waiting and stopping; tests call it with plain values.

The rules decide what may run together — llama-swap's groups or its matrix:

* groups (:func:`evictions`): every model belongs to one group; models no
  configured group lists share the implicit ``(default)`` group, which swaps
  and is exclusive, so without groups one model runs at a time. Starting a
  member of group G stops the other active members of G when ``G.swap``, and
  the active members of every other group that is not ``persistent`` when
  ``G.exclusive``;
* the matrix (:meth:`swapproxy.matrix.Matrix.solve`): the allowed combination
  that is cheapest to reach by ``evict_costs``.

Memory only adds stops on top, never lets models co-run that the rules keep
apart: when the target does not fit beside what the rules leave running, the
cheapest of those go too — idle before busy, then the lowest evict cost, then
the quickest to stop (by whole seconds: a large slot cache to save makes a stop
longer), then the least recently used; persistent models last. A footprint that is not
known counts as the whole of every device that has a budget.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from .config import Config

__all__ = ["evictions", "plan", "Occupant", "Resources", "Plan", "Footprint"]

#: Bytes per device (``gpu0``..., ``host``); None when not known.
Footprint = Mapping[str, int] | None


@dataclass(frozen=True)
class Occupant:
    """A model that holds resources now, as the policy sees it."""

    id: str
    busy: bool = False  # requests in flight on it
    last_used: float = 0.0  # when its last request ended (any clock: only the order counts)
    stopping: bool = False  # already on its way out
    stop_cost: float = 0.0  # seconds a graceful stop takes (saving its slots, its exit), as learned


@dataclass(frozen=True)
class Resources:
    """Device budgets (bytes) and each model's footprint; no budgets means memory is not considered."""

    budgets: Mapping[str, int] = field(default_factory=dict)
    footprints: Mapping[str, Footprint] = field(default_factory=dict)

    def need(self, model: str) -> dict[str, int]:
        """What ``model`` takes on each budgeted device (an unknown footprint: all of each)."""
        footprint = self.footprints.get(model)
        if footprint is None:
            return dict(self.budgets)
        return {device: size for device, size in footprint.items() if device in self.budgets}


@dataclass(frozen=True)
class Plan:
    """What a swap to a model must do first."""

    evict: tuple[str, ...]  # stop these (the rules' choice, then memory's)
    overlap: bool = False  # memory allows starting the target while they are still stopping
    over: Mapping[str, int] = field(default_factory=dict)  # devices it overfills even alone: bytes over


def evictions(config: Config, target: str, active: Iterable[str]) -> list[str]:
    """The group rule: the models among ``active`` (in its order) that must stop before ``target`` runs.

    ``active`` holds the ids of the models that occupy resources now: running,
    starting, still stopping, or reserved by a request about to start them.
    ``target`` itself is never in the answer. Unknown ids raise KeyError.
    """
    group = config.group_of(target)
    out: list[str] = []
    for other in active:
        if other == target:
            continue
        other_group = config.group_of(other)
        if other_group.name == group.name:
            if group.swap:
                out.append(other)
        elif group.exclusive and not other_group.persistent:
            out.append(other)
    return out


def _rule_evictions(config: Config, target: str, active: Sequence[str]) -> list[str]:
    if config.router == "matrix" and config.matrix is not None:
        return list(config.matrix.solve(target, active).evict)
    return evictions(config, target, active)


def _cost(config: Config, model: str) -> int:
    return config.matrix.costs.get(model, 1) if config.matrix is not None else 1


def plan(config: Config, target: str, occupants: Sequence[Occupant], resources: Resources | None = None) -> Plan:
    """What must stop before ``target`` runs, given who holds resources now and (maybe) memory."""
    active = [o.id for o in occupants if o.id != target]
    evict = _rule_evictions(config, target, active)
    if resources is None or not resources.budgets:
        return Plan(tuple(evict))
    need = resources.need(target)
    staying = [o for o in occupants if o.id != target and o.id not in evict]

    def use(models: Iterable[Occupant], device: str) -> int:
        return sum(resources.need(o.id).get(device, 0) for o in models)

    def overfull(models: Sequence[Occupant]) -> bool:
        return any(use(models, d) + size > resources.budgets[d] for d, size in need.items())

    # the cheapest to stop first: idle before busy, lower evict cost, quicker to stop (in whole
    # seconds: only a stop seconds longer, such as a large slot cache to save, outweighs recency),
    # least recently used; persistent last
    candidates = sorted(staying, key=lambda o: (config.group_of(o.id).persistent, o.busy,
                                                _cost(config, o.id), int(o.stop_cost), o.last_used))
    while candidates and overfull(staying):
        victim = candidates.pop(0)
        staying.remove(victim)
        evict.append(victim.id)
    over = {d: size - resources.budgets[d] for d, size in need.items() if size > resources.budgets[d]}
    # Every model still counts until it has stopped: start at once only if it fits beside all of them.
    overlap = not overfull([o for o in occupants if o.id != target]) if evict else False
    return Plan(tuple(m for m in active if m in evict), overlap, over)
