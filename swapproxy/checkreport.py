"""What ``swapproxy check`` prints about a valid config: models, the rules, memory, and what runs together."""

from __future__ import annotations

from .config import Config
from .learned import Learned
from .memory import MemoryModel
from .nvml import GpuProvider
from .policy import Occupant, plan
from .redact import Redactor
from .sizes import format_size

__all__ = ["describe"]


def _flags(group: object) -> str:
    on = [f for f in ("swap", "exclusive", "persistent") if getattr(group, f)]
    return ", ".join(on) or "no swap"


def _sizes(sizes: dict[str, int] | None) -> str:
    if sizes is None:
        return "unknown"
    return ", ".join(f"{format_size(size)} on {device}" for device, size in sorted(sizes.items()))


def describe(path: str, config: Config, gpus: GpuProvider | None = None, *, read_gguf: bool = True) -> list[str]:
    """The lines of the summary (the GGUF files the models name are read, in a helper process)."""
    lines = [f"{path}: OK, {len(config.models)} model(s), "
             + (f"{len(config.peers)} peer(s), " if config.peers else "")
             + (f"matrix of {len(config.matrix.order)} set(s)" if config.matrix is not None
                else f"{len(config.groups)} group(s)")
             + f", scheduler {config.scheduler.use}"]
    shown = Redactor.for_config(config)  # a proxy URL may carry a key
    for spec in config.models.values():
        extras = []
        if spec.aliases:
            extras.append("aliases " + ", ".join(spec.aliases))
        if spec.ttl:
            extras.append(f"ttl {spec.ttl:g}s")
        if spec.port is not None:
            extras.append(f"port {spec.port}")
        if config.scheduler.priority.get(spec.id):
            extras.append(f"priority {config.scheduler.priority[spec.id]}")
        lines.append(f"  model {spec.id}: {shown.url(spec.proxy)}" + (f" ({'; '.join(extras)})" if extras else ""))
    if config.matrix is not None:
        for name in config.matrix.order:
            lines.append(f"  set {name}: {config.matrix.source[name]}")
    else:
        for group in config.groups:
            lines.append(f"  group {group.name} [{_flags(group)}]: {', '.join(group.members)}")
    for sel in config.selectors.values():
        lines.append(f"  selector {sel.id} ({sel.strategy}): {', '.join(sel.targets)}")
    for profile in config.profiles.values():
        pins = ", ".join(f"{k} -> {v or '(disabled)'}" for k, v in profile.pins.items())
        lines.append(f"  profile {profile.name}: {pins}")
    for peer in config.peers.values():
        key = "; key set" if peer.api_key else ""
        lines.append(f"  peer {peer.id}: {shown.url(peer.proxy)} ({', '.join(peer.models)}{key})")
    memory = MemoryModel(lambda: config, Learned(config.state_dir), gpus)
    if read_gguf:
        memory.read_gguf_files()
    budgets = memory.budgets()
    lines.append("  memory budgets: " + (", ".join(f"{d} {format_size(s)}" for d, s in sorted(budgets.items()))
                                         if budgets else "none (memory plays no part in scheduling)"))
    for spec in config.models.values():
        sizes, source = memory.footprint(spec)
        why = f" ({memory.why_unknown(spec)}; counts as a whole device)" if sizes is None else f" ({source})"
        lines.append(f"  footprint {spec.id}: {_sizes(sizes)}{why}")
    for spec in config.models.values():
        if spec.slot_cache and memory.windowed_cache(spec):
            lines.append(f"  notice {spec.id}: slotCache on a sliding-window model without --swa-full: its saved "
                         "slots come back but llama-server cannot reuse them (add --swa-full)")
    resources = memory.resources()
    for spec in config.models.values():
        beside = [other for other in config.models if other != spec.id
                  and not plan(config, spec.id, [Occupant(other)], resources).evict]
        lines.append(f"  {spec.id} runs beside: {', '.join(beside) or 'nothing (it runs alone)'}")
    return lines
