"""Memory for the scheduler: each device's budget, and each model's footprint on it.

A footprint comes from, in this order: the model's declared ``memory``; what
it was seen using when it last ran with the same command (learned, kept in
``stateDir``; never below the estimate, as a KV cache not yet filled does not
show in a process's resident memory); an estimate from the GGUF file its
command names (:mod:`swapproxy.estimate`, read in a helper process); else
unknown — which the policy counts as the whole of every budgeted device.

Budgets are the declared ``memory.devices``; GPUs that are not declared get
what NVML reports as their total memory. Host memory counts only when
declared. ``memory.reserve`` is kept free on each. With no budget at all,
memory plays no part in scheduling.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import psutil

from .config import Config, ModelConfig
from .config.resolve_memory import MAIN_DEVICE
from .estimate import LlamaOptions, footprint, parse_options
from .gguf_facts import read_facts, read_facts_async
from .learned import Learned
from .nvml import GpuDevice, GpuProvider, NoGpu
from .policy import Resources
from .statejson import read_json, write_json

__all__ = ["MemoryModel", "Footprint", "FACTS_FILE"]

logger = logging.getLogger(__name__)

FACTS_FILE = "gguf-facts.json"
#: (bytes per device or None, where it comes from: declared, learned, estimated or unknown)
Footprint = tuple[dict[str, int] | None, str]


class MemoryModel:
    """Budgets per device and footprints per model, for :func:`swapproxy.policy.plan` and for display."""

    def __init__(self, config: Callable[[], Config], learned: Learned, gpus: GpuProvider | None = None) -> None:
        self._config = config
        self.learned = learned
        self.gpus: GpuProvider = gpus or NoGpu()
        self._devices: list[GpuDevice] = self.gpus.devices()
        self._facts: dict[str, dict[str, Any] | str] = self._load_facts()
        self._read_for: int | None = None  # id() of the config whose GGUF files have been read
        self._reading: asyncio.Task[None] | None = None

    def gpu_devices(self) -> list[GpuDevice]:
        """A fresh NVML sample of every GPU (blocking: call it off the event loop)."""
        self._devices = self.gpus.devices()
        return self._devices

    # -- budgets --------------------------------------------------------------------------------
    def budgets(self) -> dict[str, int]:
        """Bytes each device may hold for models (after ``memory.reserve``)."""
        memory = self._config().memory
        out = {device.device: device.total for device in self._devices}
        out.update(memory.budgets)
        return {device: max(size - memory.reserve, 0) for device, size in out.items()}

    def resources(self) -> Resources | None:
        """What the policy needs; None when no device has a budget (memory is then not considered)."""
        budgets = self.budgets()
        if not budgets:
            return None
        config = self._config()
        self._read_new_files(config)
        return Resources(budgets, {mid: self.footprint(spec)[0] for mid, spec in config.models.items()})

    def _read_new_files(self, config: Config) -> None:
        """Once per config: read the GGUF files it names that are not read yet (in the background)."""
        if self._read_for != id(config) and (self._reading is None or self._reading.done()):
            self._refresh_soon(config)

    def _refresh_soon(self, config: Config) -> None:
        """A new config (a reload) may name new GGUF files: read them, off the event loop (if one runs)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # swapproxy check: it reads them itself
        self._read_for = id(config)
        self._reading = loop.create_task(self.refresh())

    # -- footprints -----------------------------------------------------------------------------
    def _has_gpu(self) -> bool:
        return any(device.startswith("gpu") for device in self.budgets()) or bool(self._devices)

    def main_device(self, spec: ModelConfig) -> str:
        """Where a model's weights go: the first GPU, unless there is none or its command keeps it off."""
        return "gpu0" if self._has_gpu() and parse_options(spec.cmd).ngl != 0 else "host"

    def footprint(self, spec: ModelConfig) -> Footprint:
        """Bytes per device, and where the figure comes from."""
        if spec.memory is not None:
            main = self.main_device(spec)
            return {main if device == MAIN_DEVICE else device: size for device, size in spec.memory.items()}, \
                "declared"
        estimated = self.estimate(spec)
        learned = self.learned.memory(spec) if self._config().memory.learn else None
        if learned is not None:
            merged = dict(learned)
            for device, size in (estimated or {}).items():
                merged[device] = max(merged.get(device, 0), size)
            return merged, "learned"
        if estimated is not None:
            return estimated, "estimated"
        return None, "unknown"

    def estimate(self, spec: ModelConfig) -> dict[str, int] | None:
        """The GGUF estimate, once the facts of its file have been read (:meth:`read_gguf_files`)."""
        opts = parse_options(spec.cmd)
        facts = self._facts.get(self._file_key(opts))
        if not isinstance(facts, dict):
            return None
        return footprint(facts, opts, gpu=self._has_gpu())

    def windowed_cache(self, spec: ModelConfig) -> bool:
        """Whether llama-server keeps only a sliding window of this model's cache (an SWA model
        run without ``--swa-full``): a saved slot then comes back, but cannot be reused."""
        opts = parse_options(spec.cmd)
        facts = self._facts.get(self._file_key(opts))
        return (isinstance(facts, dict) and not opts.swa_full and int(facts.get("n_swa") or 0) > 0
                and any(facts.get("windowed") or ()))

    def facts(self, spec: ModelConfig) -> dict[str, Any] | None:
        """The facts of the GGUF file ``spec``'s command names (``-m``: architecture, parameters,
        file type, weight bytes, trained context; see :mod:`swapproxy.gguf_facts`), once read;
        None until then, or when there is no such file. Asks for the files of a config that
        a reload brought to be read, as :meth:`resources` does."""
        self._read_new_files(self._config())
        facts = self._facts.get(self._file_key(parse_options(spec.cmd)))
        return facts if isinstance(facts, dict) else None

    def why_unknown(self, spec: ModelConfig) -> str | None:
        """Why a model has no estimate (for ``swapproxy check`` and the UI), or None when it has one."""
        opts = parse_options(spec.cmd)
        if opts.remote:
            return "the command fetches its model (-hf / --model-url)"
        if opts.model is None:
            return "the command names no model file (-m): a wrapper, a container or another server"
        facts = self._facts.get(self._file_key(opts))
        if isinstance(facts, str):
            return facts
        return None if facts is not None else "not read yet"

    # -- what the API and the UI show -------------------------------------------------------------
    def model_json(self, spec: ModelConfig) -> dict[str, Any]:
        """``{"bytes": {device: n} or null, "source": "declared" | "learned" | "estimated" | "unknown"}``."""
        sizes, source = self.footprint(spec)
        return {"bytes": sizes, "source": source}

    def devices_json(self, running: list[ModelConfig]) -> dict[str, dict[str, int | None]]:
        """Per device with a budget (or a GPU): the budget, what the running models' footprints plan
        on it, and (GPUs) what NVML says is used of its total right now. Empty when memory plays no part."""
        budgets = self.budgets()
        planned: dict[str, int] = {}
        for spec in running:
            for device, size in (self.footprint(spec)[0] or {}).items():
                planned[device] = planned.get(device, 0) + size
        out: dict[str, dict[str, int | None]] = {
            device: {"budget": budget, "planned": planned.get(device, 0), "used": None, "total": None}
            for device, budget in sorted(budgets.items())}
        for gpu in self._devices:  # the last sample (see swapproxy.telemetry)
            entry = out.setdefault(gpu.device, {"budget": budgets.get(gpu.device), "planned": 0})
            entry["used"], entry["total"] = gpu.used, gpu.total
        return out

    # -- reading GGUF files ---------------------------------------------------------------------
    @staticmethod
    def _file_key(opts: LlamaOptions) -> str:
        """A key that changes when the file does (its size or mtime)."""
        if opts.model is None or opts.remote:
            return ""
        try:
            st = os.stat(opts.model)
        except OSError:
            return f"{opts.model}|missing"
        return f"{os.path.abspath(opts.model)}|{st.st_size}|{st.st_mtime_ns}"

    def _facts_path(self) -> Path | None:
        state_dir = self._config().state_dir
        return Path(state_dir) / FACTS_FILE if state_dir else None

    def _load_facts(self) -> dict[str, dict[str, Any] | str]:
        return read_json(self._facts_path())

    def pending_files(self, models: Mapping[str, ModelConfig] | None = None) -> dict[str, str]:
        """The GGUF files (key → path) that the models name and whose facts are not known yet."""
        out: dict[str, str] = {}
        for spec in (models or self._config().models).values():
            opts = parse_options(spec.cmd)
            key = self._file_key(opts)
            if key and not key.endswith("|missing") and key not in self._facts and opts.model is not None:
                out[key] = opts.model
        return out

    def read_gguf_files(self, models: Mapping[str, ModelConfig] | None = None) -> int:
        """Read the facts of every GGUF file not read yet, in one helper process (blocking); how many."""
        pending = self.pending_files(models)
        if pending:
            self._take(pending, read_facts(list(pending.values())))
        return len(pending)

    async def refresh(self) -> None:
        """:meth:`read_gguf_files` without blocking the event loop (at start-up and after a reload)."""
        self._read_for = id(self._config())  # this config's files are being read: not again
        pending = self.pending_files()
        if pending:
            self._take(pending, await read_facts_async(list(pending.values())))

    def _take(self, pending: Mapping[str, str], answers: Mapping[str, dict[str, Any] | str]) -> None:
        for key, path in pending.items():
            self._facts[key] = answers.get(path, "no answer from the GGUF reader")
            if isinstance(self._facts[key], str):
                logger.info("no memory estimate from %s: %s", path, self._facts[key])
        self._save_facts()

    # -- learning what models really use ---------------------------------------------------------------
    def measure(self, running: list[tuple[ModelConfig, int]]) -> dict[str, dict[str, int]]:
        """What each running model's process tree holds now: RSS on the host, NVML per GPU (blocking).

        Records the peaks in :class:`~swapproxy.learned.Learned` when ``memory.learn``; returns
        the figures by model id.
        """
        out: dict[str, dict[str, int]] = {}
        for spec, pid in running:
            pids = _tree(pid)
            if not pids:
                continue
            used: dict[str, int] = {"host": _rss(pids)}
            for per_device in self.gpus.process_memory(pids).values():
                for device, size in per_device.items():
                    used[device] = used.get(device, 0) + size
            out[spec.id] = used
            if self._config().memory.learn:
                self.learned.record_memory(spec, used)
        return out

    def _save_facts(self) -> None:
        write_json(self._facts_path(), self._facts)


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants; [] when it is gone."""
    try:
        root = psutil.Process(pid)
        return [pid, *(child.pid for child in root.children(recursive=True))]
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return []


def _rss(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total
