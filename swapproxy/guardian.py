"""A tiny watchdog process that kills upstream process groups if swapproxy dies.

Each upstream runs in its own process group with the parent-death signal set,
so a SIGKILLed swapproxy takes its direct children along. Their children (a
llama-server wrapper script that forks, a docker client, ...) do not get that
signal. The guardian closes that gap: swapproxy starts it once, tells it each
upstream's process-group id over a pipe, and the guardian waits for the pipe
to reach end-of-file. EOF means swapproxy has exited — cleanly or not — and
the guardian SIGKILLs every group still registered, then exits.

Protocol on the guardian's stdin, one line each: ``+PGID`` watch, ``-PGID`` forget.

swapproxy watches its guardian in turn: should the guardian die (an OOM killer, a
stray ``kill``), a new one is started at once and told every group still watched,
so a later SIGKILL of swapproxy still takes the grandchildren along.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

__all__ = ["Guardian", "main"]

logger = logging.getLogger(__name__)


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
    """swapproxy's handle on the guardian process, which it restarts should it die."""

    #: Seconds between attempts to start a guardian that failed to start.
    RETRY = 1.0

    def __init__(self) -> None:
        self._proc: asyncio.subprocess.Process | None = None
        self._groups: set[int] = set()
        self._keeper: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    async def start(self) -> None:
        await self._spawn()
        self._keeper = asyncio.ensure_future(self._keep())

    async def _spawn(self) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "swapproxy.guardian",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
            start_new_session=True,  # out of reach of the terminal's Ctrl-C
        )
        for pgid in self._groups:  # a replacement learns every group still watched
            self._send(f"+{pgid}")

    async def _keep(self) -> None:
        """Start a new guardian whenever the running one exits, until :meth:`close`."""
        while not self._closing:
            proc = self._proc
            if proc is not None:
                code = await proc.wait()
                if self._closing:
                    return
                if proc.stdin is not None:
                    proc.stdin.close()
                logger.warning("the guardian process (pid %d) exited with %s; starting a new one", proc.pid, code)
            try:
                await self._spawn()
                if proc is not None:
                    logger.warning("guardian pid %d started, watching %d process group(s)", self.pid,
                                   len(self._groups))
            except OSError as exc:
                self._proc = None
                logger.error("cannot start a guardian process: %s; trying again in %gs", exc, self.RETRY)
                await asyncio.sleep(self.RETRY)

    def _send(self, line: str) -> None:
        if self._proc is None or self._proc.stdin is None or self._proc.stdin.is_closing():
            return
        try:
            self._proc.stdin.write(line.encode() + b"\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # it just died: its replacement is told every group

    def watch(self, pgid: int) -> None:
        """Kill this process group should swapproxy die."""
        self._groups.add(pgid)
        self._send(f"+{pgid}")

    def unwatch(self, pgid: int) -> None:
        """The group was reaped: forget it (its id may be reused)."""
        self._groups.discard(pgid)
        self._send(f"-{pgid}")

    async def close(self) -> None:
        """Close the pipe (the guardian kills anything left) and reap it."""
        self._closing = True
        if self._keeper is not None:
            self._keeper.cancel()
            await asyncio.gather(self._keeper, return_exceptions=True)
            self._keeper = None
        if self._proc is None:
            return
        if self._proc.stdin is not None and not self._proc.stdin.is_closing():
            self._proc.stdin.close()
        await self._proc.wait()
        self._proc = None


if __name__ == "__main__":
    main()
