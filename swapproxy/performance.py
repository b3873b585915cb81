"""System and GPU samples for ``GET /api/performance``, kept for an hour in memory.

Every ``performance.every`` seconds (at least 5) one sample of the machine is taken
in a thread: each core's CPU use since the last sample, memory and swap, load
averages, bytes through each network interface (psutil), and each GPU the NVML
provider reports (:mod:`swapproxy.nvml`; none without one). The shapes are llama-swap's
``SysStat`` and ``GpuStat``; what swapproxy's NVML seam does not read (fan speed, memory
temperature) is null. ``performance.disabled`` stops the sampling; a reload applies a
new setting at once.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
from collections import deque
from collections.abc import Callable
from typing import Any

import psutil

from .config.model import HistoryConfig
from .historydb import now_ms, rfc3339
from .nvml import GpuDevice

__all__ = ["PerformanceMonitor", "KEEP_SECONDS"]

logger = logging.getLogger(__name__)

#: Seconds of samples kept (llama-swap keeps an hour).
KEEP_SECONDS = 3600.0
#: Seconds from the start of the sampling to its first sample (then every performance.every).
FIRST_SAMPLE = 0.5
_MB = 1024 * 1024

Gpus = Callable[[], list[GpuDevice]]


def _system(ts: int) -> dict[str, Any]:
    memory, swap = psutil.virtual_memory(), psutil.swap_memory()
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    nics = psutil.net_io_counters(pernic=True)
    return {"timestamp": ts, "cpu_util_per_core": psutil.cpu_percent(percpu=True),
            "mem_total_mb": memory.total // _MB, "mem_used_mb": memory.used // _MB,
            "mem_free_mb": memory.available // _MB, "swap_total_mb": swap.total // _MB,
            "swap_used_mb": swap.used // _MB, "load_avg_1": load[0], "load_avg_5": load[1], "load_avg_15": load[2],
            "net_io": [{"name": name, "bytes_recv": io.bytes_recv, "bytes_sent": io.bytes_sent}
                       for name, io in sorted(nics.items())]}


def _gpu(ts: int, gpu: GpuDevice) -> dict[str, Any]:
    memory_util = getattr(gpu, "memory_utilization", None)
    return {"timestamp": ts, "id": gpu.index, "name": gpu.name, "uuid": getattr(gpu, "uuid", None) or "",
            "temp_c": gpu.temperature, "vram_temp_c": None, "gpu_util_pct": gpu.utilization,
            "mem_util_pct": memory_util, "mem_used_mb": gpu.used // _MB, "mem_total_mb": gpu.total // _MB,
            "fan_speed_pct": None, "power_draw_w": gpu.power}


class PerformanceMonitor:
    """The sampler and its ring of samples."""

    def __init__(self, settings: HistoryConfig) -> None:
        self.settings = settings
        self.system: deque[dict[str, Any]] = deque(maxlen=self._capacity(settings))
        self.gpus: deque[list[dict[str, Any]]] = deque(maxlen=self._capacity(settings))
        self._read_gpus: Gpus = list
        self._task: asyncio.Task[None] | None = None

    @staticmethod
    def _capacity(settings: HistoryConfig) -> int:
        return max(1, math.ceil(KEEP_SECONDS / settings.performance_every))

    @property
    def enabled(self) -> bool:
        return self.settings.performance

    def start(self, gpus: Gpus) -> None:
        """Sample from now on (unless disabled); ``gpus`` reads the GPUs (blocking: called in a thread)."""
        self._read_gpus = gpus
        if self.enabled and self._task is None:
            self._task = asyncio.ensure_future(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    def reconfigure(self, settings: HistoryConfig) -> None:
        """A reload: a new interval (a new ring) or disabled applies at once."""
        old, self.settings = self.settings, settings
        if (settings.performance, settings.performance_every) == (old.performance, old.performance_every):
            return
        self.stop()
        self.system = deque(self.system, maxlen=self._capacity(settings))
        self.gpus = deque(self.gpus, maxlen=self._capacity(settings))
        self.start(self._read_gpus)

    def sample(self) -> None:
        """Take one sample now (blocking)."""
        ts = now_ms()
        system = _system(ts)
        try:
            gpus = [_gpu(ts, gpu) for gpu in self._read_gpus()]
        except Exception as exc:  # a driver hiccup must not end the sampling
            logger.debug("performance: GPU sample failed: %s", exc)
            gpus = []
        self.system.append(system)
        self.gpus.append(gpus)

    async def _run(self) -> None:
        psutil.cpu_percent(percpu=True)  # the first reading only starts the measurement
        wait = FIRST_SAMPLE
        while True:
            await asyncio.sleep(wait)
            wait = self.settings.performance_every
            try:
                await asyncio.to_thread(self.sample)
            except Exception:
                logger.exception("performance sample failed")

    def samples(self, after: int | None = None) -> dict[str, Any]:
        """llama-swap's ``{enabled, sys_stats, gpu_stats}``, samples after ``after`` (Unix ms) only."""
        since = -1 if after is None else after
        sys_stats = [{**s, "timestamp": rfc3339(s["timestamp"])} for s in list(self.system) if s["timestamp"] > since]
        gpu_stats = [{**g, "timestamp": rfc3339(g["timestamp"])} for batch in list(self.gpus) for g in batch
                     if g["timestamp"] > since]
        return {"enabled": True, "sys_stats": sys_stats, "gpu_stats": gpu_stats}
