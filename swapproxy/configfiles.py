"""The config's files on disk: read them with a version, write one back atomically. Blocking I/O.

The version is a hash of every source's path and text, in merge order (the ``-c`` file,
then the ``--config-dir`` files by name): any edit made on disk, in any of them, changes it.
An API or UI change names the version it was made against; :mod:`swapproxy.configstore`
refuses it (409) when the files say otherwise, and :func:`write_text` checks once more,
just before the rename, that the file is still the text the change was made from.

A write is atomic and never goes through a link: a new file beside the target (random
name, ``O_EXCL | O_NOFOLLOW``, the target's mode and, where allowed, owner), written,
synced, renamed over the target, the folder synced. A target that is a symbolic link, or
whose mode has no write bit (an operator's ``chmod a-w``: honoured even for root), or whose
folder cannot take the new file (``/etc`` under systemd's ``ProtectSystem=strict``), is
:class:`NotWritable`, with the reason in words.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field

from .config.merge import config_files

__all__ = ["NotWritable", "Sources", "StaleFile", "read_sources", "version_of", "writable", "write_text"]


class NotWritable(OSError):
    """The file cannot be written; ``str()`` says why, for a person."""


class StaleFile(Exception):
    """The file changed on disk since the text an edit was made from was read."""


@dataclass(frozen=True)
class Sources:
    """The config's files in merge order: their text on disk, and the text in force (``texts``:
    the disk's, or a change kept in memory only)."""

    disk: Mapping[str, str]
    texts: Mapping[str, str]
    unsaved: frozenset[str] = field(default_factory=frozenset)

    @property
    def version(self) -> str:
        return version_of(self.texts)


def version_of(texts: Mapping[str, str]) -> str:
    """A short hash of every file's path and text (in path order: how they were listed does not count)."""
    digest = hashlib.sha256()
    for path, text in sorted(texts.items()):
        digest.update(path.encode() + b"\0" + text.encode("utf-8", "surrogateescape") + b"\0")
    return digest.hexdigest()[:16]


def _read(path: str) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        data = f.read()
    return data.decode("utf-8-sig", "surrogateescape")


def read_sources(path: str | None, config_dir: str | None, unsaved: Mapping[str, str]) -> Sources:
    """Every source file's text (a file only ``unsaved`` has is listed too); OSError if one is unreadable."""
    files = config_files(path, config_dir)
    files += [p for p in unsaved if p not in files]
    disk: dict[str, str] = {}
    for source in files:
        try:
            disk[source] = _read(source)
        except FileNotFoundError:
            if source not in unsaved:
                raise
    texts = {source: unsaved.get(source, disk.get(source, "")) for source in files}
    return Sources(disk, texts, frozenset(unsaved))


def writable(path: str) -> str | None:
    """Why ``path`` cannot be written (None when it can, as far as can be told without writing)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        return f"{path}: {exc.strerror or exc}"
    if st is not None:
        if stat.S_ISLNK(st.st_mode):
            return (f"{path} is a symbolic link; swapproxy never writes through one (start it with -c on the "
                    f"file the link points to)")
        if not stat.S_ISREG(st.st_mode):
            return f"{path} is not a regular file"
        if not st.st_mode & 0o222:
            return f"{path} is read-only (no write permission in its mode)"
    folder = os.path.dirname(path) or "."
    if not os.access(folder, os.W_OK):
        return f"its folder {folder} is not writable by swapproxy's user (a new file is renamed over it)"
    return None


def write_text(path: str, text: str, expected: str | None) -> None:
    """Replace ``path`` with ``text`` atomically; ``expected``: its text now (None: it must not exist).

    Raises :class:`NotWritable` (why, in words) or :class:`StaleFile` (it changed meanwhile)."""
    reason = writable(path)
    if reason is not None:
        raise NotWritable(reason)
    try:
        st: os.stat_result | None = os.lstat(path)
        current: str | None = _read(path)
    except FileNotFoundError:
        st, current = None, None
    if current != expected:
        raise StaleFile(path)
    folder = os.path.dirname(path) or "."
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{secrets.token_hex(6)}.tmp")
    mode = stat.S_IMODE(st.st_mode) if st is not None else 0o644
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(text.encode("utf-8", "surrogateescape"))
                out.flush()
                os.fchmod(out.fileno(), mode)
                if st is not None and (st.st_uid, st.st_gid) != (os.geteuid(), os.getegid()):
                    try:
                        os.fchown(out.fileno(), st.st_uid, st.st_gid)
                    except PermissionError:
                        pass  # the file becomes swapproxy's user's; its mode is kept
                os.fsync(out.fileno())
            os.replace(tmp, path)  # replaces a link planted at the path, never its target
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        _sync_folder(folder)
    except OSError as exc:
        if isinstance(exc, NotWritable):
            raise
        why = {errno.EROFS: "is on a read-only file system", errno.EACCES: "is not writable by swapproxy's user",
               errno.EPERM: "is not writable by swapproxy's user", errno.ENOSPC: "is on a full disk"}
        raise NotWritable(f"{path} {why.get(exc.errno or 0, f'cannot be written: {exc.strerror or exc}')}") from None


def _sync_folder(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
