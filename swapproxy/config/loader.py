"""The front of a load: YAML with a line index, unsupported keys, ``${env.VAR}``, schema checks.

:func:`parse_config` runs one :class:`_Loader` over the text (:func:`load_config` over a
file, or over ``-c FILE`` and ``--config-dir DIR`` merged by :mod:`.merge`): stage 1 composes the YAML
into nodes and records every key path's line before constructing plain data; stage 2 reports
the keys swapproxy does not implement yet (and drops them); stage 3 substitutes
``${env.VAR}``; stage 4 validates against :mod:`.schema`, each model on its own. The
validated data is then handed to :func:`~.resolve._resolve`. Every problem found by any
stage is raised at the end as one :class:`~.problems.ConfigError`.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from .merge import config_files, merge_into
from ..redact import is_secret_name
from .model import Config
from .problems import ConfigError, Problem, _dotted, _KeyPath, _Report
from .resolve import _resolve
from .schema import RawConfig, RawModel, RawPeer, RawProfile, RawSelector
from .validate import _checked

__all__ = ["_Loader", "load_config", "parse_config"]

_ENV_REF = re.compile(r"\$\{env\.([A-Za-z_][A-Za-z0-9_]*)\}")
_NOT_YET = "not supported by swapproxy yet"
# keys that change routing and that swapproxy does not implement yet ("*" is any key): none today,
# since peers landed; the stage stays for the next such key of llama-swap's
_UNSUPPORTED: tuple[_KeyPath, ...] = ()


def _read(file: str) -> str:
    try:
        return Path(file).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([Problem(file, 0, "(file)", f"cannot read the config: {exc}")]) from exc


def load_config(path: str | os.PathLike[str] | None, environ: Mapping[str, str] | None = None,
                previous: Config | None = None, config_dir: str | None = None,
                texts: Mapping[str, str] | None = None) -> Config:
    """Read and resolve a config file; raises ConfigError listing every problem.

    With ``previous`` (a reload), each model that uses ${PORT} keeps the port it
    had, so an unchanged model's command stays unchanged. With ``config_dir``, its
    ``*.yaml`` files are merged after ``path`` (which may then be None), as llama-swap's
    ``-config-dir`` merges them; ``Config.file`` is then ``path``, or else the directory.
    ``texts`` (file → text) is read instead of those files (one the directory lacks is merged
    in its name's place): an edit is validated exactly as the file would be, before it is written."""
    file = os.fspath(path) if path is not None else None
    given = dict(texts or {})

    def read(source: str) -> str:
        return given[source] if source in given else _read(source)

    if config_dir is None and file is not None:
        return parse_config(read(file), file=file, environ=environ, previous=previous)
    files = config_files(file, config_dir)
    extra = [p for p in given if p not in files and config_dir is not None
             and os.path.normpath(os.path.dirname(p)) == os.path.normpath(config_dir)]
    if extra:
        head = files[:1] if file is not None else []
        files = head + sorted(files[len(head):] + extra, key=os.path.basename)
    loader = _Loader(files[0], os.environ if environ is None else environ)
    if previous is not None:
        loader.port_hints = {mid: m.port for mid, m in previous.models.items() if m.port is not None}
    merged: dict[Any, Any] = {}
    for source in files:
        part = _Loader(source, loader.environ)
        data = part.parse(read(source))
        loader.problems.extend(part.problems)
        if isinstance(data, dict):
            merge_into(loader, merged, data, source, part.lines)
        elif data is not None:
            loader.problems.append(Problem(source, 1, "(top)", "the top level must be a mapping of settings, "
                                                               f"not {type(data).__name__}"))
    if not merged and not loader.problems:
        raise ConfigError([Problem(files[0], 0, "(top)", "the config is empty")])
    config = loader.load_data(merged)
    return dataclasses.replace(config, file=file if file is not None else config_dir, config_dir=config_dir)


def parse_config(text: str, file: str = "<config>", environ: Mapping[str, str] | None = None,
                 previous: Config | None = None) -> Config:
    """Resolve config text; ``file`` only labels problems. ``environ`` defaults to os.environ."""
    loader = _Loader(file, os.environ if environ is None else environ)
    if previous is not None:
        loader.port_hints = {mid: m.port for mid, m in previous.models.items() if m.port is not None}
    return loader.load(text)


def _matches(data: Any, pattern: _KeyPath, path: _KeyPath = ()) -> Iterator[_KeyPath]:
    """The key paths in ``data`` that ``pattern`` names ("*" matches any key)."""
    if not pattern:
        yield path
    elif isinstance(data, dict):
        for key in data if pattern[0] == "*" else [pattern[0]] if pattern[0] in data else []:
            yield from _matches(data[key], pattern[1:], (*path, key))


class _Loader(_Report):
    """One load: the line index, problems and notices (from :class:`_Report`) and the stages."""

    def __init__(self, file: str, environ: Mapping[str, str]) -> None:
        super().__init__(file)
        self.environ = environ
        self.port_hints: dict[str, int] = {}  # model id -> ${PORT} it had before a reload
        self.env_secrets: dict[str, None] = {}  # values of ${env.X} whose X names a secret, in order

    def load(self, text: str) -> Config:
        data = self.parse(text)
        if data is None:
            raise ConfigError([Problem(self.file, 0, "(top)", "the config is empty")])
        return self.load_data(data)

    def load_data(self, data: Any) -> Config:
        if not isinstance(data, dict):
            kind = type(data).__name__
            raise ConfigError([Problem(self.file, 1, "(top)",
                                       f"the top level must be a mapping of settings, not {kind}")])
        data = self.substitute_env(data, (), self.find_unsupported(data))
        raw, models, ids = self.validate(data)
        config = _resolve(self, raw, models, ids, self.environ, self.port_hints) if raw is not None else None
        if config is None or self.problems:
            raise self.error()
        if self.env_secrets:  # hidden wherever a command line or URL is shown (swapproxy.redact)
            config = dataclasses.replace(config, env_secrets=tuple(self.env_secrets))
        return config

    # ----- stage 1: YAML with line numbers

    def parse(self, text: str) -> Any:
        """The YAML's data (None for an empty document), every key path's line indexed."""
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                return None
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
        if is_secret_name(match[1]):
            self.env_secrets[value] = None
        return value

    # ----- stage 4: schema

    def validate(self, data: dict[Any, Any]) -> tuple[RawConfig | None, dict[str, RawModel],
                                                      list[str]]:
        """Validate each model (and selector, profile and peer) on its own, so one broken entry
        hides nothing in the others."""
        top, ids, models = dict(data), list[str](), dict[str, RawModel]()
        for section, schema in (("selectors", RawSelector), ("profiles", RawProfile), ("peers", RawPeer)):
            if isinstance(data.get(section), dict):
                checked = {k: _checked(self, schema, v, (section, k)) for k, v in data[section].items()}
                top[section] = {k: v for k, v in checked.items() if v is not None}
        if isinstance(data.get("models"), dict):
            top["models"] = {}
            if not data["models"]:
                self.problem(("models",), "no models are defined")
            for mid, model in data["models"].items():
                if not isinstance(mid, str):
                    self.problem(("models", mid), "a model id must be a string; quote it")
                    continue
                ids.append(mid)
                if (checked := _checked(self, RawModel, model, ("models", mid))) is not None:
                    models[mid] = checked
        return _checked(self, RawConfig, top, ()), models, ids
