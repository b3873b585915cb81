"""systemd's notify protocol, spoken directly: a datagram to ``$NOTIFY_SOCKET``.

No dependency is needed: the protocol is one ``KEY=value`` line per field in
a single datagram to a Unix socket (a leading ``@`` means the abstract
namespace). Outside systemd (``NOTIFY_SOCKET`` unset) every call is a no-op.

:class:`Notifier` sends ``READY=1`` once listening and preloads are done,
``RELOADING=1``/``READY=1`` around reloads, ``STOPPING=1`` on shutdown,
``STATUS=`` one-line summaries, and ``WATCHDOG=1`` every half of
``$WATCHDOG_USEC`` for as long as the event loop keeps running it (a wedged
loop stops the pings and systemd restarts the service).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Mapping

__all__ = ["Notifier", "watchdog_interval"]

logger = logging.getLogger(__name__)


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None when not asked for."""
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC")
    pid = env.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return max(int(usec) / 1e6 / 2, 0.01)
    except ValueError:
        return None


class Notifier:
    """Sends notify messages to systemd when ``NOTIFY_SOCKET`` is set."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET", "")
        self._address = "\0" + path[1:] if path.startswith("@") else path
        self._sock: socket.socket | None = None
        if self._address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._watchdog: asyncio.Task[None] | None = None
        self._interval = watchdog_interval(env)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, **fields: str | int) -> None:
        """One datagram: each field as ``KEY=value`` on its own line."""
        if self._sock is None:
            return
        message = "\n".join(f"{key}={value}" for key, value in fields.items())
        try:
            self._sock.sendto(message.encode(), self._address)
        except OSError as exc:  # systemd gone or socket full: never fatal for serving
            logger.debug("sd_notify failed: %s", exc)

    def ready(self, status: str) -> None:
        self.send(READY=1, STATUS=status)

    def reloading(self) -> None:
        self.send(RELOADING=1, MONOTONIC_USEC=time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000)

    def stopping(self) -> None:
        self.send(STOPPING=1, STATUS="stopping upstreams")

    def status(self, text: str) -> None:
        self.send(STATUS=text)

    def start_watchdog(self) -> None:
        if self._sock is None or self._interval is None or self._watchdog is not None:
            return
        self._watchdog = asyncio.ensure_future(self._ping(self._interval))

    async def _ping(self, interval: float) -> None:
        while True:
            self.send(WATCHDOG=1)
            await asyncio.sleep(interval)

    async def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            try:
                await self._watchdog
            except asyncio.CancelledError:
                pass
            self._watchdog = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
