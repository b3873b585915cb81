"""The resolved config: frozen objects with macros expanded, ports assigned and defaults applied.

This is what the rest of swapproxy reads. The loading stages (:mod:`.loader`, :mod:`.resolve`)
build these types from the raw schema; tests may build them by hand. Deliberately free of
YAML and pydantic: the types say nothing of the file format they were read from.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ..matrix import Matrix

__all__ = ["COMFYUI_MODEL", "DEFAULT_GROUP", "DEFAULT_IGNORE_PATHS", "Config", "FiltersConfig", "GroupConfig",
           "HistoryConfig", "InstancesConfig", "LoadingState", "LogLevel", "LogToStdout", "MemoryConfig", "ModelConfig",
           "OnReadOnly", "PeerConfig", "PeerRoute", "ProfileConfig", "Router", "SchedulerConfig", "SchedulerUse",
           "SelectorConfig", "Strategy", "_FrozenDict"]

#: Name of the implicit group holding every model that no configured group lists.
DEFAULT_GROUP = "(default)"
#: The model id llama-swap's /comfyui/ routes reach (its WebSockets never start it).
COMFYUI_MODEL = "comfyui_auto"
#: llama-swap's default upstream.ignorePaths: static assets never start or swap a model.
DEFAULT_IGNORE_PATHS = (re.compile(r".*\.(js|json|css|png|gif|jpg|jpeg|ico|txt)$"),)

LogLevel = Literal["debug", "info", "warn", "error"]
LogToStdout = Literal["proxy", "upstream", "both", "none"]
#: sendLoadingState: off, llama-swap's progress in ``reasoning_content`` (True), or swapproxy's
#: SSE comment lines that only keep the connection alive ("keepalive").
LoadingState = bool | Literal["keepalive"]
Router = Literal["group", "matrix"]
SchedulerUse = Literal["fifo", "strict"]


class _FrozenDict(dict[str, Any]):
    """A read-only dict. Unlike MappingProxyType it still passes ``json.dumps``."""

    def _read_only(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("config mappings are read-only")

    __setitem__ = __delitem__ = __ior__ = _read_only
    clear = pop = popitem = setdefault = update = _read_only

    def __reduce__(self) -> tuple[Any, ...]:  # copy/pickle must not go through __setitem__
        return (_FrozenDict, (dict(self),))


@dataclass(frozen=True)
class GroupConfig:
    """A swap group: ``swap`` members replace each other, ``exclusive`` stops other groups,
    ``persistent`` members are never stopped by other groups."""

    name: str
    swap: bool = True
    exclusive: bool = True
    persistent: bool = False
    members: tuple[str, ...] = ()


@dataclass(frozen=True)
class FiltersConfig:
    """Request-body rewrites: keys to delete and keys to force (never ``model``); then, by the
    name the request used (id or alias), more keys to force (``setParamsByID``)."""

    strip_params: tuple[str, ...] = ()
    set_params: Mapping[str, Any] = field(default_factory=_FrozenDict)
    set_params_by_id: Mapping[str, Mapping[str, Any]] = field(default_factory=_FrozenDict)


Strategy = Literal["pin", "warm", "spillover"]


@dataclass(frozen=True)
class SelectorConfig:
    """A virtual model id that picks one of its ``targets`` per request (llama-swap's selectors).

    ``targets`` are the names as written (an alias keeps its setParamsByID); ``target_ids``
    the model ids they resolve to, in the same order.
    """

    id: str
    strategy: Strategy
    targets: tuple[str, ...]
    target_ids: tuple[str, ...]
    spillover: int = 1  # spillover: requests per active target before the next one starts
    name: str | None = None
    description: str | None = None
    unlisted: bool = False
    metadata: Mapping[str, Any] = field(default_factory=_FrozenDict)


@dataclass(frozen=True)
class ProfileConfig:
    """Named pins: while the profile is active, a request for a pin's name goes to its target
    (a model id, alias or selector); an empty target makes the name answer 404."""

    name: str
    description: str | None = None
    pins: Mapping[str, str] = field(default_factory=_FrozenDict)


@dataclass(frozen=True)
class SchedulerConfig:
    """How waiting requests are ordered: llama-swap's batching ``fifo`` (default) or ``strict`` arrival order."""

    use: SchedulerUse = "fifo"
    priority: Mapping[str, int] = field(default_factory=_FrozenDict)  # model id -> priority (default 0)
    max_wait: float = 2.0  # seconds before a busy model stops taking new requests for a waiting one


@dataclass(frozen=True)
class MemoryConfig:
    """Memory-aware scheduling: declared budgets per device (``gpu0``..., ``host``), in bytes."""

    budgets: Mapping[str, int] = field(default_factory=_FrozenDict)
    reserve: int = 0
    share_default_group: bool = False  # models in no group may run together when they fit
    learn: bool = True


@dataclass(frozen=True)
class HistoryConfig:
    """The request history, its captures and the performance samples (llama-swap's ``store``,
    ``metricsMaxInMemory``, ``captureBuffer`` and ``performance``)."""

    store_path: str | None = None  # sqlite file; None: in memory
    max_age: float = 30 * 86400.0  # seconds; with a file, older rows go (0: no limit)
    max_bytes: int = 100_000_000  # with a file, the oldest rows go above this (0: no limit)
    max_in_memory: int = 1000  # rows kept without a file
    capture_bytes: int = 5 << 20  # the captures' memory; 0: no captures
    performance: bool = True  # system and GPU samples for /api/performance
    performance_every: float = 5.0  # seconds between two samples


OnReadOnly = Literal["refuse", "memory"]


@dataclass(frozen=True)
class InstancesConfig:
    """Models managed at runtime (swapproxy's ``instances`` section): what a created model runs,
    where it is written with ``--config-dir``, and what a change does when the file is read-only."""

    llama_server: tuple[str, ...] | None = None  # argv; None: found when needed (swapproxy.llamabin)
    file: str | None = None  # --config-dir: a file name in the directory
    on_read_only: OnReadOnly = "refuse"
    edits: bool = True  # false: the API and the UI only read the config


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """One model, fully resolved: macros expanded, defaults applied, argv split."""

    id: str
    cmd: tuple[str, ...]
    cmd_stop: tuple[str, ...] | None = None  # "${PID}" is left in for the process layer
    proxy: str  # base URL, no trailing slash
    check_endpoint: str | None = "/health"  # None: ready as soon as spawned
    ttl: float = 0.0  # seconds idle before unload; 0 = never
    unload_timeout: float = 10.0
    health_check_timeout: float = 120.0
    aliases: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=_FrozenDict)
    use_model_name: str | None = None
    unlisted: bool = False
    name: str | None = None
    description: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=_FrozenDict)
    capabilities: Mapping[str, Any] | None = None
    concurrency_limit: int = 10
    filters: FiltersConfig = field(default_factory=FiltersConfig)
    send_loading_state: LoadingState = False  # True: progress in reasoning_content; "keepalive": comments only
    connect_timeout: float = 30.0  # 0 = none
    response_header_timeout: float = 0.0  # 0 = none
    response_idle_timeout: float = 0.0  # swapproxy: 0 = none; no body progress for this long cuts the response
    port: int | None = None  # the ${PORT} assigned to this model
    group: str = DEFAULT_GROUP
    upstream_api_key: str | None = None  # swapproxy: sent upstream as Bearer / x-api-key
    memory: Mapping[str, int] | None = None  # swapproxy: declared footprint per device, bytes
    slot_cache: bool = False  # swapproxy: save slots before a graceful stop, restore after the next start
    slot_save_timeout: float = 10.0  # seconds those saves may take
    tags: tuple[str, ...] = ()  # listed in /models, as llama-server's --tags
    ignore_websockets: bool = False  # compat.ignoreWebsockets: a WebSocket never starts it, nor counts


@dataclass(frozen=True, kw_only=True)
class PeerConfig:
    """A remote server and the models it serves (llama-swap's ``peers``). It never swaps here: a
    request for one of its models is forwarded to ``proxy`` with its key, filters and timeouts."""

    id: str
    proxy: str  # base URL, no trailing slash; the request's path is appended
    models: tuple[str, ...]
    api_key: str | None = None  # replaces the client's Authorization and x-api-key
    filters: FiltersConfig = field(default_factory=FiltersConfig)
    connect_timeout: float = 30.0
    response_header_timeout: float = 60.0
    response_idle_timeout: float = 0.0
    _specs: Mapping[str, ModelConfig] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # What the forwarder reads, once per peer model: its URL, key and timeouts, named peer/model.
        specs = {model: ModelConfig(
            id=f"{self.id}/{model}", cmd=(), proxy=self.proxy, check_endpoint=None, filters=self.filters,
            upstream_api_key=self.api_key, connect_timeout=self.connect_timeout,
            response_header_timeout=self.response_header_timeout,
            response_idle_timeout=self.response_idle_timeout) for model in self.models}
        object.__setattr__(self, "_specs", _FrozenDict(specs))

    def spec(self, model: str) -> ModelConfig:
        """The forwarding spec for one of the peer's models (KeyError for another)."""
        return self._specs[model]


@dataclass(frozen=True)
class PeerRoute:
    """Where a peer model's name leads: the peer, and the model id as the peer knows it."""

    peer: str
    model: str

    @property
    def fqn(self) -> str:
        """``peer/model``: the name that always reaches it."""
        return f"{self.peer}/{self.model}"


def peer_index(peers: Mapping[str, PeerConfig]) -> dict[str, PeerRoute]:
    """Every name that reaches a peer model: each ``peer/model``, and each bare model id that exactly
    one peer lists and that is no ``peer/model`` itself (llama-swap's rule; local names win elsewhere)."""
    index = {f"{p.id}/{m}": PeerRoute(p.id, m) for p in peers.values() for m in p.models}
    bare: dict[str, list[PeerRoute]] = {}
    for peer in peers.values():
        for model in peer.models:
            bare.setdefault(model, []).append(PeerRoute(peer.id, model))
    for model, routes in bare.items():
        if len(routes) == 1 and model not in index:
            index[model] = routes[0]
    return index


@dataclass(frozen=True, kw_only=True)
class Config:
    """The whole resolved config. Built by :func:`load_config`; tests may build one by hand
    (with no ``groups`` given, every model lands in the implicit ``(default)`` group)."""

    file: str = "<config>"
    health_check_timeout: float = 120.0
    log_level: LogLevel = "info"
    log_to_stdout: LogToStdout = "proxy"
    start_port: int = 5800
    global_ttl: float = 0.0
    unload_timeout: float = 10.0
    api_keys: tuple[str, ...] = ()  # llama-swap's: grant both tiers
    inference_keys: tuple[str, ...] = ()  # swapproxy: /v1/... and native routes only
    management_keys: tuple[str, ...] = ()  # swapproxy: load/unload, logs, events, metrics, UI only
    send_loading_state: LoadingState = False
    include_aliases_in_list: bool = False
    preload: tuple[str, ...] = ()
    groups: tuple[GroupConfig, ...] = ()
    default_model: str | None = None
    max_request_body_mb: float = 256.0
    breaker_failures: int = 3  # start failures within breaker_window that open the breaker; 0 = off
    breaker_window: float = 60.0
    breaker_backoff: float = 5.0  # after a failed start, requests get that failure for this long (no new spawn)
    state_dir: str | None = None  # where pid records live; None = no records
    router: Router = "group"
    matrix: Matrix | None = field(default=None, compare=False)  # compiled, when router is "matrix"
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    slot_cache_budget: int = 8 << 30  # bytes of saved slot files, all models together
    cors_origins: tuple[str, ...] = ("localhost",)  # swapproxy: "localhost", "*" or exact origins (browser.py)
    instances: InstancesConfig = field(default_factory=InstancesConfig)
    history: HistoryConfig = field(default_factory=HistoryConfig)
    allowed_hosts: tuple[str, ...] = ()  # swapproxy: Host names accepted besides the built-in ones (browser.py)
    env_secrets: tuple[str, ...] = ()  # values of ${env.X} whose X names a secret: redacted where shown
    models: Mapping[str, ModelConfig]
    selectors: Mapping[str, SelectorConfig] = field(default_factory=_FrozenDict)
    profiles: Mapping[str, ProfileConfig] = field(default_factory=_FrozenDict)
    peers: Mapping[str, PeerConfig] = field(default_factory=_FrozenDict)
    upstream_ignore_paths: tuple[re.Pattern[str], ...] = DEFAULT_IGNORE_PATHS
    config_dir: str | None = None  # --config-dir: its *.yaml files were merged after ``file``
    notices: tuple[str, ...] = ()
    _alias_index: Mapping[str, str] = field(init=False, repr=False, compare=False)
    _group_index: Mapping[str, GroupConfig] = field(init=False, repr=False, compare=False)
    _peer_index: Mapping[str, PeerRoute] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # frozen dataclass: indexes are computed once here, hence object.__setattr__
        models = _FrozenDict(self.models)
        object.__setattr__(self, "models", models)
        object.__setattr__(self, "selectors", _FrozenDict(self.selectors))
        object.__setattr__(self, "profiles", _FrozenDict(self.profiles))
        object.__setattr__(self, "peers", _FrozenDict(self.peers))
        object.__setattr__(self, "_peer_index", _FrozenDict(peer_index(self.peers)))
        if not self.groups and models:
            object.__setattr__(self, "groups", (GroupConfig(DEFAULT_GROUP, members=tuple(models)),))
        aliases = {a: m.id for m in models.values() for a in m.aliases}
        object.__setattr__(self, "_alias_index", _FrozenDict(aliases))
        groups = {member: g for g in self.groups for member in g.members}
        object.__setattr__(self, "_group_index", _FrozenDict(groups))

    @property
    def source_file(self) -> str | None:
        """The ``-c`` file this config was read from; None when it came from ``--config-dir`` alone."""
        return None if self.config_dir is not None and self.file == self.config_dir else self.file

    @property
    def all_keys(self) -> tuple[str, ...]:
        """Every client key of every tier (to keep them out of upstream environments)."""
        return (*self.api_keys, *self.inference_keys, *self.management_keys)

    def resolve(self, name: str) -> str | None:
        """Model id or alias -> model id; None when neither."""
        return name if name in self.models else self._alias_index.get(name)

    def peer_route(self, name: str) -> PeerRoute | None:
        """The peer model ``name`` reaches (``peer/model``, or a bare id one peer alone lists); None
        otherwise. Local ids and aliases win: ask :meth:`resolve` first."""
        return self._peer_index.get(name)

    def peer_names(self) -> tuple[str, ...]:
        """Every name that reaches a peer model (see :meth:`peer_route`)."""
        return tuple(self._peer_index)

    def group_of(self, model_id: str) -> GroupConfig:
        """The group holding ``model_id``; KeyError for an unknown id."""
        try:
            return self._group_index[model_id]
        except KeyError:
            raise KeyError(f"model {model_id!r} is in no group") from None
