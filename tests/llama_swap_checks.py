"""Checks shared by the tests of whole llama-swap config files.

They run on swapproxy's own llama-swap-style fixtures (tests/configs/llamaswap_*_style.yaml),
which every clone has, and on llama-swap's real example files in ../shared/compat, which only
a checkout with shared/ beside the repository has.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from swapproxy.config import ConfigError, Problem, load_config

#: What llama-swap's ``ui``/``store``-style keys get: accepted, with this notice.
UI_ONLY = "accepted; only tunes llama-swap's own UI or logs, swapproxy ignores it"


def where(found: list[Problem]) -> list[tuple[int, str]]:
    return [(p.line, p.key_path) for p in found]


def guessed_port_notice(url: str) -> str:
    """The notice for a model with no proxy and no ${PORT}, proxied where its cmd listens."""
    return (f"no proxy and no ${{PORT}} in cmd; using {url} from the cmd's port option "
            f"(set proxy to make it explicit)")


def assert_refused(file: Path, environ: Mapping[str, str], unsupported: Sequence[tuple[int, str]],
                   mistakes: Sequence[tuple[int, str, str]]) -> None:
    """Loading ``file`` fails with one line per problem and nothing else (no traceback): first
    each key swapproxy does not support yet, ``(line, key path)``, refused exactly once, in
    order; the other problems are ``mistakes``, ``(line, key path, start of the message)``."""
    with pytest.raises(ConfigError) as info:
        load_config(file, environ=environ)
    lines = str(info.value).splitlines()
    assert len(lines) == len(info.value.problems) == len(unsupported) + len(mistakes)
    refused = [p for p in info.value.problems if "not supported by swapproxy yet" in p.message]
    assert where(refused) == list(unsupported)
    for line, key_path in unsupported:
        assert sum(f"{file}:{line}: {key_path}: " in text for text in lines) == 1
    others = [p for p in info.value.problems if p not in refused]
    assert where(others) == [(line, path) for line, path, _ in mistakes]
    for problem, (_, _, message) in zip(others, mistakes):
        assert problem.message.startswith(message)


def supported_part(file: Path, *, groups: Mapping[str, list[str]], no_port: str,
                   targets: Mapping[str, list[str]], drop_pins: Mapping[str, list[str]]) -> str:
    """``file`` (a llama-swap full example) as YAML again, without what swapproxy refuses and
    its mistakes mended: hooks (preloading a name that is no model), the matrix and
    scheduler settings go; only ``groups`` stay, each with those members; each selector of
    ``targets`` gets those targets, and the ``drop_pins`` of each profile go (they name
    models the file never defines); ``no_port`` gets a proxy."""
    data: dict[str, Any] = yaml.safe_load(file.read_text())
    del data["hooks"]
    settings = data["routing"]["router"]["settings"]
    del settings["matrix"], data["routing"]["scheduler"]["settings"]
    settings["groups"] = {name: {**settings["groups"][name], "members": members}
                          for name, members in groups.items()}
    for name, kept in targets.items():
        data["selectors"][name]["targets"] = kept
    for name, pins in drop_pins.items():
        for pin in pins:
            del data["profiles"][name]["pins"][pin]
    data["models"][no_port]["proxy"] = "http://127.0.0.1:7777"
    return yaml.safe_dump(data, sort_keys=False)
