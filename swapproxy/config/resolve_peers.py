"""Resolution of ``peers``: remote servers whose models this one routes to (llama-swap's peers).

Each peer has a ``proxy`` base URL, the ``models`` it serves, and optionally an ``apiKey``,
``filters`` and ``timeouts`` (``responseHeader`` defaults to 60 s, as in llama-swap). Global
macros expand in its values, as llama-swap expands them in every top-level section; its
``setParamsByID`` names are the names requests use (``peer/model`` or a bare id), never aliases.

Then the namespace is checked, as llama-swap's ``ValidatePeerNamespace`` does: every
``peer/model`` name must be unambiguous (peer and model ids may both hold ``/``) and must not
also be a model id, an alias, a selector id or a profile's pin name, since it always routes to
the peer. A bare peer model id may equal a local name: the local one wins.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .macros import _Scope
from .model import PeerConfig
from .problems import _Report
from .resolve_models import _check_url, _filters, _unused_timeouts
from .schema import RawConfig

__all__ = ["_resolve_peers"]


def _resolve_peers(report: _Report, raw: RawConfig, macros: Mapping[str, Any],
                   local: Mapping[str, str]) -> dict[str, PeerConfig]:
    """The peers; ``macros`` are the global ones (expanded), ``local`` maps every model id and alias to
    its model (for the namespace check)."""
    out: dict[str, PeerConfig] = {}
    owner: dict[str, tuple[str, str]] = {}  # peer/model -> (peer, model), to find ambiguous names
    for pid, peer in raw.peers.items():
        base = ("peers", pid)
        if not pid.strip():
            report.problem(base, "a peer id must not be empty")
            continue
        scope = _Scope(report, pid)
        scope.macros = macros
        proxy = _check_url(report, scope.text(peer.proxy, (*base, "proxy")).strip(), (*base, "proxy"))
        models: list[str] = []
        if not peer.models:
            report.problem((*base, "models"), "a peer needs at least one model")
        for i, name in enumerate(peer.models):
            path = (*base, "models", i)
            model = scope.text(name, path).strip()
            fqn = f"{pid}/{model}"
            if not model:
                report.problem(path, "a peer model id must not be empty")
            elif model in models:
                continue  # listed twice: llama-swap ignores the repeat
            elif fqn in owner:
                other = owner[fqn]
                report.problem(path, f"peer model name '{fqn}' is ambiguous: peers.{other[0]} model '{other[1]}' "
                                     f"has the same name")
            elif fqn in local:
                what = "a model id" if local[fqn] == fqn else f"an alias of model '{local[fqn]}'"
                report.problem(path, f"peer model name '{fqn}' is also {what}; '{fqn}' always routes to the peer")
            elif fqn in raw.selectors:
                report.problem(path, f"peer model name '{fqn}' is also a selector id")
            elif pinned := [name for name, profile in raw.profiles.items() if fqn in profile.pins]:
                report.problem(path, f"peer model name '{fqn}' is also a pin name of profile '{pinned[0]}'")
            else:
                owner[fqn] = (pid, model)
                models.append(model)
        filters, _ = _filters(report, scope, peer.filters, (*base, "filters"))
        _unused_timeouts(report, peer.timeouts, (*base, "timeouts"))
        api_key = scope.text(peer.apiKey, (*base, "apiKey")) or None
        if models:
            out[pid] = PeerConfig(
                id=pid, proxy=proxy, models=tuple(models), api_key=api_key, filters=filters,
                connect_timeout=peer.timeouts.connect, response_header_timeout=peer.timeouts.responseHeader,
                response_idle_timeout=peer.timeouts.responseIdle)
    return out
