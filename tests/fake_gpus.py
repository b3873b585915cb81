"""FakeGpus: a :class:`~swapproxy.nvml.GpuProvider` for machines without a GPU (the NVML seam).

It reports the devices it was given (totals, and what a test sets as used,
utilisation, temperature, power) and, per process, the GPU memory a test
assigns to a pid — or ``every_process`` to each pid it is asked about, for
tests that do not know the pids of the servers swapproxy will spawn.
"""

from __future__ import annotations

from collections.abc import Iterable

from swapproxy.nvml import GpuDevice

__all__ = ["FakeGpus"]


class FakeGpus:
    def __init__(self, *totals: int, every_process: dict[str, int] | None = None) -> None:
        self.totals = totals
        self.used: dict[int, dict[str, int]] = {}  # pid -> gpuN -> bytes
        self.every_process = every_process
        self.device_used = [0] * len(totals)
        self.readings: dict[str, float] = {}  # GpuDevice fields: utilization, temperature, power, ...

    def devices(self) -> list[GpuDevice]:
        return [GpuDevice(i, "Fake GPU", total, self.device_used[i], **self.readings)  # type: ignore[arg-type]
                for i, total in enumerate(self.totals)]

    def process_memory(self, pids: Iterable[int]) -> dict[int, dict[str, int]]:
        out = {pid: self.used[pid] for pid in pids if pid in self.used}
        if self.every_process is not None:
            out.update({pid: dict(self.every_process) for pid in pids if pid not in out})
        return out
