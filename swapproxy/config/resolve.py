"""Resolution: a validated :class:`~.schema.RawConfig` becomes the frozen :class:`~.model.Config`.

The top-level settings are read here, and each section is resolved by its own module:
:mod:`.macros` (the global ``macros``), :mod:`.resolve_groups` (swap groups),
:mod:`.resolve_browser` (``corsOrigins``, ``allowedHosts``), :mod:`.resolve_instances` (``instances``),
:mod:`.resolve_history` (``store``, ``metricsMaxInMemory``, ``captureBuffer``, ``performance``),
:mod:`.resolve_models` (each ``models.<id>``, in config order since ``${PORT}`` follows it), :mod:`.resolve_selectors`,
:mod:`.resolve_profiles`, :mod:`.resolve_peers` and :mod:`.resolve_upstream`; :mod:`.resolve_routing` resolves the
router (groups or matrix) and the scheduler's settings, :mod:`.resolve_memory` the memory
budgets. Then the names that refer to models are cross-checked: aliases (setParamsByID names
included), group members, selector targets and profile pins (which may name peers' models),
``preload`` and ``defaultModel``.
A new top-level section gets its own ``resolve_<section>.py`` and one call here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from .macros import _expand_macros, _macro_defs
from .model import DEFAULT_GROUP, Config, ModelConfig, peer_index
from .problems import _Report
from .resolve_browser import _allowed_hosts, _cors_origins
from .resolve_groups import _resolve_groups
from .resolve_history import _resolve_history
from .resolve_instances import _resolve_instances
from .resolve_memory import _resolve_memory, _resolve_slot_cache
from .resolve_models import _resolve_model
from .resolve_peers import _resolve_peers
from .resolve_routing import _resolve_router, _resolve_scheduler
from .resolve_profiles import _resolve_profiles
from .resolve_selectors import _in_one_shared_group, _resolve_selectors
from .resolve_upstream import _resolve_upstream
from .schema import RawConfig, RawModel

__all__ = ["_resolve"]

_UI_ONLY = "accepted; only tunes llama-swap's own UI or logs, swapproxy ignores it"
_UI_ONLY_KEYS = ("logRequests", "logTimeFormat", "ui")


def _resolve(report: _Report, raw: RawConfig, raw_models: dict[str, RawModel], ids: list[str],
             environ: Mapping[str, str], port_hints: Mapping[str, int]) -> Config | None:
    """The resolved Config; None when any stage so far (this one included) found a problem."""
    for key in _UI_ONLY_KEYS:
        if key in raw.model_fields_set:
            report.notice((key,), _UI_ONLY)
    global_defs = _macro_defs(report, raw.macros, ("macros",))
    global_macros = _expand_macros(report, global_defs, set())  # bad references reported even if unused
    router, matrix = _resolve_router(report, raw, ids)
    groups, unknown_members = _resolve_groups(report, raw, ids) if router == "group" else ([], [])
    group_of = {member: g.name for g in groups for member in g.members}
    models: dict[str, ModelConfig] = {}
    next_port = raw.startPort
    owner: dict[str, str] = {}
    for mid, raw_model in raw_models.items():
        models[mid], next_port, alias_paths = _resolve_model(
            report, raw, mid, raw_model, global_defs, next_port, group_of.get(mid, DEFAULT_GROUP), port_hints)
        for alias, path in zip(models[mid].aliases, alias_paths):
            if not alias:
                report.problem(path, "an alias must not be empty")
            elif alias == mid:
                pass  # a model may list its own id among its names, as llama-server's --alias may
            elif alias in ids:
                report.problem(path, f"alias '{alias}' is also a model id")
            elif alias in owner:
                report.problem(path, f"alias '{alias}' is already used by model '{owner[alias]}'")
            else:
                owner[alias] = mid

    def find(name: str) -> str | None:
        return name if name in ids else owner.get(name)

    peers = _resolve_peers(report, raw, global_macros, {**{m: m for m in ids}, **owner})
    peer_names = peer_index(peers)

    def peer(name: str) -> str | None:
        """A peer model's ``peer/model``, when ``name`` reaches one and is no local name."""
        route = peer_names.get(name) if find(name) is None else None
        return route.fqn if route is not None else None

    def is_selector(name: str) -> str:
        return " (it is a selector; name a model)" if name in raw.selectors else ""

    for path, member in unknown_members:
        hint = f" ('{member}' is an alias of '{owner[member]}')" if member in owner else is_selector(member)
        report.problem(path, f"'{member}' is not a model id defined in models{hint}")
    # Which models may run together is the router's rule: all in one group without swap, or
    # all in one combination of one matrix set.
    together = ((lambda targets: None if matrix.can_contain_all(targets) else
                 "spillover targets must all appear together in one combination of one matrix set")
                if matrix is not None else (lambda targets: _in_one_shared_group(groups, targets)))
    selectors = _resolve_selectors(report, raw, find, together, peer)
    profiles = _resolve_profiles(report, raw, find, raw.selectors, peer)
    ignore_paths = _resolve_upstream(report, raw)

    preload: list[str] = []
    for i, name in enumerate(raw.hooks.on_startup.preload):
        target = find(name.strip())
        if target is None:
            report.problem(("hooks", "on_startup", "preload", i),
                           f"'{name}' is not a model id or alias{is_selector(name.strip())}")
        elif target not in preload:
            preload.append(target)
    scheduler = _resolve_scheduler(report, raw, {**{m: m for m in ids}, **owner})
    memory = _resolve_memory(report, raw)
    slot_budget = _resolve_slot_cache(report, raw, raw_models)
    default_model = find(raw.defaultModel) if raw.defaultModel is not None else None
    if raw.defaultModel is not None and default_model is None:
        report.problem(("defaultModel",), f"'{raw.defaultModel}' is not a model id or alias")
    for field_name in ("apiKeys", "inferenceApiKeys", "managementApiKeys"):
        for i, key in enumerate(getattr(raw, field_name)):
            if not key or any(c.isspace() for c in key):
                report.problem((field_name, i), "an API key must be non-empty, without whitespace")
    cors_origins, allowed_hosts = _cors_origins(report, raw), _allowed_hosts(report, raw)
    instances = _resolve_instances(report, raw)
    history = _resolve_history(report, raw)
    if report.problems:
        return None
    notices = sorted(dict.fromkeys(report.notices), key=report.position)
    return Config(
        file=report.file, health_check_timeout=raw.healthCheckTimeout, log_level=raw.logLevel,
        log_to_stdout=raw.logToStdout, start_port=raw.startPort, global_ttl=raw.globalTTL,
        unload_timeout=raw.unloadTimeout, api_keys=tuple(raw.apiKeys),
        inference_keys=tuple(raw.inferenceApiKeys), management_keys=tuple(raw.managementApiKeys),
        send_loading_state=raw.sendLoadingState,
        include_aliases_in_list=raw.includeAliasesInList, preload=tuple(preload),
        groups=tuple(groups), default_model=default_model,
        max_request_body_mb=raw.maxRequestBodyMB, models=models, selectors=selectors, profiles=profiles, peers=peers,
        upstream_ignore_paths=ignore_paths,
        breaker_failures=raw.circuitBreaker.failures, breaker_window=raw.circuitBreaker.window,
        breaker_backoff=raw.circuitBreaker.backoff,
        state_dir=_state_dir(environ, raw.stateDir), router=router, matrix=matrix, scheduler=scheduler,
        memory=memory, slot_cache_budget=slot_budget, cors_origins=cors_origins, allowed_hosts=allowed_hosts, instances=instances,
        history=history,
        notices=tuple(str(n) for n in notices))


def _state_dir(environ: Mapping[str, str], value: str | None) -> str | None:
    """stateDir as given; unset means $XDG_STATE_HOME/swapproxy (or ~/.local/state/swapproxy)."""
    if value is not None:
        return os.path.expanduser(value) or None
    base = environ.get("XDG_STATE_HOME") or os.path.join(
        environ.get("HOME") or os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "swapproxy")
