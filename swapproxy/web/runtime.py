"""Runtime: the one typed object every route reads, under one AppKey. A leaf of the web layer.

:func:`swapproxy.web.app.make_app` creates it; the resources that need a
running loop (the client session, the scheduler) are filled in when the app
starts. The config is never kept here on its own: :attr:`Runtime.config` is
the scheduler's, so a reload is seen by the next request.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
from aiohttp import web

from ..background import Background
from ..config import Config
from ..configstore import ConfigStore
from ..created import CreatedTimes
from ..events import EventBus
from ..history import History, Note
from ..inflight import InflightRequests
from ..logs import LogBuffer
from ..memory import MemoryModel
from ..metrics import Metrics
from ..peers import PeerMonitor
from ..performance import PerformanceMonitor
from ..reload import Reloader, ReloadState
from ..scheduler import Scheduler
from ..slotcache import SlotCache
from ..telemetry import Telemetry
from ..timeline import Timeline
from ..upstream_metrics import UpstreamMetrics
from ..selectors import SelectorState
from .upstream_props import UpstreamProps

__all__ = ["Runtime", "Tier", "Kind", "RouteTag", "RUNTIME", "MODEL_KEY", "START_KEY", "RESPONDING_KEY", "NOTE_KEY",
           "RouteTable", "runtime", "note_of", "route_label", "route_tag", "register"]


class Tier(enum.Enum):
    """Which API keys open a route (see the auth middleware)."""

    INFERENCE = "inference"  # /v1/..., native llama-server routes, /upstream passthrough
    MANAGEMENT = "management"  # load/unload, logs, events, metrics, info, the UI


class Kind(enum.Enum):
    """What a route does: the browser rules (:mod:`.browser`) let other sites reach only ``READ`` routes.

    Every route declares its kind where it is registered; a request that asks for a
    WebSocket upgrade is ``WEBSOCKET`` whatever its route says.
    """

    READ = "read"  # answers from swapproxy's state; changes nothing, starts nothing
    INFERENCE = "inference"  # proxied to a model, which is started if needed
    LOAD = "load"  # loads or unloads models
    PROFILE = "profile"  # switches the active profile
    CANCEL = "cancel"  # cancels a request in flight
    SLOTS = "slots"  # llama-server slot actions (save, restore, erase)
    CONFIG = "config"  # changes the config (and writes its file): models created, updated, deleted
    WEBSOCKET = "websocket"  # a WebSocket upgrade

    @property
    def acts(self) -> bool:
        """Whether the route changes state or starts work (so a GET of it must not answer HEAD)."""
        return self is not Kind.READ


@dataclass(frozen=True, slots=True)
class RouteTag:
    """A route's tier (which keys open it) and kind (what it does).

    ``below_model``: the tag that applies instead when the route's ``{model}`` match is not
    exactly a configured model or alias: the path is then below a model, a passthrough
    (``GET /upstream/m/x/load`` is the passthrough of ``/x/load``, not a load of ``m/x``).
    """

    tier: Tier
    kind: Kind
    below_model: RouteTag | None = None


T = TypeVar("T")


def _started(value: T | None) -> T:
    """What the app's start-up made (an error before it has started)."""
    if value is None:
        raise RuntimeError("swapproxy's app has not started")
    return value


@dataclass(eq=False)
class Runtime:
    """What the running app holds: the scheduler, the shared session, logs, events, metrics."""

    initial_config: Config
    metrics: Metrics
    max_body: int
    events: EventBus = field(default_factory=EventBus)
    proxy_log: LogBuffer = field(default_factory=lambda: LogBuffer("proxy"))  # swapproxy's own records
    upstream_log: LogBuffer = field(default_factory=lambda: LogBuffer("upstream"))  # "[model] line"
    all_log: LogBuffer = field(default_factory=lambda: LogBuffer("all", maxlen=2000, maxbytes=2 << 20))  # both
    reload: ReloadState = field(default_factory=ReloadState)
    background: Background = field(default_factory=Background)  # loads started by the API, TTL unloads, ...
    closing: asyncio.Event = field(default_factory=asyncio.Event)  # set at shutdown: long streams end
    started: float = field(default_factory=time.time)
    tags: dict[web.AbstractRoute, RouteTag] = field(default_factory=dict)  # by route: its tier and kind
    inflight: InflightRequests = field(default_factory=InflightRequests)  # every proxied request, to list or cut
    selectors: SelectorState = field(default_factory=SelectorState)  # spillover turns and reservations
    peers: PeerMonitor = field(default_factory=PeerMonitor)  # each peer's health, probed in the background
    active_profile: str | None = None  # at most one; none at start (never persisted, as in llama-swap)
    created: CreatedTimes = field(init=False)  # model id -> when first seen (llamactl's), kept in stateDir
    timeline: Timeline = field(default_factory=Timeline)  # recent loads and stops (the UI's activity page)
    slot_cache: SlotCache = field(init=False)  # saved llama-server slots of the models with slotCache
    upstream_metrics: UpstreamMetrics = field(init=False)  # the running upstreams' own /metrics
    history: History = field(init=False)  # every proxied request, and its capture (/api/metrics/activity)
    performance: PerformanceMonitor = field(init=False)  # system and GPU samples (/api/performance)
    hardware: dict[str, Any] | None = None  # the machine, as found at start (/api/hardware); None: not found
    record_history: bool = True  # False: no request is recorded (the history benchmark's baseline)
    _scheduler: Scheduler | None = None
    _reloader: Reloader | None = None
    _store: ConfigStore | None = None
    _session: aiohttp.ClientSession | None = None
    _memory: MemoryModel | None = None
    _telemetry: Telemetry | None = None
    _upstream_props: UpstreamProps | None = None

    def __post_init__(self) -> None:
        self.slot_cache = SlotCache(lambda: self.config, lambda: self.session)
        self.created = CreatedTimes(self.initial_config.state_dir)
        self.upstream_metrics = UpstreamMetrics(lambda: self.session, self.background.spawn)
        self.history = History(self.initial_config.history, self.events, enabled=self.record_history)
        self.performance = PerformanceMonitor(self.initial_config.history)

    @property
    def scheduler(self) -> Scheduler:
        return _started(self._scheduler)

    @property
    def reloader(self) -> Reloader:
        """Reloads the config from its files (SIGHUP, --watch-config); config edits apply through it."""
        return _started(self._reloader)

    @property
    def store(self) -> ConfigStore:
        """The config's files and the changes made to them through the API and the UI."""
        return _started(self._store)

    @property
    def session(self) -> aiohttp.ClientSession:
        return _started(self._session)

    @property
    def memory(self) -> MemoryModel:
        """Device budgets and model footprints."""
        return _started(self._memory)

    @property
    def upstream_props(self) -> UpstreamProps:
        """What each loaded llama-server said in its /props (context size, model name)."""
        return _started(self._upstream_props)

    @property
    def telemetry(self) -> Telemetry:
        """The last GPU sample and what each running model really holds."""
        return _started(self._telemetry)

    @property
    def config(self) -> Config:
        """The config in force now (after reloads)."""
        return self._scheduler.config if self._scheduler is not None else self.initial_config

    @property
    def profile(self) -> str | None:
        """The active profile, if the config in force still has it (a reload may remove it)."""
        active = self.active_profile
        return active if active is not None and active in self.config.profiles else None


RUNTIME = web.AppKey("runtime", Runtime)

#: request keys: the model a handler resolved (the metrics' model label), when the request arrived,
#: whether a response to it has begun (headers prepared: an error envelope can no longer be sent),
#: what the request history learns of it (a proxied request's :class:`~swapproxy.history.Note`)
if hasattr(web, "RequestKey"):  # aiohttp >= 3.13: typed request storage
    MODEL_KEY: Any = web.RequestKey("swapproxy_model", str)
    START_KEY: Any = web.RequestKey("swapproxy_started", float)
    RESPONDING_KEY: Any = web.RequestKey("swapproxy_responding", bool)
    NOTE_KEY: Any = web.RequestKey("swapproxy_note", Note)
else:  # pragma: no cover - older aiohttp
    MODEL_KEY = "swapproxy.model"
    START_KEY = "swapproxy.started"
    RESPONDING_KEY = "swapproxy.responding"
    NOTE_KEY = "swapproxy.note"


def runtime(request: web.Request) -> Runtime:
    """The request's app's :class:`Runtime`."""
    return request.app[RUNTIME]


def note_of(request: web.Request) -> Note | None:
    """The request's history note, made on first use; None when requests are not recorded."""
    note = request.get(NOTE_KEY)
    if note is None and request.app[RUNTIME].record_history:
        note = request[NOTE_KEY] = Note()
    return note


def route_label(request: web.Request) -> str:
    """The matched route's canonical path (a fixed set), never the raw URL."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else ""


def route_tag(request: web.Request) -> RouteTag | None:
    """The matched route's tag (None for aiohttp's own 404/405 routes); see :class:`RouteTag`."""
    rt = runtime(request)
    tag = rt.tags.get(request.match_info.route)
    if tag is not None and tag.below_model is not None and rt.config.resolve(request.match_info["model"]) is None:
        return tag.below_model
    return tag


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: (method, path, handler, kind) rows.
RouteTable = Sequence[tuple[str, str, Handler, Kind]]


async def _no_head(request: web.Request) -> web.StreamResponse:
    """HEAD of a GET that acts (unload, load, a native route that starts a model): 405, nothing done."""
    raise web.HTTPMethodNotAllowed("HEAD", ["GET"])


def register(app: web.Application, tags: dict[web.AbstractRoute, RouteTag], tier: Tier, table: RouteTable, *,
             below_model: RouteTag | None = None) -> None:
    """Add every route of ``table`` to ``app``, in order, tagged with ``tier`` and its row's kind.

    A GET answers HEAD too, unless its kind acts: then HEAD is a 405 that does nothing.
    ``below_model``: see :class:`RouteTag`.
    """
    r = app.router
    for method, path, handler, kind in table:
        tag = RouteTag(tier, kind, below_model)
        if method == "GET":  # HEAD first, as add_get does; both land on one resource
            head = r.add_route("HEAD", path, handler if not kind.acts else _no_head)
            tags[head] = RouteTag(tier, Kind.READ, below_model)
        tags[r.add_route(method, path, handler)] = tag
