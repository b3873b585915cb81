"""The configured llama-server binary: which one, and what it says about itself.

"The configured binary" is ``instances.llamaServer`` (a command line, split without a shell)
when the config sets it; else the ``llama-server`` that ``scripts/install_llama.py`` builds
into ``$SWAPPROXY_CACHE/bin`` (default ``~/.cache/swapproxy/bin``) when it is there; else
``llama-server`` on ``PATH``. A model created through llamactl's API runs it, and
``/api/v1/server/help|version|devices`` run it with ``--help``, ``--version`` and
``--list-devices``: without a shell, in a process group of its own, with swapproxy's
environment less its keys, its output bounded and the whole run bounded in time (the group
is killed when that runs out). Answers are kept for a minute, so that a page asking again
and again does not start a process each time.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
from collections.abc import Collection, Sequence
from pathlib import Path

from .errors import SwapProxyError, UpstreamTimeout

__all__ = ["INFO_FLAGS", "ServerInfo", "default_llama_server", "llama_server"]

#: What each /api/v1/server/<what> route runs the binary with.
INFO_FLAGS = {"help": "--help", "version": "--version", "devices": "--list-devices"}
RUN_TIMEOUT = 15.0  # --list-devices initialises every backend: seconds, on a big GPU box
MAX_OUTPUT = 1 << 20
CACHE_S = 60.0


def default_llama_server() -> tuple[str, ...]:
    """scripts/install_llama.py's build if installed, else llama-server on PATH (by name, if not found)."""
    cache = Path(os.environ.get("SWAPPROXY_CACHE") or Path.home() / ".cache" / "swapproxy")
    built = cache / "bin" / "llama-server"
    if built.is_file() and os.access(built, os.X_OK):
        return (str(built),)
    return (shutil.which("llama-server") or "llama-server",)


def llama_server(configured: Sequence[str] | None) -> tuple[str, ...]:
    """``instances.llamaServer`` (argv) when set, else :func:`default_llama_server`."""
    return tuple(configured) if configured else default_llama_server()


class ServerInfo:
    """Runs the binary with an info flag; answers are cached for :data:`CACHE_S` seconds."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, ...], tuple[float, str]] = {}
        self._running: dict[tuple[str, ...], asyncio.Future[str]] = {}

    async def ask(self, argv: Sequence[str], flag: str, secrets: Collection[str] = ()) -> str:
        key = (*argv, flag)
        hit = self._cache.get(key)
        if hit is not None and time.monotonic() - hit[0] < CACHE_S:
            return hit[1]
        running = self._running.get(key)
        if running is None:  # one run at a time per question; others wait for its answer
            running = self._running[key] = asyncio.ensure_future(_run(key, secrets))
            running.add_done_callback(lambda _: self._running.pop(key, None))
        text = await asyncio.shield(running)
        self._cache[key] = (time.monotonic(), text)
        return text


async def _output(proc: asyncio.subprocess.Process) -> bytes:
    """What the process prints, up to :data:`MAX_OUTPUT` bytes, once it has exited (or printed that much)."""
    assert proc.stdout is not None
    out = bytearray()
    while len(out) < MAX_OUTPUT and (chunk := await proc.stdout.read(65536)):
        out += chunk
    if len(out) < MAX_OUTPUT:
        await proc.wait()
    return bytes(out[:MAX_OUTPUT])


async def _run(argv: Sequence[str], secrets: Collection[str]) -> str:
    """The command's output (stdout and stderr, as it interleaved them)."""
    env = {k: v for k, v in os.environ.items() if v not in secrets}
    try:
        proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                                                    env=env, start_new_session=True)
    except OSError as exc:
        raise SwapProxyError(f"cannot run {argv[0]!r}: {exc.strerror or exc} (set instances.llamaServer to the "
                             "llama-server to use)") from None
    try:
        out = await asyncio.wait_for(_output(proc), RUN_TIMEOUT)
    except asyncio.TimeoutError:
        raise UpstreamTimeout(f"{' '.join(argv)} did not finish within {RUN_TIMEOUT:g}s") from None
    finally:
        if proc.returncode is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            await proc.wait()
    text = out.decode("utf-8", "replace")
    if len(out) >= MAX_OUTPUT:
        text += f"\n[output cut at {MAX_OUTPUT} bytes]\n"
    if proc.returncode != 0 and not text.strip():
        raise SwapProxyError(f"{' '.join(argv)} exited with code {proc.returncode} and printed nothing")
    return text
