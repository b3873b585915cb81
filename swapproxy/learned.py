"""What swapproxy learns of each model by running it: how long it takes to start and to stop, how much
memory it uses.

Kept per model *and command*: a model whose command (after macros) or
environment changes starts from nothing again. The scheduler reads the
expected start time to weigh a swap; the memory policy reads the peak memory
per device; a progress display can read the start times too. Persisted as one
small JSON file in ``stateDir`` (written whole to a temporary file, then
renamed over the old one, never followed through a link), so it survives a
restart; without a ``stateDir`` it lives in memory only.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .config import ModelConfig
from .statejson import read_json, write_json

__all__ = ["Learned", "command_key", "FILE_NAME"]

FILE_NAME = "learned.json"
#: How many recent start times are kept per model and command.
KEEP_STARTS = 20


def command_key(spec: ModelConfig) -> str:
    """A short digest of what makes a model's process what it is: its command and environment.

    Its port is left out (an argument that is the port, or ends ``=port``, counts as ``${PORT}``):
    a model that got another port because one was added before it in the config is still the
    same model, with the same start time, memory and saved slots.
    """
    port = str(spec.port) if spec.port else None

    def general(arg: str) -> str:
        if port is None:
            return arg
        if arg == port:
            return "${PORT}"
        return arg[: -len(port)] + "${PORT}" if arg.endswith("=" + port) else arg

    text = json.dumps([spec.id, [general(a) for a in spec.cmd], sorted(spec.env.items())])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Learned:
    """Start times and memory peaks per model and command; saved in ``state_dir`` when one is given."""

    def __init__(self, state_dir: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(state_dir) / FILE_NAME if state_dir else None
        self._data: dict[str, dict[str, Any]] = self._load()

    def _load(self) -> dict[str, dict[str, Any]]:
        return read_json(self.path)

    def _entry(self, spec: ModelConfig) -> dict[str, Any]:
        key = command_key(spec)
        entry = self._data.get(key)
        if not isinstance(entry, dict):
            entry = self._data[key] = {"model": spec.id, "starts": [], "memory": {}}
        return entry

    def _save(self) -> None:
        write_json(self.path, self._data)

    # -- start times ------------------------------------------------------------------------
    def record_start(self, spec: ModelConfig, seconds: float) -> None:
        """One more start of ``spec`` (spawn to ready) took ``seconds``."""
        starts = self._entry(spec)["starts"]
        starts.append(round(seconds, 4))
        del starts[:-KEEP_STARTS]
        self._save()

    def starts(self, spec: ModelConfig) -> list[float]:
        """The recent start times of ``spec``, oldest first."""
        entry = self._data.get(command_key(spec))
        return list(entry.get("starts", [])) if isinstance(entry, dict) else []

    def expected_start(self, spec: ModelConfig) -> float | None:
        """The median of the recent start times (None before the first start)."""
        starts = self.starts(spec)
        return statistics.median(starts) if starts else None

    # -- stop times ---------------------------------------------------------------------------
    def record_stop(self, spec: ModelConfig, seconds: float) -> None:
        """One graceful stop of ``spec`` (saving its slots, then its exit) took ``seconds``."""
        stops = self._entry(spec).setdefault("stops", [])
        stops.append(round(seconds, 4))
        del stops[:-KEEP_STARTS]
        self._save()

    def expected_stop(self, spec: ModelConfig) -> float | None:
        """The median of the recent graceful stop times (None before the first)."""
        entry = self._data.get(command_key(spec))
        stops = entry.get("stops", []) if isinstance(entry, dict) else []
        return statistics.median(stops) if stops else None

    # -- memory ---------------------------------------------------------------------------------
    def record_memory(self, spec: ModelConfig, used: Mapping[str, int]) -> None:
        """``spec``'s process was seen using ``used`` bytes per device; keeps the peak of each."""
        memory = self._entry(spec)["memory"]
        changed = False
        for device, size in used.items():
            if size > memory.get(device, 0):
                memory[device] = int(size)
                changed = True
        if changed:
            self._save()

    def memory(self, spec: ModelConfig) -> dict[str, int] | None:
        """The peak memory per device seen for ``spec`` (None before it has run)."""
        entry = self._data.get(command_key(spec))
        memory = entry.get("memory") if isinstance(entry, dict) else None
        return dict(memory) if memory else None
