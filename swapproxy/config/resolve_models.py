"""Resolution of one ``models.<id>`` entry into a :class:`~swapproxy.config.ModelConfig`.

Macros (global, then the model's own), ``${MODEL_ID}`` and ``${PORT}`` (the next free port
from ``startPort`` upward, or the one the model had before a reload), ``cmd`` and ``cmdStop``
split into argv without a shell, the proxy URL (given, from ``${PORT}``, or guessed from the
cmd's one ``--port N``), env entries, filters, capabilities and the defaults the top level sets.
Each ``filters.setParamsByID`` name other than the model's id becomes one more alias, after
the explicit ones (as llama-swap registers them); :func:`_resolve_model` says where each alias
was written, so that a clash is reported there.
"""

from __future__ import annotations

import re
import shlex
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from .macros import _expand_macros, _macro_defs, _MacroDef, _Scope
from .model import COMFYUI_MODEL, FiltersConfig, ModelConfig, _FrozenDict
from .problems import _KeyPath, _Report
from .resolve_memory import _resolve_footprint
from .schema import RawCapabilities, RawConfig, RawFilters, RawModel, RawTimeouts
from .validate import _translate

__all__ = ["_argv", "_check_url", "_filters", "_resolve_model", "_unused_timeouts"]

_PORT_OPTION = re.compile(r"--(?:listen-)?port(?:=(\d+))?")


def _strip_comments(text: str) -> str:
    return "\n".join(ln for ln in text.splitlines() if not ln.strip().startswith("#"))


def _port_in_argv(argv: Sequence[str]) -> int | None:
    """The one port a command's ``--port N`` / ``--listen-port N`` options name, if exactly one."""
    found: set[str] = set()
    for i, arg in enumerate(argv):
        match = _PORT_OPTION.fullmatch(arg)
        if match:
            found.add(match.group(1) or (argv[i + 1] if i + 1 < len(argv) else ""))
    value = found.pop() if len(found) == 1 else ""
    return int(value) if value.isdigit() and 0 < int(value) < 65536 else None


def _resolve_model(report: _Report, raw: RawConfig, mid: str, m: RawModel,
                   global_defs: Mapping[str, _MacroDef], next_port: int, group: str,
                   port_hints: Mapping[str, int]) -> tuple[ModelConfig, int, list[_KeyPath]]:
    """One model resolved; also the next free ``${PORT}`` for the models after it, and the key
    path each of its aliases was written at (``aliases[i]`` or a ``setParamsByID`` name)."""
    base: _KeyPath = ("models", mid)
    defs = dict(global_defs)
    defs.update(_macro_defs(report, m.macros, (*base, "macros")))  # an override keeps its place
    scope = _Scope(report, mid)
    scope.macros = _expand_macros(report, defs, scope.bad_refs)

    cmd_text = scope.user(_strip_comments(m.cmd))
    if "${PORT}" in cmd_text and mid in port_hints:
        scope.port = port_hints[mid]
    elif "${PORT}" in cmd_text:
        kept = set(port_hints.values())
        while next_port in kept:  # another model keeps that one across the reload
            next_port += 1
        scope.port, next_port = next_port, next_port + 1
        if scope.port > 65535:
            report.problem((*base, "cmd"), f"${{PORT}} would be {scope.port}, above 65535")
    cmd = _argv(report, scope.finish(cmd_text, (*base, "cmd")), (*base, "cmd"))
    stop_text = scope.text(_strip_comments(m.cmdStop), (*base, "cmdStop"), allow_pid=True)
    cmd_stop = _argv(report, stop_text, (*base, "cmdStop"), required=False) or None

    check = scope.text(m.checkEndpoint, (*base, "checkEndpoint")).strip()
    if m.ttl < 0 and m.ttl != -1:
        report.problem((*base, "ttl"), "ttl must be -1 (use globalTTL), 0 (never) or seconds")
    env: dict[str, str] = {}
    for i, entry in enumerate(m.env):
        name, sep, value = scope.text(entry, (*base, "env", i)).partition("=")
        if not sep or not name.strip() or any(c.isspace() for c in name.strip()):
            report.problem((*base, "env", i), f"an env entry must look like NAME=value "
                                              f"(got {entry!r})")
        env[name.strip()] = value
    _unused_timeouts(report, m.timeouts, (*base, "timeouts"))
    for i, alias in enumerate(m.aliases):
        if not isinstance(alias, str) and alias.model_fields_set - {"id"}:
            report.notice((*base, "aliases", i), "alias name/description/unlisted are accepted; "
                                                 "swapproxy lists an alias like its model")
    capabilities = None
    if m.capabilities is not None:
        capabilities = scope.value(m.capabilities, (*base, "capabilities"))
        try:
            RawCapabilities.model_validate(capabilities)
        except ValidationError as exc:
            _translate(report, exc, (*base, "capabilities"), RawCapabilities)

    filters, by_id_paths = _filters(report, scope, m.filters, (*base, "filters"))
    aliases = [scope.text(a if isinstance(a, str) else a.id, (*base, "aliases", i)).strip()
               for i, a in enumerate(m.aliases)]
    alias_paths: list[_KeyPath] = [(*base, "aliases", i) for i in range(len(aliases))]
    for name, path in by_id_paths.items():  # each name the request may use becomes an alias
        if name != mid and name not in aliases:
            aliases.append(name)
            alias_paths.append(path)
    comfyui = mid == COMFYUI_MODEL  # llama-swap's ComfyUI model: many requests, WebSockets never count
    model = ModelConfig(
        id=mid, cmd=cmd, cmd_stop=cmd_stop, proxy=_proxy(report, scope, m, cmd, base),
        check_endpoint=None if check.lower() == "none" else "/" + check.lstrip("/"),
        ttl=raw.globalTTL if m.ttl == -1 else max(m.ttl, 0.0),
        unload_timeout=m.unloadTimeout or raw.unloadTimeout,
        health_check_timeout=raw.healthCheckTimeout,
        aliases=tuple(aliases),
        env=_FrozenDict(env),
        use_model_name=scope.text(m.useModelName, (*base, "useModelName")) or None,
        unlisted=m.unlisted,
        name=scope.text(m.name, (*base, "name")) or None,
        description=scope.text(m.description, (*base, "description")) or None,
        metadata=scope.value(m.metadata, (*base, "metadata")),
        capabilities=capabilities,
        concurrency_limit=max(m.concurrencyLimit or 10, 50 if comfyui else 0),
        filters=filters,
        send_loading_state=(raw.sendLoadingState if m.sendLoadingState is None
                            else m.sendLoadingState),
        connect_timeout=m.timeouts.connect,
        response_header_timeout=m.timeouts.responseHeader,
        response_idle_timeout=m.timeouts.responseIdle,
        port=scope.port, group=group,
        upstream_api_key=scope.text(m.apiKey, (*base, "apiKey")) or None,
        memory=_resolve_footprint(report, m.memory, (*base, "memory")),
        slot_cache=bool(m.slotCache),
        slot_save_timeout=(m.slotCache.saveTimeout if not isinstance(m.slotCache, bool) and m.slotCache.saveTimeout
                           else raw.slotCache.saveTimeout),
        tags=_tags(scope, m.tags, (*base, "tags")),
        ignore_websockets=m.compat.ignoreWebsockets or comfyui)
    return model, next_port, alias_paths


def _unused_timeouts(report: _Report, timeouts: RawTimeouts, base: _KeyPath) -> None:
    """A notice for each of llama-swap's transport timeouts that swapproxy accepts and does not use."""
    for key in ("keepalive", "tlsHandshake", "idleConn", "expectContinue"):
        if key in timeouts.model_fields_set:
            report.notice((*base, key), "accepted; swapproxy does not use it")


def _check_url(report: _Report, url: str, path: _KeyPath, what: str = "proxy") -> str:
    """``url`` without its trailing slash; a problem at ``path`` unless it is an http(s):// URL with a host."""
    try:
        parts = urllib.parse.urlsplit(url)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname)
        _ = parts.port  # raises on a malformed port
    except ValueError:
        valid = False
    if not valid:
        report.problem(path, f"{what} must be an http(s):// URL (got {url!r})")
    return url.rstrip("/")


def _tags(scope: _Scope, tags: list[str] | str, path: _KeyPath) -> tuple[str, ...]:
    """A list, or one comma-separated string as llama-server's ``--tags`` takes it."""
    items = tags.split(",") if isinstance(tags, str) else tags
    out: list[str] = []
    for item in items:
        tag = scope.text(item, path).strip()
        if tag and tag not in out:
            out.append(tag)
    return tuple(out)


def _argv(report: _Report, text: str, path: _KeyPath, required: bool = True) -> tuple[str, ...]:
    """Split a command (never through a shell); a trailing backslash continues a line."""
    lines = [ln.rstrip() for ln in text.splitlines()]
    joined = "\n".join(ln[:-1] if ln.endswith("\\") else ln for ln in lines)
    try:
        args = tuple(shlex.split(joined))
    except ValueError as exc:
        report.problem(path, f"cannot split the command into arguments: {exc}")
        return ()
    if required and not args:
        report.problem(path, "the command is empty")
    return args


def _proxy(report: _Report, scope: _Scope, m: RawModel, cmd: tuple[str, ...], base: _KeyPath) -> str:
    if m.proxy is not None:
        text = scope.user(m.proxy)
        if "${PORT}" in text and scope.port is None:
            report.problem((*base, "proxy"), "proxy uses ${PORT} but cmd does not; "
                                             "${PORT} is only assigned when cmd uses it")
            return ""
        url = scope.finish(text, (*base, "proxy")).strip()
    elif scope.port is not None:
        url = f"http://127.0.0.1:{scope.port}"
    elif (guessed := _port_in_argv(cmd)) is not None:
        # llama-swap itself would refuse this model; its own docker examples ship such
        # models, so take the port the command listens on and say so.
        url = f"http://127.0.0.1:{guessed}"
        report.notice(base, f"no proxy and no ${{PORT}} in cmd; using {url} from the cmd's "
                            f"port option (set proxy to make it explicit)")
    else:
        report.problem(base, "proxy is required when cmd does not use ${PORT}")
        return ""
    return _check_url(report, url, (*base, "proxy"))


def _params(report: _Report, scope: _Scope, params: Mapping[str, Any], base: _KeyPath) -> dict[str, Any]:
    """``setParams``-style keys with macros expanded; ``model`` is never forced (a notice says so)."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        if key == "model":
            report.notice((*base, key), "removed; the model parameter is never overridden (use useModelName)")
        else:
            out[key] = scope.value(value, (*base, key))
    return out


def _filters(report: _Report, scope: _Scope, f: RawFilters,
             base: _KeyPath) -> tuple[FiltersConfig, dict[str, _KeyPath]]:
    """The filters, and each ``setParamsByID`` name (macros expanded) with the path it was written at."""
    path = (*base, "stripParams")
    text = f.stripParams
    if f.strip_params is not None:
        report.notice((*base, "strip_params"), "older spelling of stripParams; accepted")
        text = ",".join(t for t in (text, f.strip_params) if t)
    strip: list[str] = []
    for name in scope.text(text, path).split(","):
        if name.strip() == "model":
            report.notice(path, "'model' removed; the model parameter is never stripped")
        elif name.strip() and name.strip() not in strip:
            strip.append(name.strip())
    by_id: dict[str, Any] = {}
    paths: dict[str, _KeyPath] = {}
    for key, params in f.setParamsByID.items():
        path = (*base, "setParamsByID", key)
        name = scope.text(key, path).strip()
        if not name:
            report.problem(path, "a setParamsByID name must not be empty")
        elif name in paths:
            report.problem(path, f"names '{paths[name][-1]}' and '{key}' both resolve to '{name}'")
        else:
            paths[name] = path
            by_id[name] = _FrozenDict(_params(report, scope, params, path))
    set_params = _params(report, scope, f.setParams, (*base, "setParams"))
    return FiltersConfig(tuple(strip), _FrozenDict(set_params), _FrozenDict(by_id)), paths
