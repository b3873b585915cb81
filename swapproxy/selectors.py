"""Selectors: which of a selector's targets serves a request. Pure choice, plus its small state.

:func:`choose` is a pure function of the selector and each target's
:class:`TargetStatus` (its process state and its load), so every rule is
unit-testable without a scheduler:

* ``pin``: always the first target;
* ``warm``: the first target that is ready, else the first that is starting,
  else the first (which then starts): what an Open WebUI *task model* should
  point at, so that title and tag requests go to the chat model already loaded
  instead of swapping one in;
* ``spillover``: targets that are ready, starting or loaded with requests are
  *active*; fill the least-loaded active one while it has fewer than
  ``spillover`` requests (ties rotate), else start the first *cold* one (stopped
  or failed), else overload the least-loaded active one. Targets that are
  stopping are skipped; none left at all is a 503.

A target may be a peer's model: it is *ready* when the peer has it loaded, and
*unavailable* while the peer is down (or after it failed to connect for this
request): ``warm`` and ``spillover`` pass over unavailable targets, so a
request fails over to the next one; ``pin`` keeps its first.

:class:`SelectorState` holds what the choice needs beyond the scheduler's view:
the rotation counter for ties and the requests each selector has sent to each
target and that are not finished yet (counted from the choice on, so two
requests arriving together never both see an idle target).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from .config import SelectorConfig
from .errors import NoTargetAvailable
from .states import ProcessState

__all__ = ["TargetStatus", "choose", "SelectorState", "Reservation"]

_ACTIVE = (ProcessState.READY, ProcessState.STARTING)
_GONE = (ProcessState.STOPPING, ProcessState.SHUTDOWN)


@dataclass(frozen=True)
class TargetStatus:
    """One target as a selector sees it: its process state and the requests on it."""

    state: ProcessState
    load: int = 0  # requests in flight on it or waiting for it
    available: bool = True  # False: a peer that is down, or a target this request already failed on


def choose(selector: SelectorConfig, status: Callable[[str], TargetStatus], turn: int = 0) -> int:
    """The index (into ``selector.targets``) of the target to use; ``turn`` breaks spillover ties."""
    if selector.strategy == "pin":
        return 0
    states = [status(model_id) for model_id in selector.target_ids]
    if selector.strategy == "warm":
        for wanted in _ACTIVE:
            for i, target in enumerate(states):
                if target.state is wanted and target.available:
                    return i
        return next((i for i, target in enumerate(states) if target.available), 0)
    usable = [t.available and t.state not in _GONE for t in states]
    active = [i for i, t in enumerate(states) if usable[i] and (t.state in _ACTIVE or t.load > 0)]
    cold = [i for i, t in enumerate(states) if usable[i] and i not in active]
    if not active and not cold:
        raise NoTargetAvailable(f"selector '{selector.id}' has no target that can take a request: all are stopping "
                                f"or unreachable")
    if not active:
        return cold[0]
    least = min(states[i].load for i in active)
    tied = [i for i in active if states[i].load == least]
    if least < selector.spillover or not cold:
        return tied[turn % len(tied)]
    return cold[0]


class Reservation:
    """A request a selector sent to one target; :meth:`release` it once, when the response ends."""

    __slots__ = ("_counts", "_key", "_released")

    def __init__(self, counts: Counter[tuple[str, str]], key: tuple[str, str]) -> None:
        self._counts = counts
        self._key = key
        self._released = False
        counts[key] += 1

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._counts[self._key] -= 1
            if self._counts[self._key] <= 0:
                del self._counts[self._key]


@dataclass
class SelectorState:
    """The rotation counters and open reservations of every selector (one per running app)."""

    _turns: Counter[str] = field(default_factory=Counter)
    _reserved: Counter[tuple[str, str]] = field(default_factory=Counter)

    def reserved(self, selector_id: str, model_id: str) -> int:
        """Requests ``selector_id`` sent to ``model_id`` that have not finished yet."""
        return self._reserved[(selector_id, model_id)]

    def pick(self, selector: SelectorConfig, status: Callable[[str], TargetStatus],
             avoid: Collection[str] = ()) -> tuple[int, Reservation]:
        """Choose a target (:func:`choose`, a target's load being at least what this selector
        sent it; those in ``avoid`` unavailable) and reserve it until the returned reservation
        is released."""

        def seen(model_id: str) -> TargetStatus:
            target = status(model_id)
            mine = self.reserved(selector.id, model_id)
            return TargetStatus(target.state, max(target.load, mine), target.available and model_id not in avoid)

        turn = self._turns[selector.id]
        index = choose(selector, seen, turn)
        if selector.strategy == "spillover":
            self._turns[selector.id] = turn + 1
        return index, Reservation(self._reserved, (selector.id, selector.target_ids[index]))
