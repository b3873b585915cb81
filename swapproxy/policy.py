"""The swap policy: which models must stop so that another may run. A pure function.

Given the config and the models that hold resources now, :func:`evictions`
answers which of them must stop before ``target`` may run. No I/O, no
logging, no clocks: the scheduler (:mod:`swapproxy.scheduler`) asks, then does
the waiting and stopping; tests call it with plain values.

The rules are llama-swap's groups (see DESIGN.md):

* every model belongs to one group; models that no configured group lists
  share the implicit ``(default)`` group, which swaps and is exclusive, so
  without groups one model runs at a time;
* starting a member of group G stops the other active members of G when
  ``G.swap``, and the active members of every other group that is not
  ``persistent`` when ``G.exclusive``.
"""

from __future__ import annotations

from collections.abc import Iterable

from .config import Config

__all__ = ["evictions"]


def evictions(config: Config, target: str, active: Iterable[str]) -> list[str]:
    """The models among ``active`` (in its order) that must stop before ``target`` may run.

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
