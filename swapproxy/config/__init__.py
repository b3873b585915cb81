"""Read llama-swap's ``config.yaml`` unchanged and turn it into frozen, resolved objects.

The pipeline, in the order :func:`parse_config` runs it:

1. YAML is composed into nodes first, so every key path (``models.llama.ttl``) has a line
   number; then the same nodes are constructed into plain Python data.
2. Keys that change routing but that swapproxy does not implement yet (``matrix``, ``peers``,
   ``profiles``, ...) are rejected, one problem each; keys that only tune llama-swap's own UI,
   storage or log format are accepted with a one-line notice.
3. ``${env.VAR}`` is substituted in every string value.
4. The raw schema (:mod:`swapproxy.config_schema`: pydantic models whose field names are the
   camelCase keys users write) checks types and unknown keys; a typo gets a "did you mean"
   suggestion.
5. Per model: macros (global, then the model's own; a macro may use those defined before it),
   ``${MODEL_ID}``, ``${PORT}`` (assigned from ``startPort`` upward in config order), ``cmd``
   split into argv, defaults applied. Then groups, aliases, ``preload`` and ``defaultModel``
   are cross-checked.

Nothing stops at the first mistake: every problem is collected with ``file:line: key.path:``
and raised together as one :class:`ConfigError`. :func:`json_schema` (from the schema module)
exposes the raw schema.

Where swapproxy deliberately differs from llama-swap: unknown keys are errors (llama-swap
ignores them); ``${PORT}`` follows config order (llama-swap sorts the ids); the default proxy
is ``http://127.0.0.1:${PORT}`` (not ``localhost``, which may resolve to ::1 first);
``healthCheckTimeout`` is not raised to 15; group members, ``preload`` and ``defaultModel``
must name real models; and a model with neither ``proxy`` nor ``${PORT}`` whose cmd names
exactly one ``--port N`` / ``--listen-port N`` is proxied there with a notice (llama-swap
refuses it, yet its own docker example configs contain such models).
"""

from __future__ import annotations

import difflib
import os
import re
import shlex
import types
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from .config_schema import LogLevel, LogToStdout, RawCapabilities, RawConfig, RawFilters, RawModel, json_schema

__all__ = ["DEFAULT_GROUP", "Config", "ConfigError", "FiltersConfig", "GroupConfig", "LogLevel",
           "LogToStdout", "ModelConfig", "Problem", "json_schema", "load_config", "parse_config"]


#: Name of the implicit group holding every model that no configured group lists.
DEFAULT_GROUP = "(default)"

_KeyPath = tuple[Any, ...]
_MacroDef = tuple[Any, _KeyPath]  # (value, where it is defined)
_M = TypeVar("_M", bound=BaseModel)
_RESERVED = frozenset({"PORT", "PID", "MODEL_ID"})
_REF = re.compile(r"\$\{([A-Za-z0-9_-]+)\}")
_ENV_REF = re.compile(r"\$\{env\.([A-Za-z_][A-Za-z0-9_]*)\}")
_PORT_OPTION = re.compile(r"--(?:listen-)?port(?:=(\d+))?")
_NOT_YET = "not supported by swapproxy yet"
_UI_ONLY = "accepted; only tunes llama-swap's own UI/storage, swapproxy ignores it"
_UI_ONLY_KEYS = ("logRequests", "metricsMaxInMemory", "captureBuffer", "logTimeFormat",
                 "performance", "ui", "store")
# keys that change routing and that swapproxy does not implement yet; "*" is any model id
_UNSUPPORTED = (("matrix",), ("peers",), ("profiles",), ("selectors",), ("upstream",),
                ("routing", "router", "settings", "matrix"), ("routing", "scheduler", "settings"),
                ("models", "*", "compat"), ("models", "*", "filters", "setParamsByID"))
_TYPE_MESSAGES = {"model_type": "expected a mapping", "dict_type": "expected a mapping",
                  "list_type": "expected a list", "string_type": "expected a string"}


# --------------------------------------------------------------------------- problems


@dataclass(frozen=True)
class Problem:
    """One mistake in a config file; ``line`` is 1-based, 0 when unknown."""

    file: str
    line: int
    key_path: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.key_path}: {self.message}"


class ConfigError(Exception):
    """Every problem found while loading a config; ``str()`` gives one per line."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems: list[Problem] = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


# --------------------------------------------------------------------------- resolved objects


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
    """Request-body rewrites: keys to delete and keys to force (never ``model``)."""

    strip_params: tuple[str, ...] = ()
    set_params: Mapping[str, Any] = field(default_factory=_FrozenDict)


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
    send_loading_state: bool = False
    connect_timeout: float = 30.0  # 0 = none
    response_header_timeout: float = 0.0  # 0 = none
    response_idle_timeout: float = 0.0  # swapproxy: 0 = none; no body progress for this long cuts the response
    port: int | None = None  # the ${PORT} assigned to this model
    group: str = DEFAULT_GROUP
    upstream_api_key: str | None = None  # swapproxy: sent upstream as Bearer / x-api-key


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
    send_loading_state: bool = False
    include_aliases_in_list: bool = False
    preload: tuple[str, ...] = ()
    groups: tuple[GroupConfig, ...] = ()
    default_model: str | None = None
    max_request_body_mb: float = 256.0
    breaker_failures: int = 3  # start failures within breaker_window that open the breaker; 0 = off
    breaker_window: float = 60.0
    state_dir: str | None = None  # where pid records live; None = no records
    models: Mapping[str, ModelConfig]
    notices: tuple[str, ...] = ()
    _alias_index: Mapping[str, str] = field(init=False, repr=False, compare=False)
    _group_index: Mapping[str, GroupConfig] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # frozen dataclass: indexes are computed once here, hence object.__setattr__
        models = _FrozenDict(self.models)
        object.__setattr__(self, "models", models)
        if not self.groups and models:
            object.__setattr__(self, "groups", (GroupConfig(DEFAULT_GROUP, members=tuple(models)),))
        aliases = {a: m.id for m in models.values() for a in m.aliases}
        object.__setattr__(self, "_alias_index", _FrozenDict(aliases))
        groups = {member: g for g in self.groups for member in g.members}
        object.__setattr__(self, "_group_index", _FrozenDict(groups))

    @property
    def all_keys(self) -> tuple[str, ...]:
        """Every client key of every tier (to keep them out of upstream environments)."""
        return (*self.api_keys, *self.inference_keys, *self.management_keys)

    def resolve(self, name: str) -> str | None:
        """Model id or alias -> model id; None when neither."""
        return name if name in self.models else self._alias_index.get(name)

    def group_of(self, model_id: str) -> GroupConfig:
        """The group holding ``model_id``; KeyError for an unknown id."""
        try:
            return self._group_index[model_id]
        except KeyError:
            raise KeyError(f"model {model_id!r} is in no group") from None


# --------------------------------------------------------------------------- entry points


def load_config(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None,
                previous: Config | None = None) -> Config:
    """Read and resolve a config file; raises ConfigError listing every problem.

    With ``previous`` (a reload), each model that uses ${PORT} keeps the port it
    had, so an unchanged model's command stays unchanged."""
    file = os.fspath(path)
    try:
        text = Path(file).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([Problem(file, 0, "(file)", f"cannot read the config: {exc}")]) from exc
    return parse_config(text, file=file, environ=environ, previous=previous)


def parse_config(text: str, file: str = "<config>", environ: Mapping[str, str] | None = None,
                 previous: Config | None = None) -> Config:
    """Resolve config text; ``file`` only labels problems. ``environ`` defaults to os.environ."""
    loader = _Loader(file, os.environ if environ is None else environ)
    if previous is not None:
        loader.port_hints = {mid: m.port for mid, m in previous.models.items() if m.port is not None}
    return loader.load(text)


# --------------------------------------------------------------------------- helpers


def _dotted(path: _KeyPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) and not isinstance(part, bool) else (
            f".{part}" if out else str(part))
    return out or "(top)"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _fmt(value: Any) -> str:
    """A macro value as text, spelled the way llama-swap (Go's %v) spells it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _strip_comments(text: str) -> str:
    return "\n".join(ln for ln in text.splitlines() if not ln.strip().startswith("#"))


def _suggest(key: str, candidates: Iterable[str]) -> str:
    by_lower = {c.lower(): c for c in candidates}
    close = difflib.get_close_matches(key.lower(), list(by_lower), n=1, cutoff=0.6)
    return f"unknown key '{key}'" + (f"; did you mean '{by_lower[close[0]]}'?" if close else "")


def _unwrap_optional(tp: Any) -> Any:
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        return args[0] if args else tp
    return tp


def _keys_at(root: type[BaseModel], loc: Sequence[Any]) -> list[str]:
    """The keys the schema allows at ``loc`` (for "did you mean")."""
    tp: Any = root
    for part in loc:
        tp = _unwrap_optional(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            hits = [f for n, f in tp.model_fields.items() if (f.alias or n) == part]
            if not hits:
                return []
            tp = hits[0].annotation
        elif get_origin(tp) in (dict, list):
            tp = get_args(tp)[-1]
        else:
            return []
    tp = _unwrap_optional(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [f.alias or n for n, f in tp.model_fields.items()]
    return []


def _matches(data: Any, pattern: _KeyPath, path: _KeyPath = ()) -> Iterator[_KeyPath]:
    """The key paths in ``data`` that ``pattern`` names ("*" matches any key)."""
    if not pattern:
        yield path
    elif isinstance(data, dict):
        for key in data if pattern[0] == "*" else [pattern[0]] if pattern[0] in data else []:
            yield from _matches(data[key], pattern[1:], (*path, key))


def _port_in_argv(argv: Sequence[str]) -> int | None:
    """The one port a command's ``--port N`` / ``--listen-port N`` options name, if exactly one."""
    found: set[str] = set()
    for i, arg in enumerate(argv):
        match = _PORT_OPTION.fullmatch(arg)
        if match:
            found.add(match.group(1) or (argv[i + 1] if i + 1 < len(argv) else ""))
    value = found.pop() if len(found) == 1 else ""
    return int(value) if value.isdigit() and 0 < int(value) < 65536 else None


# --------------------------------------------------------------------------- macro scope


class _Scope:
    """Macro substitution inside one model: user macros first, then the reserved ones."""

    def __init__(self, loader: _Loader, model_id: str) -> None:
        self.loader = loader
        self.model_id = model_id
        self.macros: Mapping[str, Any] = {}
        self.bad_refs: set[str] = set()  # reported where a macro definition uses them
        self.port: int | None = None

    def user(self, text: str) -> str:
        """Expand user macros only; reserved and unknown references stay as written."""
        return _REF.sub(lambda m: _fmt(self.macros[m[1]]) if m[1] in self.macros else m[0], text)

    def finish(self, text: str, path: _KeyPath, allow_pid: bool = False) -> str:
        """Expand ${MODEL_ID} and ${PORT}; report ${PID} outside cmdStop and unknown names."""

        def reserved(match: re.Match[str]) -> str:
            name = match[1]
            if name == "MODEL_ID":
                return self.model_id
            if name == "PORT" and self.port is not None:
                return str(self.port)
            if name == "PORT":
                self.loader.problem(path, "${PORT} is only available when cmd uses ${PORT}")
            elif name == "PID" and not allow_pid:
                self.loader.problem(path, "${PID} is only available in cmdStop")
            elif name != "PID" and name not in self.bad_refs:
                self.loader.problem(path, f"unknown macro '${{{name}}}'")
            return match[0]

        return _REF.sub(reserved, text)

    def text(self, text: str, path: _KeyPath, allow_pid: bool = False) -> str:
        return self.finish(self.user(text), path, allow_pid)

    def value(self, value: Any, path: _KeyPath) -> Any:
        """Substitute inside nested data; a string that is exactly one macro keeps its type."""
        if isinstance(value, str):
            exact = _REF.fullmatch(value)
            if exact and not isinstance(self.macros.get(exact[1], ""), str):
                return self.macros[exact[1]]
            if exact and exact[1] == "PORT" and self.port is not None:
                return self.port
            return self.text(value, path)
        if isinstance(value, dict):
            return _FrozenDict({k: self.value(v, (*path, k)) for k, v in value.items()})
        if isinstance(value, (list, tuple)):
            return tuple(self.value(v, (*path, i)) for i, v in enumerate(value))
        return value


# --------------------------------------------------------------------------- loader


class _Loader:
    """One load: holds the line index and collects problems and notices."""

    def __init__(self, file: str, environ: Mapping[str, str]) -> None:
        self.file = file
        self.environ = environ
        self.port_hints: dict[str, int] = {}  # model id -> ${PORT} it had before a reload
        self.lines: dict[_KeyPath, int] = {}
        self.problems: list[Problem] = []
        self.notices: list[Problem] = []

    def line_of(self, path: _KeyPath) -> int:
        for end in range(len(path), 0, -1):  # a missing key reports its parent's line
            if path[:end] in self.lines:
                return self.lines[path[:end]]
        return 0

    def problem(self, path: _KeyPath, message: str) -> None:
        self.problems.append(Problem(self.file, self.line_of(path), _dotted(path), message))

    def notice(self, path: _KeyPath, message: str) -> None:
        self.notices.append(Problem(self.file, self.line_of(path), _dotted(path), message))

    def error(self) -> ConfigError:
        return ConfigError(sorted(dict.fromkeys(self.problems), key=lambda p: (p.line, p.key_path)))

    def load(self, text: str) -> Config:
        data = self.parse(text)
        if not isinstance(data, dict):
            kind = type(data).__name__
            raise ConfigError([Problem(self.file, 1, "(top)",
                                       f"the top level must be a mapping of settings, not {kind}")])
        data = self.substitute_env(data, (), self.find_unsupported(data))
        raw, models, ids = self.validate(data)
        config = self.build(raw, models, ids) if raw is not None else None
        if config is None or self.problems:
            raise self.error()
        return config

    # ----- stage 1: YAML with line numbers

    def parse(self, text: str) -> Any:
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                raise ConfigError([Problem(self.file, 0, "(top)", "the config is empty")])
            self.index(node, ())
            return loader.construct_document(node)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            message = " ".join(str(p) for p in (exc.context, exc.problem) if p)
            raise ConfigError([Problem(self.file, mark.line + 1 if mark else 0, "(yaml)",
                                       f"invalid YAML: {message}")]) from None
        except yaml.YAMLError as exc:
            raise ConfigError([Problem(self.file, 0, "(yaml)", f"invalid YAML: {exc}")]) from None
        finally:
            loader.dispose()

    def index(self, node: yaml.Node, path: _KeyPath) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if not isinstance(key, yaml.ScalarNode) or key.value == "<<":
                    continue
                sub = (*path, key.value)
                if sub in self.lines:  # PyYAML would silently keep the last one
                    self.problems.append(Problem(self.file, key.start_mark.line + 1, _dotted(sub),
                                                 f"duplicate key; first on line {self.lines[sub]}"))
                    continue
                self.lines[sub] = key.start_mark.line + 1
                self.index(value, sub)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self.lines[(*path, i)] = item.start_mark.line + 1
                self.index(item, (*path, i))

    # ----- stage 2 and 3: unsupported keys, ${env.VAR}

    def find_unsupported(self, data: dict[Any, Any]) -> set[_KeyPath]:
        """Report the keys swapproxy does not implement yet; return their paths, to drop."""
        found = {path: f"'{path[-1]}' is {_NOT_YET}"
                 for pattern in _UNSUPPORTED for path in _matches(data, pattern)}
        for path in _matches(data, ("routing", "router", "use")):
            if data["routing"]["router"]["use"] == "matrix":
                found[path] = f"the matrix router is {_NOT_YET}"
        for path, message in found.items():
            self.problem(path, message)
        return set(found)

    def substitute_env(self, value: Any, path: _KeyPath, drop: set[_KeyPath]) -> Any:
        """Copy ``value`` with ${env.VAR} replaced in strings and the ``drop`` paths left out."""
        if isinstance(value, str):
            return _ENV_REF.sub(lambda m: self.env_value(m, path), value)
        if isinstance(value, dict):
            return {k: self.substitute_env(v, (*path, k), drop)
                    for k, v in value.items() if (*path, k) not in drop}
        if isinstance(value, list):
            return [self.substitute_env(v, (*path, i), drop) for i, v in enumerate(value)]
        return value

    def env_value(self, match: re.Match[str], path: _KeyPath) -> str:
        value = self.environ.get(match[1])
        if value is None:
            self.problem(path, f"environment variable '{match[1]}' is not set (used as {match[0]})")
            return match[0]
        return value

    # ----- stage 4: schema

    def validate(self, data: dict[Any, Any]) -> tuple[RawConfig | None, dict[str, RawModel],
                                                      list[str]]:
        """Validate each model on its own, so one broken model hides nothing in the others."""
        top, ids, models = dict(data), list[str](), dict[str, RawModel]()
        if isinstance(data.get("models"), dict):
            top["models"] = {}
            if not data["models"]:
                self.problem(("models",), "no models are defined")
            for mid, model in data["models"].items():
                if not isinstance(mid, str):
                    self.problem(("models", mid), "a model id must be a string; quote it")
                    continue
                ids.append(mid)
                if (checked := self.checked(RawModel, model, ("models", mid))) is not None:
                    models[mid] = checked
        return self.checked(RawConfig, top, ()), models, ids

    def checked(self, schema: type[_M], data: Any, prefix: _KeyPath) -> _M | None:
        """Validate; on errors report them, then retry without the offending keys so that
        the rest is still resolved and checked (defaults stand in for what was dropped)."""
        try:
            return schema.model_validate(data)
        except ValidationError as exc:
            self.translate(exc, prefix, schema)
            bad = {err["loc"][0] for err in exc.errors() if err["loc"]}
        try:
            return schema.model_validate({k: v for k, v in data.items() if k not in bad})
        except (ValidationError, AttributeError):
            return None

    def translate(self, exc: ValidationError, prefix: _KeyPath, root: type[BaseModel]) -> None:
        for err in exc.errors(include_url=False):
            loc = tuple(p for p in err["loc"] if p != "[key]")
            if err["type"] == "extra_forbidden":
                self.problem((*prefix, *loc), _suggest(str(loc[-1]), _keys_at(root, loc[:-1])))
            elif err["type"] == "missing":
                self.problem((*prefix, *loc), "required key is missing")
            else:
                message = _TYPE_MESSAGES.get(err["type"], err["msg"])
                self.problem((*prefix, *loc), f"{message} (got {_short(err.get('input'))})")

    # ----- stage 5: resolve

    def macro_defs(self, macros: Mapping[str, Any], base: _KeyPath) -> dict[str, _MacroDef]:
        out: dict[str, _MacroDef] = {}
        for name, value in macros.items():
            path = (*base, name)
            if not _REF.fullmatch(f"${{{name}}}"):
                self.problem(path, "a macro name must match ^[A-Za-z0-9_-]+$")
            elif len(name) >= 64:
                self.problem(path, "a macro name must be shorter than 64 characters")
            elif name in _RESERVED:
                self.problem(path, f"'{name}' is reserved and cannot be defined as a macro")
            elif not isinstance(value, (str, int, float)):
                self.problem(path, f"a macro value must be a string, number or boolean "
                                   f"(got {type(value).__name__})")
            else:
                out[name] = (value, path)
        return out

    def expand_macros(self, defs: Mapping[str, _MacroDef], bad: set[str]) -> dict[str, Any]:
        """Expand each macro with those defined before it; reserved names stay for later.
        Names reported here are added to ``bad`` so their uses are not reported again."""
        names, done = list(defs), dict[str, Any]()
        for index, (name, (value, path)) in enumerate(defs.items()):
            if isinstance(value, str):
                later = names[index + 1:]

                def earlier(m: re.Match[str], name: str = name, path: _KeyPath = path,
                            later: list[str] = later) -> str:
                    if m[1] in done:
                        return _fmt(done[m[1]])
                    if m[1] not in _RESERVED:
                        bad.add(m[1])
                    if m[1] == name:
                        self.problem(path, f"macro '{name}' refers to itself")
                    elif m[1] in later:
                        self.problem(path, f"'{m[0]}' is defined after '{name}'; a macro can "
                                           f"only use macros defined before it")
                    elif m[1] not in _RESERVED:
                        self.problem(path, f"unknown macro '{m[0]}'")
                    return m[0]

                value = _REF.sub(earlier, value)
            done[name] = value
        return done

    def build(self, raw: RawConfig, raw_models: dict[str, RawModel],
              ids: list[str]) -> Config | None:
        for key in _UI_ONLY_KEYS:
            if key in raw.model_fields_set:
                self.notice((key,), _UI_ONLY)
        global_defs = self.macro_defs(raw.macros, ("macros",))
        self.expand_macros(global_defs, set())  # report bad references even if unused
        groups, unknown_members = self.groups(raw, ids)
        group_of = {member: g.name for g in groups for member in g.members}
        models: dict[str, ModelConfig] = {}
        next_port = raw.startPort
        for mid, raw_model in raw_models.items():
            models[mid], next_port = self.model(raw, mid, raw_model, global_defs, next_port,
                                                group_of.get(mid, DEFAULT_GROUP))
        owner: dict[str, str] = {}
        for mid, model in models.items():
            for i, alias in enumerate(model.aliases):
                path = ("models", mid, "aliases", i)
                if not alias:
                    self.problem(path, "an alias must not be empty")
                elif alias in ids:
                    self.problem(path, f"alias '{alias}' is also a model id")
                elif alias in owner:
                    self.problem(path, f"alias '{alias}' is already used by model '{owner[alias]}'")
                else:
                    owner[alias] = mid
        for path, member in unknown_members:
            hint = f" ('{member}' is an alias of '{owner[member]}')" if member in owner else ""
            self.problem(path, f"'{member}' is not a model id defined in models{hint}")

        def find(name: str) -> str | None:
            return name if name in ids else owner.get(name)

        preload: list[str] = []
        for i, name in enumerate(raw.hooks.on_startup.preload):
            target = find(name.strip())
            if target is None:
                self.problem(("hooks", "on_startup", "preload", i),
                             f"'{name}' is not a model id or alias")
            elif target not in preload:
                preload.append(target)
        default_model = find(raw.defaultModel) if raw.defaultModel is not None else None
        if raw.defaultModel is not None and default_model is None:
            self.problem(("defaultModel",), f"'{raw.defaultModel}' is not a model id or alias")
        for field_name in ("apiKeys", "inferenceApiKeys", "managementApiKeys"):
            for i, key in enumerate(getattr(raw, field_name)):
                if not key or any(c.isspace() for c in key):
                    self.problem((field_name, i), "an API key must be non-empty, without whitespace")
        if self.problems:
            return None
        notices = sorted(dict.fromkeys(self.notices), key=lambda p: p.line)
        return Config(
            file=self.file, health_check_timeout=raw.healthCheckTimeout, log_level=raw.logLevel,
            log_to_stdout=raw.logToStdout, start_port=raw.startPort, global_ttl=raw.globalTTL,
            unload_timeout=raw.unloadTimeout, api_keys=tuple(raw.apiKeys),
            inference_keys=tuple(raw.inferenceApiKeys), management_keys=tuple(raw.managementApiKeys),
            send_loading_state=raw.sendLoadingState,
            include_aliases_in_list=raw.includeAliasesInList, preload=tuple(preload),
            groups=tuple(groups), default_model=default_model,
            max_request_body_mb=raw.maxRequestBodyMB, models=models,
            breaker_failures=raw.circuitBreaker.failures, breaker_window=raw.circuitBreaker.window,
            state_dir=self.state_dir(raw.stateDir),
            notices=tuple(str(n) for n in notices))

    def state_dir(self, value: str | None) -> str | None:
        """stateDir as given; unset means $XDG_STATE_HOME/swapproxy (or ~/.local/state/swapproxy)."""
        if value is not None:
            return os.path.expanduser(value) or None
        base = self.environ.get("XDG_STATE_HOME") or os.path.join(
            self.environ.get("HOME") or os.path.expanduser("~"), ".local", "state")
        return os.path.join(base, "swapproxy")

    def groups(self, raw: RawConfig, ids: list[str]) -> tuple[list[GroupConfig],
                                                                list[tuple[_KeyPath, str]]]:
        """Both spellings of groups, then ``(default)`` for the models none of them lists."""
        newer = raw.routing.router.settings.groups
        sources = ((("groups",), raw.groups), (("routing", "router", "settings", "groups"), newer))
        out: list[GroupConfig] = []
        unknown: list[tuple[_KeyPath, str]] = []
        member_of: dict[str, str] = {}
        for base, table in sources:
            for name, group in table.items():
                if name == DEFAULT_GROUP or any(g.name == name for g in out):
                    self.problem((*base, name), f"group name '{name}' is reserved or already used")
                    continue
                members: list[str] = []
                for i, member in enumerate(group.members):
                    path = (*base, name, "members", i)
                    if member not in ids:
                        unknown.append((path, member))
                    elif member in members:
                        self.problem(path, f"'{member}' is listed twice in this group")
                    elif member in member_of:
                        self.problem(path, f"'{member}' is already in group '{member_of[member]}'; "
                                           f"a model belongs to one group")
                    else:
                        members.append(member)
                        member_of[member] = name
                out.append(GroupConfig(name, group.swap, group.exclusive, group.persistent,
                                       tuple(members)))
        rest = tuple(mid for mid in ids if mid not in member_of)
        if rest:
            out.append(GroupConfig(DEFAULT_GROUP, members=rest))
        return out, unknown

    def model(self, raw: RawConfig, mid: str, m: RawModel,
              global_defs: Mapping[str, _MacroDef], next_port: int,
              group: str) -> tuple[ModelConfig, int]:
        base: _KeyPath = ("models", mid)
        defs = dict(global_defs)
        defs.update(self.macro_defs(m.macros, (*base, "macros")))  # an override keeps its place
        scope = _Scope(self, mid)
        scope.macros = self.expand_macros(defs, scope.bad_refs)

        cmd_text = scope.user(_strip_comments(m.cmd))
        if "${PORT}" in cmd_text and mid in self.port_hints:
            scope.port = self.port_hints[mid]
        elif "${PORT}" in cmd_text:
            kept = set(self.port_hints.values())
            while next_port in kept:  # another model keeps that one across the reload
                next_port += 1
            scope.port, next_port = next_port, next_port + 1
            if scope.port > 65535:
                self.problem((*base, "cmd"), f"${{PORT}} would be {scope.port}, above 65535")
        cmd = self.argv(scope.finish(cmd_text, (*base, "cmd")), (*base, "cmd"))
        stop_text = scope.text(_strip_comments(m.cmdStop), (*base, "cmdStop"), allow_pid=True)
        cmd_stop = self.argv(stop_text, (*base, "cmdStop"), required=False) or None

        check = scope.text(m.checkEndpoint, (*base, "checkEndpoint")).strip()
        if m.ttl < 0 and m.ttl != -1:
            self.problem((*base, "ttl"), "ttl must be -1 (use globalTTL), 0 (never) or seconds")
        env: dict[str, str] = {}
        for i, entry in enumerate(m.env):
            name, sep, value = scope.text(entry, (*base, "env", i)).partition("=")
            if not sep or not name.strip() or any(c.isspace() for c in name.strip()):
                self.problem((*base, "env", i), f"an env entry must look like NAME=value "
                                                f"(got {entry!r})")
            env[name.strip()] = value
        for key in ("keepalive", "tlsHandshake", "idleConn", "expectContinue"):
            if key in m.timeouts.model_fields_set:
                self.notice((*base, "timeouts", key), "accepted; swapproxy does not use it")
        for i, alias in enumerate(m.aliases):
            if not isinstance(alias, str) and alias.model_fields_set - {"id"}:
                self.notice((*base, "aliases", i), "alias name/description/unlisted are accepted; "
                                                   "swapproxy lists an alias like its model")
        capabilities = None
        if m.capabilities is not None:
            capabilities = scope.value(m.capabilities, (*base, "capabilities"))
            try:
                RawCapabilities.model_validate(capabilities)
            except ValidationError as exc:
                self.translate(exc, (*base, "capabilities"), RawCapabilities)

        model = ModelConfig(
            id=mid, cmd=cmd, cmd_stop=cmd_stop, proxy=self.proxy(scope, m, cmd, base),
            check_endpoint=None if check.lower() == "none" else "/" + check.lstrip("/"),
            ttl=raw.globalTTL if m.ttl == -1 else max(m.ttl, 0.0),
            unload_timeout=m.unloadTimeout or raw.unloadTimeout,
            health_check_timeout=raw.healthCheckTimeout,
            aliases=tuple(scope.text(a if isinstance(a, str) else a.id, (*base, "aliases", i)).strip()
                          for i, a in enumerate(m.aliases)),
            env=_FrozenDict(env),
            use_model_name=scope.text(m.useModelName, (*base, "useModelName")) or None,
            unlisted=m.unlisted,
            name=scope.text(m.name, (*base, "name")) or None,
            description=scope.text(m.description, (*base, "description")) or None,
            metadata=scope.value(m.metadata, (*base, "metadata")),
            capabilities=capabilities,
            concurrency_limit=m.concurrencyLimit or 10,
            filters=self.filters(scope, m.filters, (*base, "filters")),
            send_loading_state=(raw.sendLoadingState if m.sendLoadingState is None
                                else m.sendLoadingState),
            connect_timeout=m.timeouts.connect,
            response_header_timeout=m.timeouts.responseHeader,
            response_idle_timeout=m.timeouts.responseIdle,
            port=scope.port, group=group,
            upstream_api_key=scope.text(m.apiKey, (*base, "apiKey")) or None)
        return model, next_port

    def argv(self, text: str, path: _KeyPath, required: bool = True) -> tuple[str, ...]:
        """Split a command (never through a shell); a trailing backslash continues a line."""
        lines = [ln.rstrip() for ln in text.splitlines()]
        joined = "\n".join(ln[:-1] if ln.endswith("\\") else ln for ln in lines)
        try:
            args = tuple(shlex.split(joined))
        except ValueError as exc:
            self.problem(path, f"cannot split the command into arguments: {exc}")
            return ()
        if required and not args:
            self.problem(path, "the command is empty")
        return args

    def proxy(self, scope: _Scope, m: RawModel, cmd: tuple[str, ...], base: _KeyPath) -> str:
        if m.proxy is not None:
            text = scope.user(m.proxy)
            if "${PORT}" in text and scope.port is None:
                self.problem((*base, "proxy"), "proxy uses ${PORT} but cmd does not; "
                                               "${PORT} is only assigned when cmd uses it")
                return ""
            url = scope.finish(text, (*base, "proxy")).strip()
        elif scope.port is not None:
            url = f"http://127.0.0.1:{scope.port}"
        elif (guessed := _port_in_argv(cmd)) is not None:
            # llama-swap itself would refuse this model; its own docker examples ship such
            # models, so take the port the command listens on and say so.
            url = f"http://127.0.0.1:{guessed}"
            self.notice(base, f"no proxy and no ${{PORT}} in cmd; using {url} from the cmd's "
                              f"port option (set proxy to make it explicit)")
        else:
            self.problem(base, "proxy is required when cmd does not use ${PORT}")
            return ""
        try:
            parts = urllib.parse.urlsplit(url)
            valid = parts.scheme in ("http", "https") and bool(parts.hostname)
            _ = parts.port  # raises on a malformed port
        except ValueError:
            valid = False
        if not valid:
            self.problem((*base, "proxy"), f"proxy must be an http(s):// URL (got {url!r})")
        return url.rstrip("/")

    def filters(self, scope: _Scope, f: RawFilters, base: _KeyPath) -> FiltersConfig:
        path = (*base, "stripParams")
        text = f.stripParams
        if f.strip_params is not None:
            self.notice((*base, "strip_params"), "older spelling of stripParams; accepted")
            text = ",".join(t for t in (text, f.strip_params) if t)
        strip: list[str] = []
        for name in scope.text(text, path).split(","):
            if name.strip() == "model":
                self.notice(path, "'model' removed; the model parameter is never stripped")
            elif name.strip() and name.strip() not in strip:
                strip.append(name.strip())
        set_params: dict[str, Any] = {}
        for key, value in f.setParams.items():
            if key == "model":
                self.notice((*base, "setParams", key), "removed; the model parameter is never "
                                                       "overridden (use useModelName)")
            else:
                set_params[key] = scope.value(value, (*base, "setParams", key))
        return FiltersConfig(tuple(strip), _FrozenDict(set_params))
