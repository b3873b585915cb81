"""The operating-system side of one upstream: how it is spawned, checked for, signalled and stopped.

Small functions :class:`~swapproxy.process.ManagedProcess` calls: the
``preexec_fn`` that ties a child's life to ours (the parent-death signal), a
signal to a whole process group, the check that nobody else holds a model's
port, and ``cmdStop`` run without a shell.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

from .errors import ModelStartFailed
from .redact import redact_url

__all__ = ["child_setup", "killpg", "check_port_free", "run_cmd_stop"]

logger = logging.getLogger("swapproxy.process")  # what a user reads is "the process", not this module

_PR_SET_PDEATHSIG = 1
_LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}

#: prctl(2), looked up once here: the preexec_fn below runs in a child forked from a process
#: with threads, where loading a library (dlopen's lock) is not safe; calling it is.
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


def child_setup(parent_pid: int) -> Callable[[], None]:
    """preexec_fn: die with the parent (Linux), and catch a parent already gone.

    It only calls prctl and getppid: no imports, no library loading, no locks.
    """
    prctl = _prctl

    def setup() -> None:
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died between fork and prctl
            os._exit(1)

    return setup


def killpg(pgid: int, sig: signal.Signals) -> None:
    """Signal process group ``pgid``; one that is gone (or not ours) is no error."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


async def check_port_free(name: str, proxy: str) -> None:
    """Refuse to start model ``name`` when something already answers on its loopback port."""
    parts = urlsplit(proxy)
    if parts.hostname not in _LOOPBACK or parts.port is None:
        return
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(parts.hostname, parts.port), 0.5)
    except (OSError, asyncio.TimeoutError):
        return  # nobody listening: good
    writer.close()
    raise ModelStartFailed(
        f"{name}: port {parts.port} ({redact_url(proxy)}) is already in use by another process; "
        "stop that process or change startPort/proxy"
    )


async def run_cmd_stop(name: str, cmd_stop: Sequence[str], pid: int, timeout: float) -> None:
    """Run ``cmdStop`` (``${PID}`` → ``pid``) up to ``timeout`` s; SIGTERM the group if it cannot run."""
    argv = [arg.replace("${PID}", str(pid)) for arg in cmd_stop]
    try:
        stopper = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
        )
    except OSError as exc:
        logger.warning("%s: cmdStop failed to run (%s); sending SIGTERM", name, exc)
        killpg(pid, signal.SIGTERM)
        return
    try:
        await asyncio.wait_for(stopper.wait(), timeout)
    except asyncio.TimeoutError:
        stopper.kill()
        await stopper.wait()
