"""Run the application until SIGINT/SIGTERM, then stop every upstream and exit 0.

It listens on every ``--listen`` address (:mod:`swapproxy.listen`), over TLS when a
certificate is given.

Signal handlers only record the signal; the loop does the work of shutting
down (tearing down the app's resources stops each upstream within its
``unloadTimeout``).

Before it listens, the cyclic garbage collector is set up for serving (see
:func:`_tune_gc`). The event loop is uvloop's when it is installed
(``pip install swapproxy[fast]``), else asyncio's own; see :func:`loop_factory`.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import resource
import signal
import ssl
from collections.abc import Callable, Sequence

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from .config import Config
from .listen import Address, parse_listen
from .processes import ProcessLike
from .states import ProcessState
from .status import status_line
from .systemd import Notifier
from .web.app import make_app
from .web.runtime import RUNTIME

__all__ = ["parse_listen", "serve", "run", "loop_factory", "status_line"]

logger = logging.getLogger(__name__)

#: Allocations between young-generation collections once serving (Python's default: 700).
_GC_THRESHOLD0 = 10_000

#: Seconds open requests get after SIGTERM/SIGINT before upstreams are stopped.
SHUTDOWN_GRACE = 0.5

#: Seconds a client connection may go without a whole request's headers: from its start, or
#: from the end of its last response (an idle keep-alive connection). aiohttp's keep-alive
#: timer (armed at connect since aiohttp 3.14.4) closes it then, whether it sent nothing or
#: is sending its headers too slowly; a request being handled is never cut by it. aiohttp's
#: own default is over an hour, which let idle sockets use up the process's file descriptors.
IDLE_TIMEOUT = 30.0


async def serve(
    config: Config, addresses: Sequence[Address], stop: asyncio.Event, *, watch_config: bool = False,
    tls: ssl.SSLContext | None = None,
) -> None:
    """Serve ``config`` on ``addresses`` until ``stop`` is set; SIGHUP reloads its sources."""
    notifier = Notifier()
    app = make_app(config)
    # shutdown_timeout: how long open requests may run on after SIGTERM before they are cut and
    # every upstream is stopped; kept short so the whole stop fits in unloadTimeout + 1 s and
    # well inside systemd's TimeoutStopSec.
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=SHUTDOWN_GRACE,
                           keepalive_timeout=IDLE_TIMEOUT)
    await runner.setup()
    _tune_gc()
    try:
        for address in addresses:
            await web.TCPSite(runner, address.host, address.port, reuse_address=True, ssl_context=tls).start()
        scheme = "https" if tls is not None else "http"
        where = ", ".join(f"{scheme}://{address}" for address in addresses)
        logger.info("swapproxy listening on %s with %d model(s)", where, len(config.models))
        for address in addresses:
            if not address.loopback and not config.all_keys:
                logger.warning("listening on %s without any apiKeys: anyone who can reach this port can use it",
                               address)
        rt = app[RUNTIME]
        scheduler = rt.scheduler
        notifier.start_watchdog()
        if config.preload:  # READY=1 means preloads are done, unless we are told to stop first
            preloaded = asyncio.ensure_future(scheduler.preloaded.wait())
            stopping = asyncio.ensure_future(stop.wait())
            await asyncio.wait({preloaded, stopping}, return_when=asyncio.FIRST_COMPLETED)
            preloaded.cancel()
            stopping.cancel()

        def on_state(proc: ProcessLike, old: ProcessState, new: ProcessState) -> None:
            if new in (ProcessState.READY, ProcessState.STOPPED, ProcessState.FAILED):
                notifier.status(status_line(scheduler))

        scheduler.hub.add_listener(on_state)
        reloader = rt.reloader  # config edits through the API apply through it too: systemd hears of both
        reloader.on_begin = notifier.reloading
        reloader.on_end = lambda: notifier.ready(status_line(scheduler))
        loop = asyncio.get_running_loop()
        reloads: set[asyncio.Task[bool]] = set()

        def on_hup() -> None:
            task = asyncio.ensure_future(reloader.reload())
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        loop.add_signal_handler(signal.SIGHUP, on_hup)
        watcher = asyncio.ensure_future(reloader.watch()) if watch_config else None
        notifier.ready(status_line(scheduler))
        await stop.wait()
        loop.remove_signal_handler(signal.SIGHUP)
        if watcher is not None:
            watcher.cancel()
        for task in reloads:
            task.cancel()
        logger.info("shutting down: stopping every upstream")
        notifier.stopping()
    finally:
        await runner.cleanup()
        await notifier.close()


def _client_fault_filter(record: logging.LogRecord) -> bool:
    """A malformed request is the client's fault: one INFO line, not an ERROR with a traceback.

    aiohttp logs requests its parser refuses (and bodies that fail to decode)
    at ERROR with a full traceback; any client could flood the log that way.
    """
    exc = record.exc_info[1] if record.exc_info else None
    if isinstance(exc, (HttpProcessingError, RequestPayloadError)):
        record.levelno, record.levelname = logging.INFO, "INFO"
        record.msg, record.args, record.exc_info, record.exc_text = (
            "refused a malformed request: %s", (str(exc).replace("\n", " ").strip(),), None, None)
    return record.levelno >= logging.getLogger().getEffectiveLevel()



def _tune_gc() -> None:
    """Set the cyclic garbage collector up for serving; called once, before listening.

    What the start-up made (modules, config, the app: ~50k objects) lives as long as the
    process. Left in the collector's sight, every full collection walks all of it again:
    measured under load, one ~25 ms stall about every second, each felt by every request
    and stream in flight. ``gc.freeze()`` moves it out of sight (full collections then
    take under 1 ms). And a young collection walks the objects of every request in flight:
    at Python's default threshold of 700 allocations that happened every few requests and
    took ~3% of the CPU under load; at 10,000 it takes about 1% of that, and the CPU per
    proxied request fell by 7-12% (cache effects included).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(_GC_THRESHOLD0, *gc.get_threshold()[1:])


def _raise_fd_limit() -> None:
    """Raise the soft limit on open files to the hard one (systemd's soft default is 1,024).

    Every client connection and every upstream connection holds a descriptor; Go servers
    (llama-swap) get the same raise from their runtime.
    """
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != hard and (hard == resource.RLIM_INFINITY or soft < hard):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 1 << 20, hard))
    except (ValueError, OSError) as exc:  # a container may refuse it: serve with what there is
        logger.debug("could not raise the open-file limit: %s", exc)


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop factory when uvloop is installed, else None (asyncio's own loop)."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop  # type: ignore[no-any-return]


def run(config: Config, addresses: Sequence[Address], *, watch_config: bool = False,
        tls: ssl.SSLContext | None = None) -> int:
    """Blocking entry point used by the CLI; returns the process exit code."""

    logging.getLogger("aiohttp.server").addFilter(_client_fault_filter)
    _raise_fd_limit()

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(config, addresses, stop, watch_config=watch_config, tls=tls)

    factory = loop_factory()
    logger.debug("event loop: %s", "uvloop" if factory is not None else "asyncio")
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(main())
    except OSError as exc:
        logger.error("cannot listen on %s: %s", ", ".join(map(str, addresses)), exc.strerror or exc)
        return 1
    return 0
