"""A tiny watchdog process that kills upstream process groups if swapproxy dies.

Each upstream runs in its own process group with the parent-death signal set,
so a SIGKILLed swapproxy takes its direct children along. Their children (a
llama-server wrapper script that forks, a docker client, ...) do not get that
signal. The guardian closes that gap: swapproxy starts it once, tells it each
upstream's process-group id over a pipe, and the guardian waits for the pipe
to reach end-of-file. EOF means swapproxy has exited — cleanly or not — and
the guardian SIGKILLs every group still registered, then exits.

Protocol on the guardian's stdin, one line each: ``+PGID`` watch, ``-PGID`` forget.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

__all__ = ["Guardian", "main"]


def main() -> None:
    """Entry point of the guardian process itself (``python -m swapproxy.guardian``)."""
    # Terminal signals belong to swapproxy; the guardian only listens to its pipe.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    groups: set[int] = set()
    for raw in sys.stdin.buffer:
        line = raw.strip()
        if not line:
            continue
        try:
            pgid = int(line[1:])
        except ValueError:
            continue
        if line[:1] == b"+":
            groups.add(pgid)
        elif line[:1] == b"-":
            groups.discard(pgid)
    for pgid in groups:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


class Guardian:
    """swapproxy's handle on the guardian process."""

    def __init__(self) -> None:
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    async def start(self) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "swapproxy.guardian",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
            start_new_session=True,  # out of reach of the terminal's Ctrl-C
        )

    def _send(self, line: str) -> None:
        if self._proc is None or self._proc.stdin is None or self._proc.stdin.is_closing():
            return
        self._proc.stdin.write(line.encode() + b"\n")

    def watch(self, pgid: int) -> None:
        """Kill this process group should swapproxy die."""
        self._send(f"+{pgid}")

    def unwatch(self, pgid: int) -> None:
        """The group was reaped: forget it (its id may be reused)."""
        self._send(f"-{pgid}")

    async def close(self) -> None:
        """Close the pipe (the guardian kills anything left) and reap it."""
        if self._proc is None:
            return
        if self._proc.stdin is not None and not self._proc.stdin.is_closing():
            self._proc.stdin.close()
        await self._proc.wait()
        self._proc = None


if __name__ == "__main__":
    main()
