"""What a reload changes: the diff between the models that run now and a new config. Pure.

A model whose *definition* — command after macros, env, proxy, checkEndpoint —
is unchanged keeps its process (same PID) and takes its other new settings
(ttl, aliases, filters, group, ...) at once. A changed one gets a new process.
:meth:`swapproxy.scheduler.Scheduler.apply_config` applies the diff;
:mod:`swapproxy.reload` decides when to reload.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .config import Config, ModelConfig

__all__ = ["ConfigDiff", "definition", "diff_models"]


def definition(spec: ModelConfig) -> tuple[object, ...]:
    """What makes a running process stale when it changes."""
    # slotCache adds --slot-save-path to the command: turning it on or off restarts the model
    return (spec.cmd, tuple(sorted(spec.env.items())), spec.proxy, spec.check_endpoint, spec.slot_cache)


@dataclass(frozen=True)
class ConfigDiff:
    """Model ids by what a reload does to them (each in its config order)."""

    kept: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()

    def report(self) -> dict[str, list[str]]:
        """The shape ``/info`` and the UI show under ``reload.report``."""
        return {"kept": list(self.kept), "changed": list(self.changed), "added": list(self.added),
                "removed": list(self.removed)}


def diff_models(current: Mapping[str, ModelConfig], new: Config) -> ConfigDiff:
    """Compare ``current`` (id → the spec its process runs) with ``new``."""
    kept: list[str] = []
    changed: list[str] = []
    added: list[str] = []
    for model_id, spec in new.models.items():
        running = current.get(model_id)
        if running is None:
            added.append(model_id)
        elif definition(running) == definition(spec):
            kept.append(model_id)
        else:
            changed.append(model_id)
    removed = [model_id for model_id in current if model_id not in new.models]
    return ConfigDiff(tuple(kept), tuple(changed), tuple(added), tuple(removed))
