"""Small JSON files in ``stateDir``: read leniently, written whole and atomically, never through a link.

A write goes to a new temporary file beside the target (a random name, opened
with ``O_EXCL`` and ``O_NOFOLLOW``, mode 0600, in a folder made 0700) and is
renamed over it, so a reader never sees half a file and a planted symlink is
never followed (nor can one planted at a predictable name stop the write). A file that cannot
be read is treated as empty; a write that fails is logged, never raised: a
read-only state folder must not stop swapproxy from serving.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from pathlib import Path
from typing import Any

__all__ = ["read_json", "write_json"]

logger = logging.getLogger(__name__)


def read_json(path: Path | None) -> dict[str, Any]:
    """The JSON object in ``path``; {} when there is none, or it is unreadable (logged)."""
    if path is None:
        return {}
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        logger.warning("ignoring %s (unreadable: %s)", path, exc)
        return {}
    return data if isinstance(data, dict) else {}


def write_json(path: Path | None, data: Any) -> None:
    """Replace ``path`` with ``data`` as JSON, atomically; nothing when ``path`` is None."""
    if path is None:
        return
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(data, out)
        os.replace(tmp, path)  # replaces a link planted at the path, never its target
    except OSError as exc:
        logger.warning("cannot save %s: %s", path, exc)
        tmp.unlink(missing_ok=True)
