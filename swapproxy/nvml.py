"""GPU telemetry through NVML (``nvidia-ml-py``, the optional ``[gpu]`` extra), behind a small seam.

:class:`GpuProvider` is what the rest of swapproxy asks: the devices with
their memory, and how much GPU memory given processes hold. :func:`gpu_provider`
returns the NVML one when the library and a driver are there, else
:class:`NoGpu` — never an error: on a machine without a GPU the GPU parts of
swapproxy are simply absent. Tests hand in a fake provider instead.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["GpuDevice", "GpuProvider", "NoGpu", "NvmlProvider", "gpu_provider"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GpuDevice:
    """One GPU as NVML reports it (bytes, percent, degrees Celsius, watts; None when not reported)."""

    index: int
    name: str
    total: int
    used: int
    utilization: float | None = None  # percent of the last sample period a kernel ran
    temperature: float | None = None
    power: float | None = None
    memory_utilization: float | None = None  # percent of the period device memory was read or written
    power_limit: float | None = None
    uuid: str | None = None

    def as_json(self) -> dict[str, object]:
        """What ``/running?details=1`` and the UI show of it."""
        return {"device": self.device, "index": self.index, "name": self.name, "uuid": self.uuid,
                "memory_total": self.total, "memory_used": self.used, "utilization_pct": self.utilization,
                "memory_utilization_pct": self.memory_utilization, "temperature_c": self.temperature,
                "power_w": self.power, "power_limit_w": self.power_limit}

    @property
    def device(self) -> str:
        """Its name in swapproxy's config: ``gpu0``, ``gpu1``, ..."""
        return f"gpu{self.index}"


class GpuProvider(Protocol):
    """The seam: a real NVML reader or a fake one."""

    def devices(self) -> list[GpuDevice]: ...

    def process_memory(self, pids: Iterable[int]) -> dict[int, dict[str, int]]:
        """GPU memory each of ``pids`` holds, per device (``gpu0``...); pids holding none are left out."""
        ...


class NoGpu:
    """No GPU (or no NVML): nothing to report."""

    def devices(self) -> list[GpuDevice]:
        return []

    def process_memory(self, pids: Iterable[int]) -> dict[int, dict[str, int]]:
        return {}


class NvmlProvider:
    """NVML through ``pynvml`` (from ``nvidia-ml-py``); initialised once."""

    def __init__(self, nvml: Any) -> None:
        self._nvml = nvml
        nvml.nvmlInit()
        self._handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]

    def _optional(self, call: Any, *args: Any) -> Any:
        try:
            return call(*args)
        except self._nvml.NVMLError:
            return None

    def devices(self) -> list[GpuDevice]:
        nvml = self._nvml
        out = []
        for index, handle in enumerate(self._handles):
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            name = nvml.nvmlDeviceGetName(handle)
            util = self._optional(nvml.nvmlDeviceGetUtilizationRates, handle)
            temp = self._optional(nvml.nvmlDeviceGetTemperature, handle, nvml.NVML_TEMPERATURE_GPU)
            power = self._optional(nvml.nvmlDeviceGetPowerUsage, handle)  # milliwatts
            limit = self._optional(nvml.nvmlDeviceGetEnforcedPowerLimit, handle)  # milliwatts
            uuid = self._optional(nvml.nvmlDeviceGetUUID, handle)
            out.append(GpuDevice(index, _text(name), int(memory.total), int(memory.used),
                                 None if util is None else float(util.gpu),
                                 None if temp is None else float(temp), None if power is None else power / 1000,
                                 None if util is None else float(util.memory),
                                 None if limit is None else limit / 1000, None if uuid is None else _text(uuid)))
        return out

    def process_memory(self, pids: Iterable[int]) -> dict[int, dict[str, int]]:
        wanted = set(pids)
        out: dict[int, dict[str, int]] = {}
        for index, handle in enumerate(self._handles):
            procs = (self._optional(self._nvml.nvmlDeviceGetComputeRunningProcesses, handle) or [])
            procs += self._optional(self._nvml.nvmlDeviceGetGraphicsRunningProcesses, handle) or []
            for proc in procs:
                used = getattr(proc, "usedGpuMemory", None)
                if proc.pid in wanted and isinstance(used, int):
                    device = out.setdefault(proc.pid, {})
                    device[f"gpu{index}"] = device.get(f"gpu{index}", 0) + used
        return out


def _text(value: Any) -> str:
    """NVML strings: bytes from older bindings, str from newer ones."""
    return value.decode() if isinstance(value, bytes) else str(value)


def gpu_provider() -> GpuProvider:
    """NVML when ``pynvml`` imports and a driver answers; else :class:`NoGpu` (logged at debug)."""
    try:
        import pynvml  # the [gpu] extra
    except ImportError:
        logger.debug("no GPU telemetry: nvidia-ml-py is not installed")
        return NoGpu()
    try:
        return NvmlProvider(pynvml)
    except Exception as exc:  # pynvml raises NVMLError subclasses (no driver, no device, ...)
        logger.debug("no GPU telemetry: NVML did not start (%s)", exc)
        return NoGpu()
