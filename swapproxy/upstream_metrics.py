"""The running upstreams' own ``/metrics``, re-exposed in swapproxy's with a ``model`` label.

llama-server started with ``--metrics`` counts its prompt and generated tokens, its
throughput and its busy slots (``llamacpp:*``); vLLM and others have their own. So
that one Prometheus target sees every model, a scrape of swapproxy's ``/metrics``
appends each ready model's figures, every sample labelled ``model="<id>"`` (an
upstream's own ``model`` label becomes ``exported_model``, as Prometheus' own
federation renames it), each family's HELP and TYPE written once.

A scrape never waits on a busy upstream (llama-server answers ``/metrics`` from its
task queue, behind the batch it is decoding): figures younger than :data:`FRESH`
seconds are served as they are; older ones are served too while a refresh runs in
the background; only a model with nothing fetched yet is waited for, up to
:data:`TIMEOUT`. An upstream that has no metrics (llama-server without
``--metrics`` answers 501) is asked again only after :data:`RETRY_UNSUPPORTED`
seconds, or when its process changes.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from .config import ModelConfig
from .exposition import label_text

__all__ = ["UpstreamMetrics", "relabel", "FRESH", "TIMEOUT", "RETRY_UNSUPPORTED"]

logger = logging.getLogger(__name__)

#: Seconds an upstream's figures are served without asking it again.
FRESH = 2.0
#: Seconds a scrape waits for a model whose figures were never fetched.
TIMEOUT = 0.5
#: Seconds before an upstream without metrics is asked again.
RETRY_UNSUPPORTED = 60.0
#: Bytes of an upstream's metrics text read at most (a runaway one is left out).
MAX_BYTES = 1 << 20

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_THEIR_MODEL = re.compile(r'(^|,)(\s*)model(\s*=)')


@dataclass
class Family:
    """One metric family of an upstream: its HELP and TYPE lines, its samples (labelled already)."""

    name: str
    help: str | None = None
    type: str | None = None
    samples: list[str] = field(default_factory=list)


def relabel(text: str, model: str) -> list[Family]:
    """Parse Prometheus text and give every sample the label ``model`` (theirs becomes
    ``exported_model``); lines that are not samples, HELP or TYPE are dropped."""
    families: dict[str, Family] = {}
    current: Family | None = None
    ours = label_text(("model",), (model,))  # '{model="..."}'
    for line in text.splitlines():
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            parts = line[7:].split(" ", 1)
            current = families.setdefault(parts[0], Family(parts[0]))
            if line.startswith("# HELP "):
                current.help = line
            else:
                current.type = line
            continue
        if not line.strip() or line.startswith("#"):
            continue
        match = _NAME.match(line)
        if match is None:
            continue
        name, rest = match.group(), line[match.end():]
        if rest.startswith("{"):
            labels = _THEIR_MODEL.sub(r"\1\2exported_model\3", rest[1:])
            sample = f"{name}{ours[:-1]},{labels}" if not labels.startswith("}") else f"{name}{ours}{labels[1:]}"
        else:
            sample = f"{name}{ours}{rest}"
        family = current if current is not None and name.startswith(current.name) else None
        if family is None:  # a sample with no HELP or TYPE of its own
            family = families.setdefault(name, Family(name))
        family.samples.append(sample)
    return list(families.values())


def render(per_model: Iterable[list[Family]]) -> str:
    """The families of all models, each family's samples together, its HELP and TYPE once."""
    merged: dict[str, Family] = {}
    for families in per_model:
        for family in families:
            into = merged.setdefault(family.name, Family(family.name, family.help, family.type))
            into.samples.extend(family.samples)
    out = []
    for family in merged.values():
        if not family.samples:
            continue
        out.extend(line for line in (family.help, family.type) if line is not None)
        out.extend(family.samples)
    return "\n".join(out) + "\n" if out else ""


@dataclass
class _Reading:
    pid: int
    at: float
    families: list[Family] | None  # None: the upstream has no metrics ([]: none fetched yet)


class UpstreamMetrics:
    """Fetches and keeps the running models' metrics for the scrapes."""

    def __init__(self, session: Callable[[], aiohttp.ClientSession],
                 spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]]) -> None:
        self._session = session
        self._spawn = spawn  # the app's background tasks: cancelled at shutdown
        self._readings: dict[str, _Reading] = {}
        self._refreshing: dict[str, asyncio.Task[None]] = {}

    async def text(self, running: list[tuple[ModelConfig, int]]) -> str:
        """The running models' metrics, relabelled, for one scrape."""
        now = time.monotonic()
        wait: list[asyncio.Task[None]] = []
        for spec, pid in running:
            reading = self._readings.get(spec.id)
            if reading is not None and reading.pid == pid:
                age = now - reading.at
                if age < (FRESH if reading.families is not None else RETRY_UNSUPPORTED):
                    continue
                self._refresh(spec, pid)  # served stale meanwhile
            else:
                self._readings.pop(spec.id, None)
                wait.append(self._refresh(spec, pid))
        if wait:
            await asyncio.wait(wait, timeout=TIMEOUT)
        live = {spec.id: pid for spec, pid in running}
        for model in [m for m in self._readings if m not in live]:
            del self._readings[model]  # stopped: its figures go with it
        return render(r.families for m, r in self._readings.items() if r.families and r.pid == live.get(m))

    def _refresh(self, spec: ModelConfig, pid: int) -> asyncio.Task[None]:
        task = self._refreshing.get(spec.id)
        if task is None or task.done():
            task = self._refreshing[spec.id] = self._spawn(self._fetch(spec, pid))
        return task

    async def _fetch(self, spec: ModelConfig, pid: int) -> None:
        headers = {"Authorization": f"Bearer {spec.upstream_api_key}"} if spec.upstream_api_key else {}
        before = self._readings.get(spec.id)
        families: list[Family] | None = before.families if before is not None and before.pid == pid else []
        try:
            async with self._session().get(spec.proxy + "/metrics", headers=headers,
                                           timeout=aiohttp.ClientTimeout(total=10)) as resp:
                if resp.status == 200 and resp.content_type.startswith("text/"):
                    families = relabel((await resp.content.read(MAX_BYTES)).decode("utf-8", "replace"), spec.id)
                elif resp.status in (404, 405, 501) or resp.status == 200:
                    families = None  # no metrics there (llama-server without --metrics: 501)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:  # busy or going: keep what we had
            logger.debug("%s: no metrics from the upstream this time: %s", spec.id, exc)
        self._readings[spec.id] = _Reading(pid, time.monotonic(), families)
