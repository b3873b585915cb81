"""The raw schema of swapproxy's config file: llama-swap's ``config.yaml`` keys as users write them.

Pydantic models whose field names are the camelCase keys of the YAML file, with
llama-swap's defaults. They only check types, ranges and unknown keys (stage 4 of the
pipeline, run by :mod:`.loader`); :mod:`.resolve` turns a validated :class:`RawConfig`
into the resolved, frozen :class:`~swapproxy.config.Config` (macros, ports, groups,
cross-checks). :func:`json_schema` is what ``swapproxy schema`` prints, for editors.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from .model import LoadingState, LogLevel, LogToStdout, Strategy

__all__ = ["LogLevel", "LogToStdout", "Modality", "Raw", "RawAlias", "RawBreaker", "RawCapabilities", "RawCompat",
           "RawConfig", "RawFifo", "RawFilters", "RawGroup", "RawHooks", "RawInstances", "RawMatrix", "RawMemory",
           "RawModel", "RawModelSlotCache", "RawOnStartup", "RawPeer", "RawPeerTimeouts", "RawPerformance", "RawProfile",
           "RawRouter", "RawRouterSettings", "RawRouting", "RawScheduler", "RawSchedulerSettings", "RawSelector",
           "RawSelectorSettings", "RawSlotCache", "RawStore", "RawTimeouts", "RawUpstream", "Size", "json_schema"]

Modality = Literal["text", "audio", "image", "video"]


class Raw(BaseModel):
    """Base of every schema model: frozen, unknown keys refused, ``key:`` left empty means its default."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _drop_nulls(cls, data: Any) -> Any:
        # `key:` with nothing after it means "the default", as it does for llama-swap
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None}
        return data


class RawGroup(Raw, title="group"):
    """Models that swap together (llama-swap groups, see its issue #109)."""

    swap: bool = Field(default=True, description="only one member runs at a time")
    exclusive: bool = Field(default=True, description="running a member stops every other group")
    persistent: bool = Field(default=False, description="other groups never stop these members")
    members: list[str] = Field(description="model ids from `models`")


class RawMatrix(Raw, title="matrix"):
    """llama-swap's matrix: named sets of models that may run together."""

    vars: dict[str, str] = Field(default_factory=dict, description="short name -> model id")
    evict_costs: dict[str, int] = Field(default_factory=dict, description="var or model id -> cost of "
                                        "stopping it (default 1)")
    sets: dict[str, str] = Field(description="set name -> expression: a & b, a | b, (...), +set")


class RawRouterSettings(Raw, title="router settings"):
    groups: dict[str, RawGroup] = Field(default_factory=dict)
    # checked only when routing.router.use is matrix, as llama-swap does
    matrix: dict[str, Any] | None = Field(default=None, description="see matrix")


class RawRouter(Raw, title="router"):
    use: Literal["group", "matrix"] = "group"
    settings: RawRouterSettings = RawRouterSettings()


class RawFifo(Raw, title="fifo"):
    priority: dict[str, int] = Field(default_factory=dict, description="model id -> priority (default 0); "
                                     "higher is served first")
    maxWait: float = Field(default=2.0, ge=0, description="swapproxy: seconds a request for another model "
                           "waits before the running model stops taking new requests, so that it drains "
                           "and the swap happens")


class RawSchedulerSettings(Raw, title="scheduler settings"):
    fifo: RawFifo = RawFifo()


class RawScheduler(Raw, title="scheduler"):
    use: Literal["fifo", "strict"] = Field(default="fifo", description="fifo: batch by model, serve ready "
                                           "models at once; strict (swapproxy): strict arrival order")
    settings: RawSchedulerSettings = RawSchedulerSettings()


Size = int | str


class RawMemory(Raw, title="memory"):
    """swapproxy: memory-aware scheduling (budgets per device; footprints per model)."""

    devices: dict[str, Size] = Field(default_factory=dict, description="budget per device (gpu0, gpu1, ..., "
                                     "host): bytes or e.g. 24GiB; GPUs default to what NVML reports")
    reserve: Size = Field(default=0, description="headroom kept free on every device")
    shareDefaultGroup: bool = Field(default=False, description="models in no group may run together "
                                    "when they fit (memory alone decides)")
    learn: bool = Field(default=True, description="learn each model's real footprint once it has run")


class RawRouting(Raw, title="routing"):
    router: RawRouter = RawRouter()
    scheduler: RawScheduler = RawScheduler()


class RawOnStartup(Raw, title="on_startup"):
    preload: list[str] = Field(default_factory=list, description="model ids or aliases")


class RawHooks(Raw, title="hooks"):
    on_startup: RawOnStartup = RawOnStartup()


class RawFilters(Raw, title="filters"):
    stripParams: str = Field(default="", description="comma-separated request keys to delete")
    strip_params: str | None = Field(default=None, description="older spelling of stripParams")
    setParams: dict[str, Any] = Field(default_factory=dict, description="request keys to force")
    setParamsByID: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="requested name -> keys to force after setParams; each name "
        "other than the model's id becomes an alias (macros such as ${MODEL_ID} work in names)")


class RawCompat(Raw, title="compat"):
    ignoreWebsockets: bool = Field(default=False, description="a WebSocket never starts this model and "
                                   "counts toward neither its concurrency, its TTL nor swaps")


class RawTimeouts(Raw, title="timeouts"):
    """Upstream connection timeouts in seconds; 0 disables one."""

    connect: float = Field(default=30.0, ge=0)
    responseHeader: float = Field(default=0.0, ge=0)
    responseIdle: float = Field(default=0.0, ge=0, description="swapproxy: once the response began, the longest "
                                "the upstream may send nothing (or the client take nothing) before it is cut")
    keepalive: float | None = Field(default=None, ge=0, description="accepted, unused")
    tlsHandshake: float | None = Field(default=None, ge=0, description="accepted, unused")
    idleConn: float | None = Field(default=None, ge=0, description="accepted, unused")
    expectContinue: float | None = Field(default=None, ge=0, description="accepted, unused")


class RawPeerTimeouts(RawTimeouts, title="peer timeouts"):
    """A peer's timeouts: a model's, but it waits 60 s for response headers (llama-swap's peer default)."""

    responseHeader: float = Field(default=60.0, ge=0)


class RawPeer(Raw, title="peer"):
    """A remote OpenAI-compatible server (another swapproxy, a llama-swap, a llama-server, a hosted API)
    and the models it serves: ``<peer>/<model>`` always routes there; a bare model id only when exactly
    one peer lists it and no local model or alias has that name."""

    proxy: str = Field(description="base URL; the request's path is appended (https://openrouter.ai/api)")
    apiKey: str = Field(default="", description="sent as Authorization: Bearer and x-api-key, replacing the "
                        "client's")
    models: list[str] = Field(description="the model ids the peer serves (at least one)")
    filters: RawFilters = RawFilters()
    timeouts: RawPeerTimeouts = RawPeerTimeouts()


class RawCapabilities(Raw, title="capabilities"):
    in_: list[Modality] = Field(default_factory=list, alias="in")
    out: list[Modality] = Field(default_factory=list)
    tools: bool = False
    reranker: bool = False
    context: int = Field(default=0, ge=0)


class RawAlias(Raw, title="alias"):
    """The mapping form of an alias: only ``id`` routes; the rest is display information."""

    id: str
    name: str | None = None
    description: str | None = None
    unlisted: bool | None = None


class RawModelSlotCache(Raw, title="model slotCache"):
    saveTimeout: float | None = Field(default=None, gt=0, description="seconds the saves before a stop may "
                                      "take (default: slotCache.saveTimeout)")


class RawSlotCache(Raw, title="slotCache"):
    """swapproxy: where saved slots go, and how much disk they may take."""

    budget: Size = Field(default="8GiB", description="disk the saved slot files of all models may take; "
                         "the oldest go first")
    saveTimeout: float = Field(default=10.0, gt=0, description="seconds the saves before a stop may take")


class RawModel(Raw, title="model"):
    """One model: the command that serves it and how to reach it."""

    cmd: str = Field(description="command line; ${PORT}, ${MODEL_ID} and macros expand")
    cmdStop: str = Field(default="", description="stop command; ${PID} is the process id")
    proxy: str | None = Field(default=None, description="default http://127.0.0.1:${PORT}")
    aliases: list[str | RawAlias] = Field(default_factory=list, description="names, or {id, name, unlisted}")
    env: list[str] = Field(default_factory=list, description="NAME=value entries")
    checkEndpoint: str = Field(default="/health", description="readiness path, or none")
    ttl: float = Field(default=-1.0, ge=-1, description="-1 = globalTTL, 0 = never")
    unloadTimeout: float = Field(default=0.0, ge=0, description="0 = the global unloadTimeout")
    unlisted: bool = False
    useModelName: str = ""
    name: str = ""
    description: str = ""
    concurrencyLimit: int = Field(default=0, ge=0, description="0 = 10")
    filters: RawFilters = RawFilters()
    macros: dict[str, Any] = Field(default_factory=dict)
    metadata: dict[str, Any] = Field(default_factory=dict)
    capabilities: dict[str, Any] | None = None
    sendLoadingState: LoadingState | None = Field(default=None, description="default: the global "
                                                  "sendLoadingState")
    timeouts: RawTimeouts = RawTimeouts()
    apiKey: str = Field(default="", description="swapproxy: key sent to this upstream (Bearer and x-api-key)")
    memory: Size | dict[str, Size] | None = Field(default=None, description="swapproxy: the model's memory "
                                                  "footprint: a size (on its device) or a size per device")
    compat: RawCompat = RawCompat()
    slotCache: bool | RawModelSlotCache = Field(default=False, description="swapproxy: save llama-server's "
                                                "slots (KV caches) before a graceful stop, restore them after "
                                                "the next start of the same command")
    tags: list[str] | str = Field(default_factory=list, description="listed in /models (as llama-server's "
                                  "--tags); a list, or one comma-separated string")


class RawBreaker(Raw, title="circuitBreaker"):
    """After ``failures`` start failures within ``window`` seconds, answer 503 at once."""

    failures: int = Field(default=3, ge=0, description="0 disables the breaker")
    window: float = Field(default=60.0, gt=0, description="seconds")
    backoff: float = Field(default=5.0, ge=0, description="swapproxy: seconds after a failed start during which "
                           "requests get that failure (503, Retry-After) without a new start; 0 = none")


class RawUpstream(Raw, title="upstream"):
    ignorePaths: list[str] = Field(default_factory=list, description="regular expressions: an /upstream/<model>/"
                                   "<path> they match never starts or swaps the model (409 while it is not "
                                   "ready); empty = llama-swap's default, static assets")


class RawInstances(Raw, title="instances"):
    """swapproxy: models managed at runtime (llamactl's /api/v1/instances, the UI's model form and editor)."""

    llamaServer: str | None = Field(default=None, description="the llama-server command line a created "
                                    "instance runs (flags are added after it) and /api/v1/server/* asks; "
                                    "default: scripts/install_llama.py's build if installed, else "
                                    "llama-server on PATH")
    file: str | None = Field(default=None, description="with --config-dir: the file (a name in that "
                             "directory) created models are written to; default the -c file, else "
                             "instances.yaml")
    edits: bool = Field(default=True, description="whether the API and the UI may change the config (and so "
                        "the commands swapproxy runs); false: they only read it")
    onReadOnly: Literal["refuse", "memory"] = Field(default="refuse", description="a change when the config "
                                                    "file cannot be written: refuse it, or apply it in memory "
                                                    "only (lost at the next reload or restart)")


class RawStore(Raw, title="store"):
    """Where the request history (``/api/metrics/activity``) is kept, and for how long."""

    path: str | None = Field(default=None, description="sqlite file that keeps the request history across "
                             "restarts; absent: kept in memory (metricsMaxInMemory rows)")
    maxAge: float | str = Field(default="30d", description="swapproxy: with path, rows older than this go "
                                "(a duration: 30d, 12h, 90m; 0 = no age limit)")
    maxSize: Size = Field(default="100MB", description="swapproxy: with path, the oldest rows go when the "
                          "database holds more than this (0 = no size limit)")


Duration = float | str


class RawPerformance(Raw, title="performance"):
    """System and GPU samples for ``/api/performance``."""

    disabled: bool = False
    every: Duration = Field(default="5s", description="time between two samples (at least 5s): a duration "
                            "such as 5s, 1m, or a number of seconds")


class RawSelectorSettings(Raw, title="selector settings"):
    spillover: int = Field(default=1, ge=1, description="requests per active target before the next starts")


class RawSelector(Raw, title="selector"):
    """A virtual model id resolved to one of its targets per request."""

    strategy: Strategy = Field(description="pin: the first target; warm: the first ready (else starting, else "
                               "the first) target; spillover: fill targets in order")
    targets: list[str] = Field(description="model ids, aliases or peers' models (peer/model), never other "
                               "selectors")
    settings: RawSelectorSettings = RawSelectorSettings()
    name: str = ""
    description: str = ""
    unlisted: bool = False
    metadata: dict[str, Any] = Field(default_factory=dict)


class RawProfile(Raw, title="profile"):
    """Pins switched on together (PUT /api/profiles/active): requested name -> target."""

    description: str = ""
    pins: dict[str, str | None] = Field(description="name -> model id, alias, selector or peer's model; empty "
                                        "or ~ disables the name (404)")

    @model_validator(mode="before")
    @classmethod
    def _no_list(cls, data: Any) -> Any:
        if isinstance(data, list):
            raise PydanticCustomError("legacy_profile", "a profile must be a mapping with description and pins; "
                                      "the legacy list syntax is no longer supported")
        return data


class RawConfig(Raw, title="swapproxy config (llama-swap config.yaml format)"):
    healthCheckTimeout: float = Field(default=120.0, gt=0, description="seconds to get ready")
    logLevel: LogLevel = "info"
    logToStdout: LogToStdout = "proxy"
    startPort: int = Field(default=5800, ge=1, le=65535, description="first ${PORT}")
    globalTTL: float = Field(default=0.0, ge=0, description="default model ttl; 0 = never unload")
    unloadTimeout: float = Field(default=10.0, ge=0, description="seconds from stop to SIGKILL")
    macros: dict[str, Any] = Field(default_factory=dict)
    apiKeys: list[str] = Field(default_factory=list, description="keys for every route")
    inferenceApiKeys: list[str] = Field(default_factory=list, description="swapproxy: keys for inference routes")
    managementApiKeys: list[str] = Field(default_factory=list, description="swapproxy: keys for management routes")
    sendLoadingState: LoadingState = Field(default=False, description="a streamed chat request for a model "
                                           "that is not ready gets 200 at once: true = progress in "
                                           "reasoning_content (llama-swap's); keepalive (swapproxy) = SSE comment "
                                           "lines only, which clients ignore")
    includeAliasesInList: bool = False
    hooks: RawHooks = RawHooks()
    groups: dict[str, RawGroup] = Field(default_factory=dict)
    routing: RawRouting = RawRouting()
    matrix: dict[str, Any] | None = Field(default=None, description="older spelling of "
                                          "routing.router.settings.matrix (with routing.router.use: matrix)")
    memory: RawMemory = RawMemory()
    slotCache: RawSlotCache = RawSlotCache()
    upstream: RawUpstream = RawUpstream()
    profiles: dict[str, RawProfile] = Field(default_factory=dict)
    selectors: dict[str, RawSelector] = Field(default_factory=dict)
    peers: dict[str, RawPeer] = Field(default_factory=dict, description="remote servers whose models this one "
                                      "routes to (llama-swap's peers); swapproxy probes their health")
    models: dict[str, RawModel]
    defaultModel: str | None = Field(default=None, description="swapproxy: model if none named")
    maxRequestBodyMB: float = Field(default=256.0, gt=0, description="swapproxy: body limit")
    circuitBreaker: RawBreaker = RawBreaker()
    stateDir: str | None = Field(default=None, description="swapproxy: pid records; default "
                                 "$XDG_STATE_HOME/swapproxy; empty string = none")
    corsOrigins: list[str] | str = Field(default_factory=lambda: ["localhost"], description="swapproxy: origins "
                                         "whose web pages may call this server from a browser (llama-server's "
                                         "--cors-origins): 'localhost' (any localhost origin, the default), "
                                         "'*' (any origin), or 'https://host[:port]'; a list or comma-separated")
    instances: RawInstances = RawInstances()
    allowedHosts: list[str] = Field(default_factory=list, description="swapproxy: host names the Host header may "
                                    "carry besides IP addresses, localhost and this machine's name (DNS "
                                    "rebinding guard); '.example.com' takes its subdomains, '*' any name")
    logRequests: bool | None = Field(default=None, description="accepted, unused")
    metricsMaxInMemory: int = Field(default=1000, description="rows of request history kept without "
                                    "store.path (<= 0: 1000)")
    captureBuffer: float = Field(default=5, description="MB of memory for request/response captures "
                                 "(/api/captures/{id}); <= 0 turns captures off")
    logTimeFormat: str | None = Field(default=None, description="accepted, unused")
    performance: RawPerformance = RawPerformance()
    ui: dict[str, Any] | None = Field(default=None, description="accepted, unused")
    store: RawStore = RawStore()


def json_schema() -> dict[str, Any]:
    """JSON Schema of the YAML file as users write it (camelCase keys)."""
    return RawConfig.model_json_schema()
