"""Pid records: find upstreams that an earlier swapproxy run left behind, and stop them.

The guardian and the parent-death signal cover a swapproxy that dies; this
covers the rest (the guardian killed too, by an OOM killer or ``kill -9 -1``).
Each running swapproxy keeps ``run-<pid>-<n>.json`` in its state folder, listing
its own pid and each live upstream's pid with the process start times (so a
recycled pid is never mistaken for ours). At start-up, before any port is
bound, :func:`reap_leftovers` reads the records of runs whose owner is gone
and stops what they list: SIGTERM to the group, then SIGKILL. Each upstream
leads its own process group, so a group is stopped even when its leader is gone
and only its children (a wrapper script's server) are left.

A record is trusted only if it is a regular file owned by this user and writable
by nobody else, read without following a symbolic link: a record someone else
planted could otherwise make swapproxy signal any process group. Records are
written by :func:`~swapproxy.statejson.write_json`: through a new, randomly named
0600 file (never a planted link), renamed into place, in a private (0700) folder.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import signal
import stat
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import psutil

from .statejson import write_json

__all__ = ["RunRecord", "reap_leftovers", "read_record"]

logger = logging.getLogger(__name__)

_instances = itertools.count(1)  # several apps in one process (tests) keep separate records
_MAX_RECORD = 1 << 20  # a record lists a few pids: anything larger is not one of ours
_POLL = 0.02  # seconds between checks while waiting for leftovers to exit


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
        data = {"owner": self._owner, "upstreams": [{"pid": p, "started": t} for p, t in self._upstreams.items()]}
        write_json(self.path, data)

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


def read_record(path: Path) -> dict[str, Any] | None:
    """A record's data if it can be trusted (module docstring), else None (with a warning if it was planted)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:  # gone, or a symbolic link (ELOOP)
        return None
    with os.fdopen(fd, "rb") as source:
        info = os.fstat(source.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o022:
            logger.warning("ignoring pid record %s: not a regular file owned by this user and writable only by it",
                           path)
            return None
        try:
            data = json.loads(source.read(_MAX_RECORD))
        except (OSError, ValueError):
            return None
    return data if isinstance(data, dict) else None


def _alive(entry: Any) -> bool:
    if not isinstance(entry, dict):
        return False
    pid, started = entry.get("pid"), entry.get("started")
    if not isinstance(pid, int) or pid <= 1:
        return False
    actual = _start_time(pid)
    return actual is not None and (not isinstance(started, (int, float)) or abs(actual - float(started)) < 1.0)


def _group_members(pgid: int, started: Any) -> list[psutil.Process]:
    """This user's processes in group ``pgid`` that began after its leader did (the leader itself gone)."""
    uid = os.geteuid()
    since = float(started) - 1.0 if isinstance(started, (int, float)) else 0.0
    members = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid and proc.uids().effective == uid and proc.create_time() >= since:
                members.append(proc)
        except (psutil.Error, OSError):
            continue  # gone meanwhile, or not ours to look at
    return members


def _leftovers(entries: Iterable[Any]) -> dict[int, list[psutil.Process]]:
    """Process group → its processes, for each recorded upstream still there (its leader, or what it left)."""
    groups: dict[int, list[psutil.Process]] = {}
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("pid"), int) or entry["pid"] <= 1:
            continue
        pid = entry["pid"]
        # The leader, still ours, with whatever it started; or, the leader gone, what is left of its
        # group. A pid taken by another process since is not ours, nor its group.
        if _alive(entry) or _start_time(pid) is None:
            members = _group_members(pid, entry.get("started"))
            if members:
                groups[pid] = members
    return groups


def _wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait up to ``timeout`` s for ``procs`` to exit; those still running. A zombie counts as gone:
    these are not our children, and their new parent may be slow to reap them (or never do)."""
    deadline = time.monotonic() + timeout
    while True:
        alive = []
        for proc in procs:
            try:
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    alive.append(proc)
            except psutil.Error:
                pass
        if not alive or time.monotonic() >= deadline:
            return alive
        procs = alive
        time.sleep(_POLL)


def _signal_groups(groups: Iterable[int], sig: signal.Signals) -> None:
    for pgid in groups:
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def reap_leftovers(state_dir: str | os.PathLike[str], grace: float = 5.0) -> list[int]:
    """Stop upstreams recorded by runs whose owner is gone; returns the process groups stopped."""
    folder = Path(state_dir)
    if not folder.is_dir():
        return []
    stopped: list[int] = []
    for record in sorted(folder.glob("run-*.json")):
        data = read_record(record)
        if data is None:
            continue
        if _alive(data.get("owner")):
            continue  # another swapproxy, still running: its upstreams are its own
        upstreams = data.get("upstreams")
        groups = _leftovers(upstreams if isinstance(upstreams, list) else [])
        owner = data.get("owner")
        for pgid in groups:
            logger.warning("stopping upstream process group %d left behind by swapproxy pid %s", pgid,
                           owner.get("pid") if isinstance(owner, dict) else "?")
        # The processes were taken before any signal: one that exits meanwhile is no error.
        _signal_groups(groups, signal.SIGTERM)
        victims = [proc for members in groups.values() for proc in members]
        alive = _wait_gone(victims, grace)
        if alive:
            _signal_groups({pgid for pgid, members in groups.items() if any(p in alive for p in members)},
                           signal.SIGKILL)
            _wait_gone(alive, grace)
        stopped += list(groups)
        record.unlink(missing_ok=True)
    return stopped
