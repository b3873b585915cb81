"""What the benchmarks measure with: percentiles, SSE lateness, CPU time and RSS of processes.

Three percentile rules are in use, each kept as the benchmark that prints it has
always computed it (so figures stay comparable with earlier runs):

* :func:`pct`: linear interpolation between the closest ranks (perf, proxy);
* :func:`pct_nearest`: the nearest rank of ``q * (n - 1)`` (readiness);
* :func:`pct_rank`: the rank ``int(q * n)``, 0.0 for no values (soak).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import psutil  # type: ignore[import-untyped]

__all__ = ["pct", "pct_nearest", "pct_rank", "lateness", "machine_busy_seconds", "Meter", "cpu_diff", "Tally",
           "tree", "rss_bytes", "rss_mb"]


# -- percentiles ---------------------------------------------------------------------------------
def pct(values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1), linear interpolation; nan when empty."""
    if not values:
        return math.nan
    s = sorted(values)
    k = (len(s) - 1) * q
    lo = math.floor(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def pct_nearest(values: Sequence[float], q: float) -> float:
    """The value at the rank nearest ``q * (n - 1)``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def pct_rank(values: Sequence[float], q: float) -> float:
    """The value at rank ``int(q * n)``; 0.0 when empty."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- SSE -----------------------------------------------------------------------------------------
def lateness(streams: list[list[float]], rate: float, *, steady: bool) -> list[float]:
    """Each event's lateness against its stream's schedule (``rate`` events/s).

    Streams that start together are set up one after another (by the proxy, and by the
    upstream): while the last ones are being set up the first ones' events wait. That is
    a per-stream cost, not a per-event delay, so only events after every stream's first
    event count. With ``steady``, also only those before any stream's last token: streams
    that started together end together, and each one's end (its last events, the
    response's end, the proxy's book-keeping) holds up the others' last events.

    The schedule is anchored at ``min_i(arrival_i - i/R)`` over the events kept, so a late
    first event does not make the rest look early. For one stream every event is kept.
    """
    if not streams:
        return []
    all_open = max(times[0] for times in streams)
    first_end = min(times[-1] for times in streams) if steady else math.inf
    out: list[float] = []
    for times in streams:
        shifted = [t - i / rate for i, t in enumerate(times) if all_open <= t < first_end]
        if shifted:
            anchor = min(shifted)
            out.extend(x - anchor for x in shifted)
    return out


# -- CPU -----------------------------------------------------------------------------------------
_TICK = os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds every process on the machine has used (all CPUs, /proc/stat), 0 if unknown."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()[1:]
    except OSError:
        return 0.0
    ticks = [int(x) for x in fields[:8]]  # user nice system idle iowait irq softirq steal
    return (sum(ticks) - ticks[3] - ticks[4]) / _TICK


class Meter:
    """CPU seconds (user + system) of named process groups, this process as 'client', and the machine's."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = {name: [psutil.Process(p) for p in pids] for name, pids in groups.items()}
        self.groups["client"] = [psutil.Process()]

    def sample(self) -> dict[str, float]:
        out = {"machine": machine_busy_seconds()}
        for name, procs in self.groups.items():
            total = 0.0
            for p in procs:
                try:
                    t = p.cpu_times()
                    total += t.user + t.system
                except psutil.NoSuchProcess:
                    pass
            out[name] = total
        return out


def cpu_diff(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before[k] for k in after}


@dataclass
class Tally:
    """One side's totals over its rounds: requests (or events), errors, wall time, CPU by Meter group."""

    ok: int = 0
    err: int = 0
    wall: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)

    def add(self, ok: int, err: int, wall: float, before: dict[str, float], after: dict[str, float]) -> None:
        self.ok += ok
        self.err += err
        self.wall += wall
        for k, v in cpu_diff(before, after).items():
            self.cpu[k] = self.cpu.get(k, 0.0) + v

    @property
    def rps(self) -> float:
        return self.ok / self.wall if self.wall else math.nan

    def ours(self) -> float:
        return sum(v for k, v in self.cpu.items() if k != "machine")

    def cpu_pct(self, who: str | None) -> float:
        """% of one core used by `who` (None: all measured processes; "others": the rest of the machine)."""
        if who is None:
            used = self.ours()
        elif who == "others":
            used = max(0.0, self.cpu.get("machine", 0.0) - self.ours())
        else:
            used = self.cpu.get(who, 0.0)
        return 100 * used / self.wall if self.wall else math.nan

    def us_per_req(self, who: str) -> float:
        return 1e6 * self.cpu.get(who, 0.0) / max(1, self.ok)

    def busiest(self) -> str:
        return max((k for k in self.cpu if k != "machine"), key=lambda k: self.cpu[k])


# -- memory --------------------------------------------------------------------------------------
def tree(pid: int) -> list[psutil.Process]:
    """The process and all its descendants; [] when it is gone."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def rss_bytes(pids: Iterable[int]) -> int:
    """Summed RSS of the processes that still exist."""
    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_info().rss
        except psutil.Error:
            pass
    return total


def rss_mb(pids: Iterable[int]) -> float:
    return rss_bytes(pids) / 2**20
