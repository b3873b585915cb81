"""What the machine and the running models hold right now: GPU samples and each model's real memory.

A :class:`Telemetry` samples every few seconds, off the event loop: each GPU
(memory, utilisation, temperature, power: :mod:`swapproxy.nvml`) and what each
running model's process tree really holds — RSS on the host and, per GPU, the
memory NVML sees its processes use (:meth:`MemoryModel.measure`, which also
learns the peaks the scheduler plans with). A model that becomes ready is
sampled at once, not at the next tick. ``/metrics``, ``/running?details=1`` and
the UI read the last sample; none of them calls NVML on a request's path. On
a machine without a GPU (or without the ``[gpu]`` extra) the GPU parts are
simply empty.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from .config import ModelConfig
from .memory import MemoryModel
from .nvml import GpuDevice

__all__ = ["Telemetry", "SAMPLE_INTERVAL"]

logger = logging.getLogger(__name__)

#: Seconds between samples (a model that becomes ready is sampled at once).
SAMPLE_INTERVAL = 5.0

Running = Callable[[], list[tuple[ModelConfig, int]]]


class Telemetry:
    """The last GPU sample and the last memory each running model was seen holding."""

    def __init__(self, memory: MemoryModel) -> None:
        self.memory = memory
        self.gpus: list[GpuDevice] = memory.gpu_devices()
        self.usage: dict[str, dict[str, int]] = {}  # model -> device -> bytes (host: RSS of its tree)
        self._wake = asyncio.Event()

    def sample(self, running: list[tuple[ModelConfig, int]]) -> None:
        """One sample (blocking: NVML and /proc); :meth:`run` calls it in a thread."""
        self.gpus = self.memory.gpu_devices()
        self.usage = self.memory.measure(running) if running else {}

    def soon(self) -> None:
        """Take the next sample now (a model just became ready, or stopped)."""
        self._wake.set()

    async def run(self, running: Running, interval: float = SAMPLE_INTERVAL) -> None:
        """Sample every ``interval`` s, or at once after :meth:`soon`; until cancelled."""
        while True:
            try:
                await asyncio.to_thread(self.sample, running())
            except Exception:  # a driver hiccup must not end the sampling
                logger.exception("telemetry sample failed")
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), interval)
            except asyncio.TimeoutError:
                pass

    # -- what the API shows ----------------------------------------------------------------------
    def gpus_json(self) -> list[dict[str, Any]]:
        return [gpu.as_json() for gpu in self.gpus]

    def gpu_memory(self, model_id: str) -> dict[str, int]:
        """The GPU memory (per ``gpuN``) the model's processes held at the last sample."""
        return {d: size for d, size in self.usage.get(model_id, {}).items() if d != "host"}
