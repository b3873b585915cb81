"""Pid records: find upstreams that an earlier swapproxy run left behind, and stop them.

The guardian and the parent-death signal cover a swapproxy that dies; this
covers the rest (the guardian killed too, by an OOM killer or ``kill -9 -1``).
Each running swapproxy keeps ``run-<pid>-<n>.json`` in its state folder, listing
its own pid and each live upstream's pid with the process start times (so a
recycled pid is never mistaken for ours). At start-up, before any port is
bound, :func:`reap_leftovers` reads the records of runs whose owner is gone
and stops what they list: SIGTERM to the group, then SIGKILL.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import signal
from pathlib import Path
from typing import Any

import psutil

__all__ = ["RunRecord", "reap_leftovers"]

logger = logging.getLogger(__name__)

_instances = itertools.count(1)  # several apps in one process (tests) keep separate records


def _start_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


class RunRecord:
    """This run's pid record; :meth:`watch`/:meth:`unwatch` mirror the guardian's interface."""

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.dir = Path(state_dir)
        self.path = self.dir / f"run-{os.getpid()}-{next(_instances)}.json"
        self._owner = {"pid": os.getpid(), "started": _start_time(os.getpid())}
        self._upstreams: dict[int, float | None] = {}

    def _write(self) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            data = {"owner": self._owner, "upstreams": [{"pid": p, "started": t} for p, t in self._upstreams.items()]}
            tmp.write_text(json.dumps(data))
            tmp.replace(self.path)
        except OSError as exc:  # a read-only home must not stop swapproxy from serving
            logger.warning("cannot write pid record %s: %s", self.path, exc)

    def watch(self, pid: int) -> None:
        self._upstreams[pid] = _start_time(pid)
        self._write()

    def unwatch(self, pid: int) -> None:
        if self._upstreams.pop(pid, None) is not None or not self._upstreams:
            self._write()

    def close(self) -> None:
        try:
            self.path.unlink(missing_ok=True)
        except OSError:
            pass


def _alive(entry: dict[str, Any]) -> bool:
    pid, started = entry.get("pid"), entry.get("started")
    if not isinstance(pid, int):
        return False
    actual = _start_time(pid)
    return actual is not None and (started is None or abs(actual - float(started)) < 1.0)


def reap_leftovers(state_dir: str | os.PathLike[str], grace: float = 5.0) -> list[int]:
    """Stop upstreams recorded by runs whose owner is gone; returns the pids stopped."""
    folder = Path(state_dir)
    if not folder.is_dir():
        return []
    stopped: list[int] = []
    for record in folder.glob("run-*.json"):
        try:
            data = json.loads(record.read_text())
        except (OSError, ValueError):
            continue
        if _alive(data.get("owner", {})):
            continue  # another swapproxy, still running: its upstreams are its own
        victims = []
        for entry in data.get("upstreams", []):
            if _alive(entry):
                pid = entry["pid"]
                logger.warning("stopping upstream pid %d left behind by swapproxy pid %s", pid, data["owner"].get("pid"))
                try:
                    os.killpg(pid, signal.SIGTERM)
                except (ProcessLookupError, PermissionError):
                    continue
                victims.append(psutil.Process(pid))
        _, alive = psutil.wait_procs(victims, timeout=grace)
        for proc in alive:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        psutil.wait_procs(alive, timeout=grace)
        stopped += [p.pid for p in victims]
        record.unlink(missing_ok=True)
    return stopped
