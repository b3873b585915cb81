"""What a loaded llama-server says about itself: ``GET /props``, asked once each time a model is ready.

Two facts are kept: the context size the server really runs with
(``default_generation_settings.n_ctx``), listed in ``/v1/models`` while the
model is loaded; and the model name its own chunks carry (``model_alias``:
its ``--alias``, else the model file's path), which the loading state's chunks
use so that a client records one model name whether the model was cold or warm.
The name is kept after the model stops, for as long as its command is the same.

An upstream that is not a llama-server (no ``/props``, another shape) simply
has neither; nothing here ever holds a request up.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp

from ..background import Background
from ..config import ModelConfig
from ..processes import ProcessLike
from ..redact import redact_url
from ..states import ProcessState

__all__ = ["UpstreamProps", "FETCH_TIMEOUT"]

logger = logging.getLogger(__name__)

#: Seconds a ready server gets to answer ``GET /props``.
FETCH_TIMEOUT = 5.0


class UpstreamProps:
    """``/props`` facts per running process, and the upstream model name per model and command."""

    def __init__(self, session: aiohttp.ClientSession, background: Background) -> None:
        self._session = session
        self._background = background
        self._context: dict[ProcessLike, int] = {}  # while the process is ready
        self._names: dict[tuple[str, tuple[str, ...]], str] = {}  # (model id, cmd) -> its model_alias

    def context(self, proc: ProcessLike) -> int | None:
        """The context size ``proc`` runs with (llama-server's ``n_ctx``), while it is ready."""
        return self._context.get(proc)

    def name(self, spec: ModelConfig) -> str | None:
        """The model name ``spec``'s server put in its chunks when it last ran (this command)."""
        return self._names.get((spec.id, spec.cmd))

    def on_state(self, proc: ProcessLike, old: ProcessState, new: ProcessState) -> None:
        """The state listener: ask a server that just became ready; forget one that is not any more."""
        if new is ProcessState.READY:
            self._background.spawn(self._fetch(proc))
        elif old is ProcessState.READY:
            self._context.pop(proc, None)

    async def _fetch(self, proc: ProcessLike) -> None:
        spec = proc.spec
        headers = {"Authorization": f"Bearer {spec.upstream_api_key}"} if spec.upstream_api_key else None
        try:
            async with asyncio.timeout(FETCH_TIMEOUT):
                async with self._session.get(spec.proxy + "/props", headers=headers) as resp:
                    if resp.status != 200:
                        return
                    data = await resp.json(content_type=None)
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            logger.debug("%s: no /props from %s: %r", proc.name, redact_url(spec.proxy), exc)
            return
        if proc.state is not ProcessState.READY or not isinstance(data, dict):
            return  # stopped meanwhile, or not a llama-server
        n_ctx = _positive_int(_dig(data, "default_generation_settings", "n_ctx") or data.get("n_ctx"))
        if n_ctx is not None:
            self._context[proc] = n_ctx
        alias = data.get("model_alias")
        if isinstance(alias, str) and alias:
            self._names[(spec.id, spec.cmd)] = alias


def _dig(data: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)  # type: ignore[assignment]
    return data


def _positive_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None
