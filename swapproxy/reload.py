"""Live config reload: SIGHUP or a changed file → validate → apply as a diff.

An invalid new config changes nothing: the old one keeps serving and the
problems (file:line: key: message) are logged and kept in :class:`ReloadState`
for ``/info`` and the UI. A valid one goes to :meth:`Scheduler.apply_config
<swapproxy.scheduler.Scheduler.apply_config>`, which keeps unchanged models
running (same PID); what counts as unchanged is :mod:`swapproxy.config_diff`'s. ``--watch-config`` polls the
file's size and mtime once a second — cheap, and it needs no dependency. With ``--config-dir``
the directory's files are read again and merged as at start; a file added, removed or changed
there is a change too. A change made through the API or the UI (:mod:`swapproxy.configstore`) is
validated the same way and applied by :meth:`Reloader.apply`, under the same lock.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .config import Config, ConfigError, load_config
from .scheduler import Scheduler

__all__ = ["Applied", "ReloadState", "Reloader"]

logger = logging.getLogger(__name__)


@dataclass
class ReloadState:
    """What the last reload did; shown by /info and the UI."""

    count: int = 0
    last_at: float | None = None  # wall time of the last attempt
    error: str | None = None  # the problems of the last attempt, if it failed
    report: dict[str, list[str]] = field(default_factory=dict)

    def as_json(self) -> dict[str, object]:
        return {"count": self.count, "last_at": self.last_at, "error": self.error, "report": self.report}


Applied = Callable[[Config, dict[str, list[str]]], None]


class Reloader:
    """Reloads ``path`` into ``scheduler``; one reload (or config edit) at a time, under :attr:`lock`.

    An edit through the API (:mod:`swapproxy.configstore`) is applied here too, by
    :meth:`apply` under the same lock: a SIGHUP never interleaves with one. ``unsaved``
    holds the texts of changes kept in memory only (``instances.onReadOnly: memory``); a
    reload from the files that succeeds drops them — the files are the truth.
    """

    def __init__(
        self,
        path: str | None,
        scheduler: Scheduler,
        state: ReloadState,
        on_begin: Callable[[], None] = lambda: None,
        on_end: Callable[[], None] = lambda: None,
        config_dir: str | None = None,
    ) -> None:
        self.path = path
        self.config_dir = config_dir
        self.scheduler = scheduler
        self.state = state
        self.on_begin = on_begin  # systemd's RELOADING=1 (set by swapproxy.server)
        self.on_end = on_end
        self.lock = asyncio.Lock()
        self.unsaved: dict[str, str] = {}  # file -> text in force but not written (onReadOnly: memory)
        self.listeners: list[Applied] = []  # told of every config applied, with what changed
        self._last: tuple[tuple[str, int, int] | None, ...] | None = None  # the files' stamps, for watch()

    async def reload(self) -> bool:
        """Validate and apply the files; False (and nothing changed) if they are invalid."""
        async with self.lock:
            self.on_begin()
            try:
                return await self._reload()
            finally:
                self.on_end()

    async def _reload(self) -> bool:
        began = time.time()
        try:
            new = await asyncio.to_thread(load_config, self.path, None, self.scheduler.config, self.config_dir)
        except ConfigError as err:
            for problem in err.problems:
                logger.error("reload refused, the running config stays: %s", problem)
            self._record(began, str(err), {})
            return False
        for notice in new.notices:
            logger.info("notice: %s", notice)
        if self.unsaved:
            logger.warning("reload: the change(s) to %s kept in memory only are dropped; the files are the "
                           "config now", ", ".join(self.unsaved))
            self.unsaved.clear()
        await self._apply(new, began)
        return True

    async def apply(self, new: Config) -> dict[str, list[str]]:
        """Apply a config validated elsewhere (an edit) as a diff; the caller holds :attr:`lock`."""
        self.on_begin()
        try:
            return await self._apply(new, time.time())
        finally:
            self.on_end()

    async def _apply(self, new: Config, began: float) -> dict[str, list[str]]:
        report = await self.scheduler.apply_config(new)
        self._record(began, None, report)
        self._last = self._stamp()  # a file an edit just wrote is not a change for watch() to reload
        for listener in self.listeners:
            listener(new, report)
        return report

    def _record(self, began: float, error: str | None, report: dict[str, list[str]]) -> None:
        """Publish a finished reload all at once: a reader never sees half of one."""
        self.state.last_at, self.state.error, self.state.report = began, error, report
        self.state.count += 1

    async def watch(self, interval: float = 1.0, settle: float = 0.2) -> None:
        """Reload whenever the file's size or mtime changes (runs until cancelled).

        A change is acted on once the file has held still for ``settle`` seconds,
        so an editor caught between truncating and writing is not read half-done.
        """
        self._last = self._stamp()
        while True:
            await asyncio.sleep(interval)
            stamp = self._stamp()
            if stamp == self._last:
                continue
            while True:
                await asyncio.sleep(settle)
                again = self._stamp()
                if again == stamp:
                    break
                stamp = again
            self._last = stamp
            logger.info("%s changed: reloading", self.path or self.config_dir)
            await self.reload()

    def _stamp(self) -> tuple[tuple[str, int, int] | None, ...]:
        """The size and mtime of every source (and, with a directory, which files it holds)."""
        paths = [self.path] if self.path is not None else []
        if self.config_dir is not None:
            try:
                paths += sorted(os.path.join(self.config_dir, e.name) for e in os.scandir(self.config_dir)
                                if e.name.endswith((".yml", ".yaml")))
            except OSError:
                paths.append(self.config_dir)
        return tuple(_stamp(path) for path in paths)


def _stamp(path: str) -> tuple[str, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (path, st.st_mtime_ns, st.st_size)
