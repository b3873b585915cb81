"""Peers' health: probed in the background, so a request for a peer that is down fails at once.

llama-swap forwards to a peer blindly and answers 502 once the connection fails (after its
connect timeout, 30 s by default, when the host is gone). :class:`PeerMonitor` probes every
peer every :data:`PROBE_INTERVAL` seconds (every :data:`DOWN_INTERVAL` while one is down), and
a request that fails to connect marks its peer down at once; a request for a peer known to be
down gets 503 with ``Retry-After`` without trying (:mod:`swapproxy.web.peer`).

A probe also learns which of the peer's models are loaded, for ``warm`` selectors (a target
loaded on some host beats one that must start). Where from, learnt on the first probe that
reaches the peer and kept while it stays up:

1. ``GET /v1/models`` whose entries carry a ``status`` (swapproxy, llama-swap, llama-server's
   router mode): ``loaded``, ``loading``, ``unloaded``; an entry's ``aliases`` (swapproxy) or
   ``meta.llamaswap.aliases`` (llama-swap) name it too. An inference key is enough to read it;
2. else ``GET /running`` (``{"running": [ids]}`` as swapproxy writes it, or llama-swap's
   ``[{"model", "state"}]``);
3. else nothing can be read (a plain llama-server, a hosted API): the peer's models count as
   loaded while it answers, and later probes only ask ``GET /health`` (any HTTP answer is up).

The parsing is pure (:func:`loaded_from_models`, :func:`loaded_from_running`); the
monitor's only I/O is the probes, on the app's shared client session, with the peer's key.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp

from .config import Config, PeerConfig, PeerRoute
from .redact import redact_url
from .selectors import TargetStatus
from .states import ProcessState

__all__ = ["PROBE_INTERVAL", "DOWN_INTERVAL", "PeerHealth", "PeerMonitor", "loaded_from_models",
           "loaded_from_running", "peer_headers"]

logger = logging.getLogger(__name__)

#: Seconds between probes of a peer that is up, and of one that is down (it comes back sooner).
PROBE_INTERVAL, DOWN_INTERVAL = 2.0, 1.0
#: The longest a probe may take: connecting, and in all.
PROBE_CONNECT, PROBE_TOTAL = 2.0, 5.0
#: The status a peer model's load reads as (a model the peer lists and runs, or starts).
_LOADED, _LOADING = "loaded", "loading"
Loaded = tuple[frozenset[str], frozenset[str]]  # (loaded, loading) model names


@dataclass(frozen=True)
class PeerHealth:
    """What the last probe (or request) saw of one peer."""

    up: bool | None = None  # None: not probed yet (requests are let through meanwhile)
    loaded: frozenset[str] = frozenset()  # its model names that are loaded...
    loading: frozenset[str] = frozenset()  # ... and those starting
    source: str | None = None  # where their state is read: "models", "running", or "listed" (none)
    checked_at: float | None = None  # wall time of the last probe
    latency_ms: float | None = None
    error: str | None = None  # why it is down
    since: float = field(default_factory=time.time)  # wall time ``up`` last changed

    def state(self, model: str) -> ProcessState:
        """The peer model's state as a selector reads a local one."""
        if model in self.loaded:
            return ProcessState.READY
        return ProcessState.STARTING if model in self.loading else ProcessState.STOPPED

    def as_json(self, peer: PeerConfig) -> dict[str, Any]:
        return {"proxy": redact_url(peer.proxy), "up": self.up, "since": self.since, "checked_at": self.checked_at,
                "latency_ms": self.latency_ms, "error": self.error, "source": self.source,
                "models": {m: self.state(m).value if self.up is not False else "unreachable" for m in peer.models}}


def peer_headers(peer: PeerConfig) -> dict[str, str]:
    """The peer's own key, as it is sent with every request to it."""
    key = peer.api_key
    return {"Authorization": f"Bearer {key}", "x-api-key": key} if key else {}


def loaded_from_models(body: Any, models: tuple[str, ...]) -> Loaded | None:
    """Which of ``models`` a ``/v1/models`` answer says are loaded and loading; None when its entries
    carry no status at all (a server that cannot say)."""
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list):
        return None
    loaded: set[str] = set()
    loading: set[str] = set()
    seen_status = False
    for entry in data:
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
            continue
        status = entry.get("status")
        value = status.get("value") if isinstance(status, dict) else None
        seen_status |= isinstance(value, str)
        meta = entry.get("meta")
        names = [entry["id"], *_strings(entry.get("aliases")),
                 *_strings(meta.get("llamaswap", {}).get("aliases") if isinstance(meta, dict)
                           and isinstance(meta.get("llamaswap"), dict) else None)]
        target = loaded if value == _LOADED else loading if value == _LOADING else None
        if target is not None:
            target.update(n for n in names if n in models)
    return (frozenset(loaded), frozenset(loading)) if seen_status else None


def loaded_from_running(body: Any, models: tuple[str, ...]) -> Loaded | None:
    """Which of ``models`` a ``/running`` answer lists (swapproxy: ids of models starting or ready;
    llama-swap: objects with ``model`` and ``state``); None when it is not such an answer."""
    running = body.get("running") if isinstance(body, dict) else None
    if not isinstance(running, list):
        return None
    loaded: set[str] = set()
    loading: set[str] = set()
    for item in running:
        if isinstance(item, str):
            loaded.add(item)
        elif isinstance(item, dict) and isinstance(item.get("model"), str):
            (loading if item.get("state") == "starting" else loaded).add(item["model"])
    keep = set(models)
    return frozenset(loaded & keep), frozenset(loading & keep)


def _strings(value: Any) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


class PeerMonitor:
    """Every peer's :class:`PeerHealth`: probed in the background, marked down by failed requests."""

    def __init__(self) -> None:
        self._health: dict[str, PeerHealth] = {}
        self._wake = asyncio.Event()
        self.listeners: list[Callable[[str, PeerHealth], None]] = []  # told when a peer goes up or down

    def health(self, peer: str) -> PeerHealth:
        return self._health.get(peer) or PeerHealth()

    def is_down(self, peer: str) -> bool:
        """Known to be down: requests for it fail at once."""
        return self.health(peer).up is False

    def target(self, route: PeerRoute) -> TargetStatus:
        """A peer model as a selector sees it: loaded or not there; unavailable while the peer is down."""
        health = self.health(route.peer)
        return TargetStatus(health.state(route.model), available=health.up is not False)

    def served(self, route: PeerRoute) -> None:
        """A request for ``route`` was answered: the peer is up and has the model loaded now (until a
        probe says otherwise), so a warm selector prefers it without waiting for the next probe."""
        health = self.health(route.peer)
        if health.up is not True or route.model not in health.loaded:
            self._set(route.peer, replace(health, up=True, error=None, loaded=health.loaded | {route.model},
                                          loading=health.loading - {route.model}))

    def mark_down(self, peer: str, error: str) -> None:
        """A request could not connect: the peer is down until a probe finds it again."""
        self._set(peer, replace(self.health(peer), up=False, error=error, source=None))
        self._wake.set()

    def _set(self, peer: str, health: PeerHealth) -> None:
        old = self.health(peer)
        if health.up != old.up:
            health = replace(health, since=time.time())
            if health.up is False:
                logger.warning("peer %s is down: %s", peer, health.error)
            elif old.up is False:
                logger.info("peer %s is up again", peer)
            self._health[peer] = health
            for listener in self.listeners:
                listener(peer, health)
        else:
            self._health[peer] = replace(health, since=old.since)

    def as_json(self, config: Config) -> dict[str, Any]:
        return {pid: self.health(pid).as_json(peer) for pid, peer in config.peers.items()}

    # -- probing ------------------------------------------------------------------------------
    async def run(self, config: Callable[[], Config], session: aiohttp.ClientSession) -> None:
        """Probe every peer of the config in force, forever (until cancelled)."""
        while True:
            peers = config().peers
            for gone in set(self._health) - set(peers):  # a reload removed it
                del self._health[gone]
            if peers:
                results = await asyncio.gather(*(self.probe(p, session) for p in peers.values()))
                for peer, health in zip(peers.values(), results):
                    if peer.id in config().peers:
                        self._set(peer.id, health)
            down = any(self.is_down(p) for p in peers)
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), DOWN_INTERVAL if down else PROBE_INTERVAL)
            except TimeoutError:
                pass

    async def probe(self, peer: PeerConfig, session: aiohttp.ClientSession) -> PeerHealth:
        """One probe of ``peer``: up or down, and which of its models are loaded."""
        previous = self.health(peer.id)
        source = previous.source if previous.up else None
        began = time.perf_counter()
        try:
            found: Loaded | None = None
            if source in (None, "models"):
                found = loaded_from_models(await self._get(peer, session, "/v1/models"), peer.models)
                source = "models" if found is not None else None
            if found is None and source in (None, "running"):
                found = loaded_from_running(await self._get(peer, session, "/running"), peer.models)
                source = "running" if found is not None else "listed"
            if found is None:
                if previous.source == "listed":  # learnt before: only whether it answers
                    await self._get(peer, session, "/health")
                found = (frozenset(peer.models), frozenset())
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            return PeerHealth(up=False, checked_at=time.time(), error=_reason(exc))
        return PeerHealth(up=True, loaded=found[0], loading=found[1], source=source, checked_at=time.time(),
                          latency_ms=round((time.perf_counter() - began) * 1000, 1))

    @staticmethod
    async def _get(peer: PeerConfig, session: aiohttp.ClientSession, path: str) -> Any:
        """``GET path`` on the peer: its JSON (None for any other answer); raises when it cannot be reached."""
        connect = min(peer.connect_timeout or PROBE_CONNECT, PROBE_CONNECT)
        timeout = aiohttp.ClientTimeout(total=PROBE_TOTAL, connect=connect, sock_connect=connect)
        async with session.get(peer.proxy + path, headers=peer_headers(peer), timeout=timeout,
                               allow_redirects=False) as resp:
            if resp.status != 200:
                return None
            try:
                return await resp.json(content_type=None)
            except ValueError:
                return None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect: {exc.os_error}"
    if isinstance(exc, TimeoutError):
        return "no answer within the probe's time"
    return f"{exc.__class__.__name__}: {exc}"
