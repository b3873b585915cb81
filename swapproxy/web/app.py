"""make_app(config): the aiohttp application — its runtime, routes, middlewares and resources.

Each resource is its own ``cleanup_ctx``, set up in this order and torn down
in the reverse one, so a failure half-way tears down exactly what started:

1. the shared client session;
2. leftovers of an earlier run (upstreams its pid records list) are stopped;
3. the guardian process (kills upstream process groups should swapproxy die);
4. this run's pid record;
5. the log handler that copies swapproxy's own records into the ``proxy`` buffer;
6. the scheduler and, through its :class:`~swapproxy.processes.ProcessHub`, every
   model's process — its teardown stops them all; beside it the
   :class:`~swapproxy.reload.Reloader` that applies config reloads and edits, and the
   :class:`~swapproxy.configstore.ConfigStore` through which the API and the UI edit the files;
7. the request history (its store opened in its thread), the performance samples and the
   hardware snapshot; a reload hands them their new settings;
8. the preload of ``hooks.on_startup.preload``;
9. the peers' health probes (:class:`~swapproxy.peers.PeerMonitor`; idle without peers).

Observability is wired in (6): every process state change is counted in the
metrics and published on the event bus as the model's
:class:`~swapproxy.status.ModelStatus`; every upstream output line goes to the
log buffers and the bus.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections.abc import AsyncIterator

from aiohttp import web

from ..config import Config, ModelConfig
from ..configstore import ConfigStore
from ..guardian import Guardian
from ..hardware import snapshot
from ..learned import Learned
from ..logs import BufferHandler
from ..memory import MemoryModel
from ..metrics import Metrics
from ..nvml import GpuProvider, gpu_provider
from ..peers import PeerHealth
from ..process import ManagedProcess, ProcessTracker
from ..processes import ProcessHub, ProcessLike
from ..redact import Redactor
from ..reload import Reloader
from ..scheduler import Scheduler, StopEvent
from ..statefile import RunRecord, reap_leftovers
from ..states import ProcessState
from ..status import model_status
from ..telemetry import Telemetry
from ..timeline import stop_json
from . import activity, catalogue, configview, controls, inference, instances, management, streams, upstream
from .browser import add_cors_headers
from .forward import publish_request
from .middleware import MIDDLEWARES, use_expect_handler
from .proxy import make_client_session
from .runtime import RUNTIME, Runtime
from .starting import ProgressTicker
from .upstream_props import UpstreamProps

__all__ = ["make_app", "HISTORY_ENV"]

logger = logging.getLogger(__name__)

#: ``SWAPPROXY_HISTORY=off`` records no request (scripts/bench_history.py's baseline; not a user setting).
HISTORY_ENV = "SWAPPROXY_HISTORY"


class _Resources:
    """The cleanup contexts of one app; what they share (trackers) is kept here until it starts."""

    def __init__(self, rt: Runtime, gpus: GpuProvider | None) -> None:
        self.rt = rt
        self.gpus = gpus
        self.trackers: list[ProcessTracker] = []

    async def session(self, app: web.Application) -> AsyncIterator[None]:
        self.rt._session = make_client_session()
        try:
            yield
        finally:
            await self.rt.session.close()

    async def leftovers(self, app: web.Application) -> AsyncIterator[None]:
        state_dir = self.rt.initial_config.state_dir
        if state_dir:  # upstreams an earlier run left behind would hold our ports: stop them first
            await asyncio.to_thread(reap_leftovers, state_dir)
        yield

    async def guardian(self, app: web.Application) -> AsyncIterator[None]:
        guardian = Guardian()
        await guardian.start()
        self.trackers.append(guardian)
        try:
            yield
        finally:
            await guardian.close()

    async def pid_record(self, app: web.Application) -> AsyncIterator[None]:
        state_dir = self.rt.initial_config.state_dir
        self.rt.created.load(self.rt.initial_config.models, self.rt.started)
        record = RunRecord(state_dir) if state_dir else None
        if record is not None:
            self.trackers.append(record)
        try:
            yield
        finally:
            if record is not None:
                record.close()

    async def log_handler(self, app: web.Application) -> AsyncIterator[None]:
        rt = self.rt
        handler = BufferHandler(
            rt.proxy_log, rt.all_log, on_line=lambda line: rt.events.publish({"type": "log", "source": "proxy",
                                                                               "line": line})
        )
        package_logger = logging.getLogger("swapproxy")
        package_logger.addHandler(handler)
        try:
            yield
        finally:
            package_logger.removeHandler(handler)

    async def scheduler(self, app: web.Application) -> AsyncIterator[None]:
        rt = self.rt
        echo_upstream = rt.initial_config.log_to_stdout in ("upstream", "both")

        def on_line(model: str, line: str) -> None:
            tagged = f"[{model}] {line}"
            rt.upstream_log.append(tagged)
            rt.all_log.append(tagged)
            rt.events.publish({"type": "log", "source": model, "line": line})
            if echo_upstream:
                sys.stdout.write(tagged + "\n")

        def new_process(spec: ModelConfig) -> ManagedProcess:
            # the keys of the config in force when it is made: they stay out of its environment
            config = rt.config
            return ManagedProcess(spec, trackers=self.trackers, session=rt.session, on_line=on_line,
                                  secrets=config.all_keys, redactor=Redactor.for_config(config),
                                  extra_argv=rt.slot_cache.argv, after_ready=rt.slot_cache.restore)

        learned = Learned(rt.initial_config.state_dir)
        memory = MemoryModel(lambda: rt.config, learned, self.gpus if self.gpus is not None else gpu_provider())
        telemetry = Telemetry(memory)
        scheduler = Scheduler(rt.initial_config, ProcessHub(new_process), rt.background, learned=learned,
                              resources=memory.resources)

        def on_state(proc: ProcessLike, old: ProcessState, new: ProcessState) -> None:
            if not scheduler.is_current(proc):
                return  # a process a reload retired or replaced: the model's row is another process now
            rt.metrics.on_state_change(proc, old, new)
            rt.timeline.on_state(proc.name, old, new, proc.state_since)
            if new in (ProcessState.READY, ProcessState.STOPPED):
                telemetry.soon()  # what it holds now (or no longer)
            if rt.events.subscriber_count:
                rt.events.publish({"type": "state", "old": old.value, **model_status(scheduler, proc.name).as_json()})

        def on_stop(event: StopEvent) -> None:
            rt.timeline.on_stop(event)
            rt.events.publish({**stop_json(event), "type": "swap"})

        props = UpstreamProps(rt.session, rt.background)
        scheduler.hub.add_listener(on_state)
        scheduler.hub.add_listener(props.on_state)  # a server that is ready is asked for its /props
        scheduler.hub.add_listener(ProgressTicker(rt).on_state)  # starting models' progress, as events
        scheduler.swap_listeners.append(on_stop)
        scheduler.before_stop = rt.slot_cache.save  # a model with slotCache saves its slots first
        rt.slot_cache.forget_removed()
        config = rt.initial_config
        reloader = Reloader(config.source_file, scheduler, rt.reload, config_dir=config.config_dir)
        reloader.listeners.append(lambda new, report: _on_applied(rt, report))
        reloader.listeners.append(lambda new, report: rt.slot_cache.forget_removed())
        rt._scheduler = scheduler
        rt._reloader = reloader
        rt._store = ConfigStore(reloader)
        rt._memory = memory
        rt._telemetry = telemetry
        rt._upstream_props = props
        rt.metrics.bind(scheduler, memory, rt.peers, rt.slot_cache, telemetry)
        rt.background.spawn(memory.refresh())  # GGUF estimates: off the event loop, in a helper process
        rt.background.spawn(telemetry.run(lambda: [
            (slot.process.spec, slot.process.pid) for slot in scheduler.slots.values()
            if slot.process.state is ProcessState.READY and slot.process.pid is not None]))
        try:
            yield
        finally:
            await scheduler.shutdown()
            rt.metrics.bind(None)

    async def history(self, app: web.Application) -> AsyncIterator[None]:
        rt = self.rt
        gpus = rt.memory.gpus.devices  # blocking (NVML): called in threads
        await rt.history.open()
        rt.metrics.sources.append(rt.history.exposition)
        rt.performance.start(gpus)
        try:
            rt.hardware = await asyncio.to_thread(snapshot, gpus())
        except Exception as exc:  # an odd platform: /api/hardware says it is unavailable
            logger.warning("hardware detection failed: %s", exc)

        def on_reload(new: Config, report: dict[str, list[str]]) -> None:
            rt.history.reconfigure(new.history)
            rt.performance.reconfigure(new.history)

        rt.reloader.listeners.append(on_reload)
        try:
            yield
        finally:
            rt.performance.stop()
            await rt.history.close()

    async def peer_probes(self, app: web.Application) -> AsyncIterator[None]:
        rt = self.rt

        def on_change(peer: str, health: PeerHealth) -> None:
            rt.events.publish({"type": "peer", "peer": peer, "up": health.up, "error": health.error})

        rt.peers.listeners.append(on_change)
        task = rt.background.spawn(rt.peers.run(lambda: rt.config, rt.session))
        try:
            yield
        finally:
            task.cancel()

    async def preload(self, app: web.Application) -> AsyncIterator[None]:
        models = self.rt.initial_config.preload
        task = self.rt.background.spawn(self.rt.scheduler.preload(models)) if models else None
        try:
            yield
        finally:
            if task is not None:
                task.cancel()


def _on_applied(rt: Runtime, report: dict[str, list[str]]) -> None:
    """A new config is in force (a reload or an edit): note when models were added, tell the UIs."""
    rt.created.applied(report.get("added", ()), report.get("removed", ()), time.time())
    rt.events.publish({"type": "config", "report": report})


async def _on_shutdown(app: web.Application) -> None:
    # Runs before aiohttp waits for open connections: log and event streams end now
    # instead of holding the shutdown for its whole timeout; no model starts any more.
    rt = app[RUNTIME]
    rt.closing.set()
    if rt._scheduler is not None:
        rt.scheduler.close()


def make_app(config: Config, *, gpus: GpuProvider | None = None) -> web.Application:
    """Build the application for ``config`` (its resources start with the app); ``gpus`` replaces
    the NVML reader (tests hand in a fake one)."""
    max_size = int(config.max_request_body_mb * 1024 * 1024)
    app = web.Application(middlewares=MIDDLEWARES, client_max_size=max_size)
    rt = Runtime(initial_config=config, metrics=Metrics(config), max_body=max_size,
                 record_history=os.environ.get(HISTORY_ENV, "on") != "off")
    app[RUNTIME] = rt
    rt.inflight.listener = lambda op, entry: publish_request(rt, op, entry)
    resources = _Resources(rt, gpus)
    app.cleanup_ctx.extend([resources.session, resources.leftovers, resources.guardian, resources.pid_record,
                            resources.log_handler, resources.scheduler, resources.history, resources.preload,
                            resources.peer_probes])
    app.on_shutdown.append(_on_shutdown)
    app.on_response_prepare.append(add_cors_headers)
    # Specific routes first: the /upstream/ passthrough and the inference catch-all come last.
    management.add_routes(app, rt.tags)
    instances.add_routes(app, rt.tags)
    configview.add_routes(app, rt.tags)
    controls.add_routes(app, rt.tags)
    streams.add_routes(app, rt.tags)
    activity.add_routes(app, rt.tags)
    upstream.add_routes(app, rt.tags)
    catalogue.add_routes(app, rt.tags)
    inference.add_routes(app, rt.tags)
    inference.add_catch_all(app, rt.tags)
    use_expect_handler(app)
    return app
