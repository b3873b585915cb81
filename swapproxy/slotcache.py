"""Conversations that survive a swap: llama-server's slots saved before a stop, restored after a start.

For a model with ``slotCache: true``, swapproxy runs llama-server with
``--slot-save-path`` set to a folder of its own (``stateDir/slots/<key>/``,
mode 0700; the key is a digest of the model id, never client input). Before a
graceful stop (a swap, a TTL, a plain unload — not a crash, not a forced
unload) it saves every slot that holds tokens (``POST /slots/{id}?action=save``),
within ``saveTimeout``: a save that fails or hangs is logged and never holds
the stop longer. After the next start of the same command it restores them
(``?action=restore``) before the requests that waited are let in; a changed
command discards them. The next response on the model says whether the restore
took (its ``timings.cache_n``): a hit or a miss. Files of all models share a
disk budget (``slotCache.budget``; the oldest go first) and go with their model
when a reload removes it; they survive a restart of swapproxy.

Sliding-window models (gemma-3's local layers) keep only a window of the cache
unless llama-server runs with ``--swa-full``; without it a restored slot holds
the tokens, but llama-server cannot reuse them and processes the prompt again.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote

import aiohttp

from .config import Config, ModelConfig
from .errors import SlotFilesManaged
from .learned import command_key
from .processes import ProcessLike
from .statejson import read_json, write_json

__all__ = ["SlotCache", "META_FILE", "is_slot_file_action"]

logger = logging.getLogger(__name__)

META_FILE = "slots.json"
#: The longest a restore after a start may take (reading files back is fast: ms per GB here).
RESTORE_TIMEOUT = 60.0


_SLOT_PATH = re.compile(r"/+slots/+[^/]+/*")


def is_slot_file_action(method: str, raw_path: str, raw_query: str) -> bool:
    """Whether a request to a llama-server saves or restores a slot's file (raw, still encoded, parts).

    Every ``action`` in the query counts (a server may read the first or the last).
    """
    if method.upper() != "POST" or _SLOT_PATH.fullmatch(unquote(raw_path)) is None:
        return False
    actions = [v.strip().lower() for k, v in parse_qsl(raw_query, keep_blank_values=True) if k == "action"]
    return any(a in ("save", "restore") for a in actions)


def _folder_key(model_id: str) -> str:
    return hashlib.sha256(model_id.encode()).hexdigest()[:16]


class SlotCache:
    """The saved slots of every model with ``slotCache``; counts saves, restores, hits and misses."""

    def __init__(self, config: Callable[[], Config], session: Callable[[], aiohttp.ClientSession]) -> None:
        self._config = config
        self._session = session
        self.counts: dict[tuple[str, str, str], int] = {}  # (model, action, result) -> how many
        self._verify: set[str] = set()  # models whose next response tells whether a restore took
        self.last: dict[str, dict[str, Any]] = {}  # model -> the last save/restore, for /running

    # -- where -----------------------------------------------------------------------------------
    def root(self) -> Path | None:
        state_dir = self._config().state_dir
        return Path(state_dir) / "slots" if state_dir else None

    def folder(self, spec: ModelConfig) -> Path | None:
        root = self.root()
        return root / _folder_key(spec.id) if root is not None and spec.slot_cache else None

    def argv(self, spec: ModelConfig) -> list[str]:
        """What swapproxy adds to the model's command: ``--slot-save-path`` (when the model asks)."""
        folder = self.folder(spec)
        if folder is None:
            return []
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(folder, 0o700)
        return ["--slot-save-path", f"{folder}{os.sep}"]

    def manages(self, spec: ModelConfig) -> bool:
        """Whether clients must keep away from this model's slot save and restore."""
        return spec.slot_cache and self.root() is not None

    def guard(self, spec: ModelConfig, method: str, raw_path: str, raw_query: str) -> None:
        """Refuse (403) a client's slot save or restore on a model whose slot files swapproxy keeps:
        it would overwrite them, or pass the disk budget. Erasing a slot stays allowed."""
        if self.manages(spec) and is_slot_file_action(method, raw_path, raw_query):
            raise SlotFilesManaged(f"model {spec.id} has slotCache on: swapproxy saves and restores its slots "
                                   "itself, so clients may not (erase is allowed)")

    # -- talking to llama-server ----------------------------------------------------------------
    async def _call(self, spec: ModelConfig, method: str, path: str, body: Any = None) -> Any:
        headers = {"Authorization": f"Bearer {spec.upstream_api_key}"} if spec.upstream_api_key else {}
        async with self._session().request(method, spec.proxy + path, json=body, headers=headers) as resp:
            data = await resp.json(content_type=None)
            if resp.status != 200:
                raise RuntimeError(f"{method} {path}: {resp.status} {str(data)[:200]}")
            return data

    def _count(self, model: str, action: str, result: str) -> None:
        key = (model, action, result)
        self.counts[key] = self.counts.get(key, 0) + 1

    # -- save ------------------------------------------------------------------------------------------
    async def save(self, proc: ProcessLike) -> None:
        """Save every slot that holds tokens, within the model's ``saveTimeout``; never raises."""
        spec = proc.spec
        folder = self.folder(spec)
        if folder is None:
            return
        began = time.monotonic()
        try:
            async with asyncio.timeout(spec.slot_save_timeout):
                saved = await self._save_all(spec, folder)
        except (TimeoutError, asyncio.TimeoutError):
            logger.warning("%s: saving its slots took longer than %gs; stopping it without", spec.id,
                           spec.slot_save_timeout)
            self._count(spec.id, "save", "timeout")
            self.last[spec.id] = {"action": "save", "result": "timeout", "at": time.time()}
            return
        except Exception as exc:  # the server's answer, the connection, the disk: logged, never fatal
            logger.warning("%s: saving its slots failed: %s", spec.id, exc)
            self._count(spec.id, "save", "failed")
            self.last[spec.id] = {"action": "save", "result": "failed", "at": time.time(), "error": str(exc)}
            return
        write_json(folder / META_FILE, {"model": spec.id, "command": command_key(spec), "saved": saved,
                                        "at": time.time()})
        tokens = sum(s["tokens"] for s in saved)
        logger.info("%s: saved %d slot(s), %d token(s), in %.2fs", spec.id, len(saved), tokens,
                    time.monotonic() - began)
        self._count(spec.id, "save", "ok")
        self.last[spec.id] = {"action": "save", "result": "ok", "at": time.time(), "slots": len(saved),
                              "tokens": tokens, "seconds": round(time.monotonic() - began, 3)}
        self.prune()

    async def _save_all(self, spec: ModelConfig, folder: Path) -> list[dict[str, Any]]:
        saved = []
        for slot in await self._call(spec, "GET", "/slots"):
            sid = slot.get("id")
            if not isinstance(sid, int) or slot.get("is_processing"):
                continue  # (a graceful stop comes after the drain: nothing should be processing)
            name = f"slot-{sid}.bin"
            answer = await self._call(spec, "POST", f"/slots/{sid}?action=save", {"filename": name})
            if answer.get("n_saved", 0) > 0:
                saved.append({"id": sid, "file": name, "tokens": int(answer["n_saved"])})
            else:
                (folder / name).unlink(missing_ok=True)
        for stale in folder.glob("slot-*.bin"):  # slots saved before that hold nothing now
            if stale.name not in {s["file"] for s in saved}:
                stale.unlink(missing_ok=True)
        return saved

    # -- restore -----------------------------------------------------------------------------------
    async def restore(self, proc: ProcessLike) -> None:
        """After a start, before anyone is let in: load the saved slots back (same command only)."""
        spec = proc.spec
        self._verify.discard(spec.id)  # (a check still pending from an earlier start is moot)
        folder = self.folder(spec)
        meta = read_json(folder / META_FILE) if folder is not None else {}
        if folder is None or not meta.get("saved"):
            return
        if meta.get("command") != command_key(spec):
            logger.info("%s: its command changed since its slots were saved: discarding them", spec.id)
            self.discard(folder)
            self._count(spec.id, "restore", "discarded")
            return
        kept = [e for e in meta["saved"] if isinstance(e, dict) and (folder / str(e.get("file"))).is_file()]
        if not kept:  # dropped for the disk budget since
            logger.info("%s: its saved slots were dropped (slotCache.budget): starting without", spec.id)
            self._count(spec.id, "restore", "dropped")
            return
        began = time.monotonic()
        try:
            async with asyncio.timeout(RESTORE_TIMEOUT):
                tokens = 0
                for entry in kept:
                    answer = await self._call(spec, "POST", f"/slots/{int(entry['id'])}?action=restore",
                                              {"filename": str(entry["file"])})
                    tokens += int(answer.get("n_restored", 0))
        except Exception as exc:  # a missing file, an old format, a slow disk: start without them
            logger.warning("%s: restoring its slots failed: %s", spec.id, exc)
            self._count(spec.id, "restore", "failed")
            self.last[spec.id] = {"action": "restore", "result": "failed", "at": time.time(), "error": str(exc)}
            return
        logger.info("%s: restored %d slot(s), %d token(s), in %.2fs", spec.id, len(kept), tokens,
                    time.monotonic() - began)
        self._count(spec.id, "restore", "ok")
        self.last[spec.id] = {"action": "restore", "result": "ok", "at": time.time(), "tokens": tokens,
                              "seconds": round(time.monotonic() - began, 3)}
        self._verify.add(spec.id)

    def observe(self, model: str, cache_n: int | None) -> None:
        """The first response after a restore: its ``timings.cache_n`` says whether the cache was reused."""
        if model in self._verify and cache_n is not None:
            self._verify.discard(model)
            self._count(model, "reuse", "hit" if cache_n > 0 else "miss")
            if model in self.last:
                self.last[model]["reused_tokens"] = cache_n

    def awaits(self, model: str) -> bool:
        return model in self._verify

    def model_json(self, spec: ModelConfig) -> dict[str, Any] | None:
        """What ``/running?details=1`` shows of a model's saved slots (None without slotCache)."""
        folder = self.folder(spec)
        if folder is None:
            return None
        meta = read_json(folder / META_FILE)
        saved = [s for s in meta.get("saved", []) if isinstance(s, dict) and (folder / str(s.get("file"))).is_file()]
        counts = {f"{action}_{result}": n for (mid, action, result), n in sorted(self.counts.items()) if mid == spec.id}
        return {"slots": len(saved), "tokens": sum(int(s.get("tokens", 0)) for s in saved),
                "bytes": sum((folder / str(s["file"])).stat().st_size for s in saved),
                "saved_at": meta.get("at") if saved else None, "last": self.last.get(spec.id), "counts": counts}

    # -- disk ---------------------------------------------------------------------------------------
    def discard(self, folder: Path) -> None:
        for item in folder.glob("slot-*.bin"):
            item.unlink(missing_ok=True)
        (folder / META_FILE).unlink(missing_ok=True)

    def usage(self) -> dict[str, int]:
        """Bytes of saved slot files per model (those the config still has)."""
        out = {}
        for spec in self._config().models.values():
            folder = self.folder(spec)
            if folder is not None and folder.is_dir():
                out[spec.id] = sum(f.stat().st_size for f in folder.glob("slot-*.bin"))
        return out

    def prune(self) -> None:
        """Drop the oldest slot files until all fit ``slotCache.budget``."""
        root = self.root()
        if root is None or not root.is_dir():
            return
        files = sorted(root.glob("*/slot-*.bin"), key=lambda f: f.stat().st_mtime)
        total = sum(f.stat().st_size for f in files)
        budget = self._config().slot_cache_budget
        while files and total > budget:
            oldest = files.pop(0)
            total -= oldest.stat().st_size
            logger.info("slot cache over its budget: dropping %s", oldest)
            oldest.unlink(missing_ok=True)

    def forget_removed(self) -> None:
        """Delete the folders of models the config no longer has (or that no longer ask for it)."""
        root = self.root()
        if root is None or not root.is_dir():
            return
        keep = {_folder_key(spec.id) for spec in self._config().models.values() if spec.slot_cache}
        for folder in root.iterdir():
            if folder.is_dir() and not folder.is_symlink() and folder.name not in keep:
                logger.info("removing the saved slots of a model no longer configured (%s)", folder.name)
                shutil.rmtree(folder, ignore_errors=True)
