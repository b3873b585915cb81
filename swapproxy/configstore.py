"""Config changes made through the API and the UI: validated like a reload, written back, applied as a diff.

The files stay the truth. A change is made on the text of a file as it is on disk now
(:mod:`swapproxy.configfiles`); if the caller names the version it saw and the files no
longer have it (an edit made on disk meanwhile), the change is refused with 409, never
written over it. In order, under the :class:`~swapproxy.reload.Reloader`'s lock (a SIGHUP
never interleaves):

1. read every source file; check the version the change names, if it names one;
2. change the text of one file (:mod:`swapproxy.config.edit` keeps the rest of it as it was);
3. validate the files as they would be, with that text in place — :func:`load_config`, the
   same code, messages and ``file:line`` as a reload; an invalid change is a 400 with the
   problems, and nothing is written;
4. write the file atomically (refused with 409 if it changed on disk since step 1). A file
   that cannot be written refuses the change (403, saying why), unless the config says
   ``instances.onReadOnly: memory``: then the change is applied in memory only, said so in
   the answer, and kept until the next reload from the files or restart;
5. apply the new config as a reload applies one: unchanged models keep running, same PID.

``instances.edits: false`` refuses every change (403). Which file: a model's update or delete
goes to the file that defines it; a new model to ``instances.file`` (a name in
``--config-dir``), else the ``-c`` file, else ``<config-dir>/instances.yaml``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

from .config import Config, ConfigError, load_config
from .config.edit import EditError, model_ids
from .configfiles import NotWritable, Sources, StaleFile, read_sources, version_of, writable, write_text
from .errors import BadRequest, ConfigChanged, ConfigInvalid, ConfigReadOnly, Conflict, NotFound, SwapProxyError
from .reload import Reloader

__all__ = ["ConfigStore", "Edited", "FileView", "NEW_FILE"]

logger = logging.getLogger(__name__)

#: With --config-dir and no -c file, new models go to this file of the directory (unless instances.file).
NEW_FILE = "instances.yaml"

Change = Callable[[str], str]


@dataclass(frozen=True)
class Edited:
    """What a change did: the files' new version, the diff applied, and whether it was written."""

    version: str
    file: str
    report: dict[str, list[str]]
    saved: bool  # False: applied in memory only (instances.onReadOnly: memory)
    reason: str | None = None  # why it was not written


@dataclass(frozen=True)
class FileView:
    """One source file as the config view shows it."""

    path: str
    text: str
    writable: str | None  # why it cannot be written; None when it can
    unsaved: bool  # its text in force was changed in memory only

    def as_json(self) -> dict[str, object]:
        return {"path": self.path, "text": self.text, "writable": self.writable is None,
                "read_only_reason": self.writable, "unsaved": self.unsaved}


def _stale(version: str, now: str) -> ConfigChanged:
    return ConfigChanged(f"the config changed since version {version} (it is {now} now): an edit was made on disk "
                         "meanwhile; read it again and make your change on it")


class ConfigStore:
    """The config's files and every change to them; one per app."""

    def __init__(self, reloader: Reloader) -> None:
        self.reloader = reloader

    @property
    def config(self) -> Config:
        return self.reloader.scheduler.config

    @property
    def has_files(self) -> bool:
        """Whether the config came from files at all (a test may build one from text)."""
        path = self.reloader.path
        return self.reloader.config_dir is not None or (path is not None and os.path.isfile(path))

    def _read(self, unsaved: dict[str, str]) -> Sources:
        if not self.has_files:
            raise SwapProxyError(f"the config was not read from a file ({self.config.file}): there is nothing to "
                                 "change it in")
        try:
            return read_sources(self.reloader.path, self.reloader.config_dir, unsaved)
        except (OSError, ConfigError) as exc:
            raise SwapProxyError(f"cannot read the config files: {exc}") from None

    async def sources(self) -> Sources:
        """Every source file's text now (those kept in memory only as they are in force)."""
        return await asyncio.to_thread(self._read, dict(self.reloader.unsaved))  # a copy: read in a thread

    async def files(self) -> tuple[str, list[FileView]]:
        """The version and every source file, for the config view."""
        src = await self.sources()
        views = await asyncio.to_thread(lambda: [FileView(p, t, writable(p), p in src.unsaved)
                                                 for p, t in src.texts.items()])
        return src.version, views

    def owner(self, src: Sources, model_id: str) -> str | None:
        """The file that defines ``model_id`` (None: none does)."""
        for path, text in src.texts.items():
            try:
                if model_id in model_ids(text):
                    return path
            except EditError:
                continue
        return None

    def new_model_file(self) -> str:
        """Where a new model is written (module docstring)."""
        config_dir = self.reloader.config_dir
        name = self.config.instances.file
        if config_dir is not None and name is not None:
            return os.path.join(config_dir, name)
        if self.reloader.path is not None:
            return self.reloader.path
        assert config_dir is not None
        return os.path.join(config_dir, NEW_FILE)

    async def change_model(self, model_id: str, change: Change, *, version: str | None,
                           new: bool) -> Edited:
        """Apply ``change`` to the text of the file that defines ``model_id`` (``new``: the file new
        models go to)."""
        async with self.reloader.lock:
            src = await self.sources()
            if version is not None and version != src.version:
                raise _stale(version, src.version)
            owner = await asyncio.to_thread(self.owner, src, model_id)
            if new and owner is not None:
                raise Conflict(f"instance '{model_id}' already exists (in {owner})")
            if not new and owner is None:
                raise NotFound(f"instance '{model_id}' not found: no config file defines it")
            path = self.new_model_file() if new else owner
            assert path is not None
            try:
                text = await asyncio.to_thread(change, src.texts.get(path, ""))
            except EditError as exc:
                raise BadRequest(f"{path}: {exc}") from None
            return await self._commit(src, path, text)

    async def replace_file(self, path: str, text: str, version: str) -> Edited:
        """Replace one source file's whole text (the config view's save)."""
        async with self.reloader.lock:
            src = await self.sources()
            if path not in src.texts:
                raise BadRequest(f"{path} is not one of the config's files ({', '.join(src.texts)})", param="path")
            if version != src.version:
                raise _stale(version, src.version)
            return await self._commit(src, path, text)

    async def _commit(self, src: Sources, path: str, text: str) -> Edited:
        """Steps 3 to 5 of the module docstring; the caller holds the lock."""
        reloader = self.reloader
        if not self.config.instances.edits:
            raise ConfigReadOnly("changes to the config through the API and the UI are turned off "
                                 "(instances.edits: false); edit the file and reload it")
        texts = {**src.texts, path: text}
        try:
            new = await asyncio.to_thread(load_config, reloader.path, None, self.config, reloader.config_dir, texts)
        except ConfigError as err:
            raise ConfigInvalid(str(err), [dataclasses.asdict(p) for p in err.problems]) from None
        saved, reason = True, None
        try:
            await asyncio.to_thread(write_text, path, text, src.disk.get(path))
            reloader.unsaved.pop(path, None)
        except StaleFile:
            raise ConfigChanged(f"{path} changed on disk while the change was being made; read it again and make "
                                "your change on it") from None
        except NotWritable as exc:
            if new.instances.on_read_only != "memory":
                raise ConfigReadOnly(f"the change is valid but {exc}; nothing was changed. Make the file writable "
                                     "by swapproxy, or set instances.onReadOnly: memory to apply changes in "
                                     "memory only") from None
            saved, reason = False, str(exc)
            reloader.unsaved[path] = text
        if saved:
            logger.info("config changed through the API: %s written", path)
        else:
            logger.warning("config changed through the API: kept in memory only, %s", reason)
        report = await reloader.apply(new)
        return Edited(version_of(texts), path, report, saved, reason)
