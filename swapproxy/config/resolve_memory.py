"""Resolution of ``memory`` (budgets per device), each model's declared ``memory`` footprint, and the
disk budget of ``slotCache`` (sizes all).

Devices are ``gpu0``, ``gpu1``, ... and ``host`` (system RAM). A model's
footprint written as one size is on its *main* device — decided at run time
(the first GPU, unless the machine has none or the command keeps the model
off the GPU) — and stored under the key :data:`MAIN_DEVICE`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from ..sizes import parse_size
from .model import MemoryConfig, _FrozenDict
from .problems import _KeyPath, _Report
from .schema import RawConfig, RawModel, Size

__all__ = ["_resolve_memory", "_resolve_footprint", "_resolve_slot_cache", "MAIN_DEVICE", "DEVICE_NAME"]

#: The key of a footprint written as one size: the model's main device, known at run time.
MAIN_DEVICE = "main"
DEVICE_NAME = re.compile(r"^(gpu\d+|host)$")


def _size(report: _Report, value: Size, path: _KeyPath) -> int | None:
    try:
        return parse_size(value)
    except ValueError as exc:
        report.problem(path, str(exc))
        return None


def _per_device(report: _Report, table: Mapping[str, Size], base: _KeyPath) -> dict[str, int]:
    out: dict[str, int] = {}
    for device, value in table.items():
        path = (*base, device)
        if not DEVICE_NAME.match(device):
            report.problem(path, f"'{device}' is not a device: use gpu0, gpu1, ... or host")
        elif (size := _size(report, value, path)) is not None:
            out[device] = size
    return out


def _resolve_memory(report: _Report, raw: RawConfig) -> MemoryConfig:
    memory = raw.memory
    budgets = _per_device(report, memory.devices, ("memory", "devices"))
    reserve = _size(report, memory.reserve, ("memory", "reserve")) or 0
    return MemoryConfig(_FrozenDict(budgets), reserve, memory.shareDefaultGroup, memory.learn)


def _resolve_footprint(report: _Report, value: Size | Mapping[str, Size] | None,
                       base: _KeyPath) -> Mapping[str, int] | None:
    """A model's declared footprint per device (None when it declares none)."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        return _FrozenDict(_per_device(report, value, base))
    size = _size(report, value, base)
    return None if size is None else _FrozenDict({MAIN_DEVICE: size})


def _resolve_slot_cache(report: _Report, raw: RawConfig, models: Mapping[str, RawModel]) -> int:
    """The disk budget of saved slots; a model that asks for ``slotCache`` needs a ``stateDir`` to keep them."""
    if raw.stateDir == "":
        for mid, model in models.items():
            if model.slotCache:
                report.problem(("models", mid, "slotCache"), "slotCache keeps its files in stateDir, which is "
                                                             "turned off (stateDir: '')")
    return _size(report, raw.slotCache.budget, ("slotCache", "budget")) or 0
