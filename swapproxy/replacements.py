"""Replacing processes: a reload's diff applied to the scheduler's slots.

:class:`Replacements` is the part of the :class:`~swapproxy.scheduler.Scheduler`
that applies a new config (the diff from :mod:`swapproxy.config_diff`): an
unchanged model keeps its process (same PID) and takes the new settings; a
changed one gets a new process, swapped in at once when it is not running, or
when next requested after its in-flight requests finish; a removed one is
retired — stopped once its requests finish. It is a base class of the
scheduler, not used alone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from .background import Background
from .config import Config
from .config_diff import diff_models
from .errors import ModelNotFound
from .failures import FailureHandler
from .processes import ProcessHub
from .slots import ModelSlot, Swap

__all__ = ["Replacements"]

logger = logging.getLogger("swapproxy.scheduler")


class Replacements:
    """Applying a reload (see :class:`~swapproxy.scheduler.Scheduler`)."""

    config: Config
    hub: ProcessHub
    background: Background
    failures: FailureHandler
    slots: dict[str, ModelSlot]
    _retired: set[ModelSlot]
    _swaps: dict[str, Swap]
    _fail: Callable[[str, BaseException], None]

    def _pump(self) -> None:  # the scheduler's: decide what may start now
        raise NotImplementedError

    # -- reload -----------------------------------------------------------------------------------
    def _swap_in_pending(self, slot: ModelSlot) -> None:
        assert slot.pending is not None
        old, slot.process, slot.pending = slot.process, slot.pending, None
        self.failures.forget(old)
        self.background.spawn(old.shutdown())  # already stopped: this only marks it SHUTDOWN

    async def apply_config(self, new: Config) -> dict[str, list[str]]:
        """Move to ``new`` without restarting what did not change; returns what happened, by model id.

        An unchanged model keeps its process (same PID) and takes the new settings at
        once. A changed model that is running is replaced when next requested, after its
        in-flight requests finish; one that is not running is replaced now. A removed
        model is stopped once its in-flight requests finish; requests waiting for it get 404.
        """
        diff = diff_models({mid: slot.process.spec for mid, slot in self.slots.items()}, new)
        self.config = new
        old_slots, self.slots = self.slots, {}
        for model_id, spec in new.models.items():
            slot = old_slots.pop(model_id, None)
            if slot is None:
                slot = ModelSlot(self.hub.new(spec))
            elif model_id in diff.kept:
                slot.process.spec = spec
                if slot.pending is not None:  # changed, then changed back
                    self.background.spawn(slot.pending.shutdown())
                    slot.pending = None
            else:
                if slot.pending is not None:
                    self.background.spawn(slot.pending.shutdown())
                slot.pending = self.hub.new(spec)
                if not slot.active and model_id not in self._swaps:  # nothing to drain: replace it now
                    self._swap_in_pending(slot)
            self.slots[model_id] = slot
        for model_id, slot in old_slots.items():
            self._retired.add(slot)
            self.failures.forget(slot.process)
            swap = self._swaps.get(model_id)
            if swap is not None and swap.task is not None and not swap.stopping:
                swap.task.cancel()
            self._fail(model_id, ModelNotFound(model_id))
            self.background.spawn(self._retire(slot))
        report = diff.report()
        logger.info("config applied: %s", ", ".join(f"{k} {v}" for k, v in report.items() if v) or "no models")
        self._pump()
        return report

    async def _retire(self, slot: ModelSlot) -> None:
        if slot.ttl_handle is not None:
            slot.ttl_handle.cancel()
        await slot.idle.wait()  # in-flight requests finish first
        await slot.process.shutdown()
        self._retired.discard(slot)
        self._pump()
