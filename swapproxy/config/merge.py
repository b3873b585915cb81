"""Several config files as one: ``-c FILE`` and ``--config-dir DIR``, merged as llama-swap merges them.

The ``-c`` file comes first, then the top-level ``*.yml``/``*.yaml`` files of the
directory in sorted order (subdirectories are not read; empty files are
skipped). Each file is parsed with its own line index; the trees are merged:

* the children of an *identity map* (``models``, ``groups``, ``profiles``,
  ``selectors``, ``peers``, ``matrix``, ``routing.router.settings.groups`` and
  ``.matrix``) name one thing each: defining one in two files is a problem;
* other mappings merge key by key; lists are concatenated (``apiKeys``,
  ``preload``); a scalar set twice must be equal (or one of them empty).

The merged tree keeps, for every key, the file and line it was written at, so
each problem found later names its own file. The rest of the pipeline
(:class:`~.loader._Loader`) runs on the merged tree unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .problems import ConfigError, Problem, _dotted, _KeyPath, _Report

__all__ = ["IDENTITY_MAPS", "config_files", "merge_into"]

IDENTITY_MAPS = frozenset({("models",), ("groups",), ("profiles",), ("selectors",), ("peers",), ("matrix",),
                           ("routing", "router", "settings", "groups"), ("routing", "router", "settings", "matrix")})


def config_files(config: str | None, config_dir: str | None) -> list[str]:
    """The files to read, in merge order; a file given both ways, or none at all, is an error."""
    if config is None and config_dir is None:
        raise ConfigError([Problem("(command line)", 0, "(sources)", "give a config file (-c) or a --config-dir")])
    files = [config] if config is not None else []
    if config_dir is not None:
        try:
            names = sorted(e.name for e in os.scandir(config_dir)
                           if e.name.endswith((".yml", ".yaml")) and e.is_file())
        except OSError as exc:
            raise ConfigError([Problem(config_dir, 0, "(config-dir)", f"cannot read the directory: "
                                                                      f"{exc.strerror or exc}")]) from None
        for name in names:
            path = os.path.join(config_dir, name)
            if config is not None and Path(path).resolve() == Path(config).resolve():
                raise ConfigError([Problem(path, 0, "(config-dir)", f"{config} is given with -c and is also in "
                                                                    f"--config-dir; give it once")])
            files.append(path)
    return files


def _shift(lines: Mapping[_KeyPath, int], path: _KeyPath, offset: int) -> dict[_KeyPath, int]:
    """``lines`` with the item indexes of the list at ``path`` moved up by ``offset``."""
    n = len(path)
    return {(*key[:n], key[n] + offset, *key[n + 1:]) if key[:n] == path and len(key) > n and isinstance(key[n], int)
            else key: line for key, line in lines.items()}


def merge_into(report: _Report, merged: dict[Any, Any], data: dict[Any, Any], file: str,
               lines: Mapping[_KeyPath, int]) -> None:
    """Merge ``data`` (read from ``file``, with its line index) into ``merged`` and its index in
    ``report``; every conflict is reported at the later file's line."""
    index = dict(lines)

    def own(path: _KeyPath) -> None:  # record where each key under ``path`` was written
        n = len(path)
        for key, line in index.items():
            if key[:n] == path and key not in report.lines:
                report.lines[key] = line
                report.files[key] = file

    def where(path: _KeyPath) -> str:
        first, line = report.where(path)
        return f"{first}:{line}"

    def conflict(path: _KeyPath, message: str) -> None:
        report.problems.append(Problem(file, index.get(path, 0), _dotted(path), message))

    def merge(into: dict[Any, Any], new: dict[Any, Any], path: _KeyPath) -> None:
        nonlocal index
        for key, value in new.items():
            sub = (*path, key)
            if key not in into:
                into[key] = value
                own(sub)
            elif path in IDENTITY_MAPS:
                conflict(sub, f"'{key}' is already defined in {where(sub)}; define it in one file")
            elif isinstance(into[key], dict) and isinstance(value, dict):
                merge(into[key], value, sub)
            elif isinstance(into[key], list) and isinstance(value, list):
                index = _shift(index, sub, len(into[key]))
                into[key] = [*into[key], *value]
                own(sub)
            elif value is None or into[key] == value:
                continue
            elif into[key] is None:
                into[key] = value
                own(sub)
            elif isinstance(into[key], (dict, list)) or isinstance(value, (dict, list)):
                conflict(sub, f"a {type(value).__name__} here, but a {type(into[key]).__name__} in {where(sub)}")
            else:
                conflict(sub, f"set to {value!r} here but to {into[key]!r} in {where(sub)}; set it once")

    merge(merged, data, ())
