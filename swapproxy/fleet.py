"""This host as a fleet sees it: the metrics an endpoint picker routes by, and the peers' health.

The Gateway API Inference Extension's endpoint picker (llm-d's EPP) scrapes each model
server's ``/metrics`` and reads, through a per-engine mapping (its ``core-metrics-extractor``:
``queuedRequestsSpec``, ``runningRequestsSpec``, ``kvUsageSpec``, ``loraSpec``), four things.
swapproxy exposes each under its own name (``docs/scale-out/epp-config.yaml`` is the mapping):

* waiting requests: ``swapproxy_queue_depth`` (written with the other levels, in :mod:`.metrics`);
* running requests: ``swapproxy_requests_running``, requests in flight on this host's models;
* cache use: ``swapproxy_kv_cache_usage_ratio``. swapproxy cannot see inside a server's KV
  cache without asking it; it reports how full the running models' request slots are
  (requests in flight over their ``--parallel``, llama-server's default 4), capped at 1;
* which models are loaded: ``swapproxy_loaded_models_info``, an info gauge whose labels use the
  names the EPP reads (vLLM's ``lora_requests_info``): ``running_lora_adapters`` lists every name
  that reaches a model starting or ready here (a starting model counts as loaded: its requests
  join that start), its aliases and the selectors that would choose it; ``waiting_lora_adapters``
  the names of models requests wait for that are not loaded yet; ``max_lora`` those two counts
  plus ``swapproxy_models_free_slots`` (the models this host can still start without stopping
  one, from the rules and the memory budgets), so that the EPP's "room for one more" test is
  true exactly when a model can start here without evicting another. The value is when the
  set last changed (unix seconds), as vLLM's is its update time.

Peers: ``swapproxy_peer_up{peer}`` (1 or 0, once probed) and ``swapproxy_peer_model_loaded``.

Everything here is cheap to write: the free-slot count (one policy plan per model not
running) is computed again only when what runs changes, or every :data:`FREE_TTL` seconds
(learned footprints change slowly).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from .config import Config
from .estimate import parse_options
from .exposition import gauge, label_text
from .memory import MemoryModel
from .peers import PeerMonitor
from .policy import Occupant, Resources, plan
from .scheduler import Scheduler
from .states import ProcessState
from .status import ModelStatus

__all__ = ["FleetView", "FREE_TTL", "free_slots", "loaded_names"]

FREE_TTL = 5.0
_ACTIVE = (ProcessState.STARTING, ProcessState.READY)
_HOLDING = (*_ACTIVE, ProcessState.STOPPING)


def loaded_names(config: Config, statuses: Sequence[ModelStatus]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(the names that reach a model loaded here, the names of models requests wait for), in config order:
    each model's id and aliases, and in the first list the selectors whose choice would be loaded."""
    active = {s.model for s in statuses if s.state in _ACTIVE}
    running: list[str] = []
    waiting: list[str] = []
    for status in statuses:
        if status.model in active or status.waiting:
            (running if status.model in active else waiting).extend((status.model, *status.aliases))
    for selector in config.selectors.values():
        considered = selector.target_ids[:1] if selector.strategy == "pin" else selector.target_ids
        if any(target in active for target in considered):
            running.append(selector.id)
    return tuple(dict.fromkeys(running)), tuple(n for n in dict.fromkeys(waiting) if n not in running)


def free_slots(config: Config, scheduler: Scheduler, resources: Resources | None) -> int:
    """How many more models this host can start, one after another, without stopping any (smallest first)."""
    held = [Occupant(mid, busy=slot.inflight > 0, last_used=slot.last_used,
                     stopping=slot.process.state is ProcessState.STOPPING)
            for mid, slot in scheduler.slots.items() if slot.process.state in _HOLDING]
    holding = {o.id for o in held}

    def size(mid: str) -> float:
        need = resources.footprints.get(mid) if resources is not None else None
        return sum(need.values()) if need is not None else float("inf")

    count = 0
    for mid in sorted((m for m in config.models if m not in holding), key=size):
        if not plan(config, mid, held, resources).evict:
            count += 1
            held.append(Occupant(mid))
    return count


class FleetView:
    """Writes the fleet metrics; keeps what is costly to compute (free slots, each command's slots)."""

    def __init__(self) -> None:
        self._free_key: tuple[object, ...] | None = None
        self._free = 0
        self._free_at = float("-inf")
        self._loaded: tuple[object, ...] | None = None
        self._changed_at = time.time()
        self._parallel: dict[tuple[str, ...], int] = {}

    def free(self, scheduler: Scheduler, memory: MemoryModel | None) -> int:
        config = scheduler.config
        key = (id(config), tuple((mid, slot.process.state) for mid, slot in scheduler.slots.items()
                                 if slot.process.state in _HOLDING))
        now = time.monotonic()
        if key != self._free_key or now - self._free_at > FREE_TTL:
            resources = memory.resources() if memory is not None else None
            self._free, self._free_key, self._free_at = free_slots(config, scheduler, resources), key, now
        return self._free

    def slots(self, cmd: tuple[str, ...]) -> int:
        """A command's request slots (``--parallel``; llama-server's default 4)."""
        n = self._parallel.get(cmd)
        if n is None:
            n = self._parallel[cmd] = max(parse_options(cmd).parallel, 1)
        return n

    def text(self, scheduler: Scheduler, statuses: Sequence[ModelStatus], memory: MemoryModel | None,
             peers: PeerMonitor | None) -> str:
        config = scheduler.config
        running, waiting = loaded_names(config, statuses)
        free = self.free(scheduler, memory)
        if (running, waiting, free) != self._loaded:
            self._loaded, self._changed_at = (running, waiting, free), time.time()
        active = [s for s in statuses if s.state in _ACTIVE]
        inflight = sum(s.inflight for s in active)
        slots = sum(self.slots(scheduler.slots[s.model].process.spec.cmd) for s in active)
        info = label_text(("running_lora_adapters", "waiting_lora_adapters", "max_lora"),
                          (",".join(running), ",".join(waiting), str(len(running) + len(waiting) + free)))
        parts = [
            gauge("swapproxy_requests_running", "Requests in flight on this host's models, all together",
                  [("", inflight)]),
            gauge("swapproxy_kv_cache_usage_ratio", "Requests in flight over the request slots (--parallel) of "
                  "the models running here, at most 1", [("", min(inflight / slots, 1.0) if slots else 0.0)]),
            gauge("swapproxy_models_free_slots", "Models this host can still start without stopping one",
                  [("", free)]),
            gauge("swapproxy_loaded_models_info", "Names that reach a model loaded (or starting) here, names of "
                  "models requests wait for, and how many names fit before one must stop (labels as vLLM's "
                  "lora_requests_info); the value is when they last changed", [(info, self._changed_at)]),
        ]
        if peers is not None and config.peers:
            up, loaded = [], []
            for pid, peer in config.peers.items():
                health = peers.health(pid)
                if health.up is None:
                    continue
                up.append((label_text(("peer",), (pid,)), 1.0 if health.up else 0.0))
                loaded.extend((label_text(("peer", "model"), (pid, m)), 1.0 if health.up and m in health.loaded
                               else 0.0) for m in peer.models)
            parts.append(gauge("swapproxy_peer_up", "1 while the peer answers its probes, 0 while it is down", up))
            parts.append(gauge("swapproxy_peer_model_loaded", "1 when the peer has the model loaded (as its last "
                               "probe read)", loaded))
        return "".join(parts)
