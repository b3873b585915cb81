"""The machine swapproxy runs on, found once at start: ``GET /api/hardware`` (llama-swap's snapshot shape).

Read from the standard library, psutil, ``/proc/cpuinfo`` and ``/etc/os-release``;
accelerators are the GPUs the NVML provider (:mod:`swapproxy.nvml`) reports — none
without one. What cannot be found is null, as in llama-swap's schema (version 1).
Blocking: the app takes it in a thread at start.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil

from . import __version__
from .historydb import now_ms, rfc3339
from .nvml import GpuDevice

__all__ = ["snapshot"]

_ARCHITECTURES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "arm64", "arm64": "arm64", "armv7l": "armv7",
                  "ppc64le": "ppc64le", "riscv64": "riscv64", "s390x": "s390x"}
_FAMILIES = {"Linux": "linux", "Darwin": "macos", "Windows": "windows", "FreeBSD": "freebsd"}


def _read(path: str) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


def _cpuinfo(text: str) -> tuple[str | None, str | None, int | None]:
    """(vendor, model, sockets) from /proc/cpuinfo's text; None each where it says nothing."""
    fields: dict[str, str] = {}
    sockets: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "physical id":
            sockets.add(value)
        elif key in ("vendor_id", "model name", "Hardware") and key not in fields:
            fields[key] = value
    vendor = fields.get("vendor_id")
    model = fields.get("model name") or fields.get("Hardware")
    return vendor, model, len(sockets) or None


def _environment(kernel: str, cpuinfo: str) -> dict[str, Any]:
    """native, container, virtual_machine or wsl, as far as files tell (no helper program is run)."""
    if "microsoft" in kernel.lower() or "wsl" in kernel.lower():
        return {"kind": "wsl", "name": "WSL", "version": None}
    if os.path.exists("/.dockerenv"):
        return {"kind": "container", "name": "Docker", "version": None}
    if os.path.exists("/run/.containerenv"):
        return {"kind": "container", "name": "Podman", "version": None}
    if not cpuinfo:
        return {"kind": "unknown", "name": None, "version": None}
    if " hypervisor" in cpuinfo:
        return {"kind": "virtual_machine", "name": None, "version": None}
    return {"kind": "native", "name": None, "version": None}


def _os(system: str) -> dict[str, Any]:
    name = version = None
    try:
        release = platform.freedesktop_os_release()
        name, version = release.get("NAME"), release.get("VERSION_ID") or release.get("VERSION")
    except OSError:
        if system == "Darwin":
            name, version = "macOS", platform.mac_ver()[0] or None
    return {"family": _FAMILIES.get(system, "other"), "name": name, "version": version,
            "kernel": platform.release() or None}


def _accelerator(index: int, gpu: GpuDevice) -> dict[str, Any]:
    limit = getattr(gpu, "power_limit", None)
    return {"index": index, "kind": "gpu", "vendor": "NVIDIA", "model": gpu.name, "architecture": None,
            "memory": {"kind": "dedicated", "capacity_bytes": gpu.total or None},
            "driver": {"name": "nvidia", "version": None},
            "power_limit_watts": limit if isinstance(limit, (int, float)) and limit > 0 else None}


def snapshot(gpus: Sequence[GpuDevice]) -> dict[str, Any]:
    """The snapshot: ``{schema_version, captured_at, capture, architecture, operating_system,
    environment, cpu, memory, accelerators}``."""
    machine, system = platform.machine(), platform.system()
    cpuinfo = _read("/proc/cpuinfo")
    vendor, model, sockets = _cpuinfo(cpuinfo)
    return {
        "schema_version": 1,
        "captured_at": rfc3339(now_ms()),
        "capture": {"scope": "inference_host", "method": "detected",
                    "detector": {"name": "swapproxy", "version": __version__}},
        "architecture": {"name": _ARCHITECTURES.get(machine.lower(), "other"), "raw_name": machine or None},
        "operating_system": _os(system),
        "environment": _environment(platform.release(), cpuinfo),
        "cpu": {"vendor": vendor, "model": model, "socket_count": sockets,
                "physical_core_count": psutil.cpu_count(logical=False),
                "logical_thread_count": psutil.cpu_count(logical=True)},
        "memory": {"capacity_bytes": psutil.virtual_memory().total},
        "accelerators": [_accelerator(i, gpu) for i, gpu in enumerate(gpus)],
    }
