"""The scheduler driven with fake processes: admission, queue, drains, TTL, breaker, reload — in milliseconds.

Every rule here also has a test against real processes (the fake llama-server)
in test_swap.py, test_reload.py and test_faults.py; these pin the logic down
without a spawn, so they can afford the corner cases.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from support import wait_until
from fake_process import FakeHub, FakeProcess, spec
from swapproxy.config import Config, GroupConfig
from swapproxy.errors import ModelNotFound, ModelStartFailed, TooManyRequests
from swapproxy.scheduler import Scheduler, StopCause, StopEvent
from swapproxy.states import ProcessState

S = ProcessState


def make(*ids: str, groups: tuple[GroupConfig, ...] = (), tuned: dict[str, dict[str, Any]] | None = None,
         **top: Any) -> tuple[Scheduler, FakeHub]:
    """A scheduler over fake processes for ``ids``; ``tuned`` overrides fields of some models' specs."""
    specs = {m: spec(m, **(tuned or {}).get(m, {})) for m in ids}
    hub = FakeHub()
    return Scheduler(Config(models=specs, groups=groups, **top), hub), hub


def proc(scheduler: Scheduler, model_id: str) -> FakeProcess:
    process = scheduler.slot(model_id).process
    assert isinstance(process, FakeProcess)
    return process


async def use(scheduler: Scheduler, model_id: str) -> None:
    (await scheduler.acquire(model_id)).release()


async def test_a_request_starts_its_model_and_concurrent_ones_join_that_start() -> None:
    scheduler, hub = make("a")
    hub.held.add("a")
    first = asyncio.ensure_future(scheduler.acquire("a"))
    second = asyncio.ensure_future(scheduler.acquire("a"))
    await wait_until(lambda: proc(scheduler, "a").state is S.STARTING)
    proc(scheduler, "a").release_start()
    leases = await asyncio.gather(first, second)
    assert proc(scheduler, "a").starts == 1 and scheduler.slot("a").inflight == 2
    for lease in leases:
        lease.release()
    assert scheduler.slot("a").inflight == 0


async def test_a_swap_stops_the_old_model_before_the_new_one_starts() -> None:
    scheduler, hub = make("a", "b")
    await use(scheduler, "a")
    stops: list[StopEvent] = []
    scheduler.swap_listeners.append(stops.append)
    await use(scheduler, "b")
    assert hub.history[-4:] == [("a", S.STOPPING), ("a", S.STOPPED), ("b", S.STARTING), ("b", S.READY)]
    assert [(e.cause, e.stopped, e.target) for e in stops] == [(StopCause.SWAP, ("a",), "b")]
    assert scheduler.last_swap is stops[0] and scheduler.running() == ["b"]


async def test_a_swap_waits_for_the_requests_in_flight_on_the_old_model() -> None:
    scheduler, _ = make("a", "b")
    lease = await scheduler.acquire("a")
    swap = asyncio.ensure_future(scheduler.acquire("b"))
    await wait_until(lambda: scheduler.slot("a").evicting)
    assert proc(scheduler, "a").state is S.READY and not swap.done()
    assert await _refused_while_evicting(scheduler)  # closed to new requests meanwhile
    lease.release()
    (await asyncio.wait_for(swap, 1)).release()
    assert proc(scheduler, "a").state is S.STOPPED and proc(scheduler, "b").state is S.READY


async def _refused_while_evicting(scheduler: Scheduler) -> bool:
    """A request for the evicted model queues instead of joining it."""
    late = asyncio.ensure_future(scheduler.acquire("a"))
    await asyncio.sleep(0)
    queued = not late.done() and scheduler.slot("a").waiting == 1
    late.cancel()
    return queued


async def test_requests_are_served_in_arrival_order() -> None:
    scheduler, _ = make("a", "b", "c")
    lease = await scheduler.acquire("a")
    order: list[str] = []

    async def ask(model_id: str) -> None:
        got = await scheduler.acquire(model_id)
        order.append(model_id)
        got.release()

    tasks = []
    for model_id in ("b", "c", "a"):
        tasks.append(asyncio.ensure_future(ask(model_id)))
        await asyncio.sleep(0)  # each reaches the queue before the next arrives
    await wait_until(lambda: scheduler.slot("a").waiting == 1)
    lease.release()
    await asyncio.wait_for(asyncio.gather(*tasks), 1)
    assert order == ["b", "c", "a"]


async def test_a_waiter_that_leaves_gives_up_its_place_and_the_eviction() -> None:
    scheduler, _ = make("a", "b")
    lease = await scheduler.acquire("a")
    swap = asyncio.ensure_future(scheduler.acquire("b"))
    await wait_until(lambda: scheduler.slot("a").evicting)
    swap.cancel()
    await wait_until(lambda: not scheduler.slot("a").evicting)
    assert scheduler.slot("b").inflight == 0 and proc(scheduler, "a").state is S.READY
    lease.release()


async def test_the_concurrency_limit_counts_queued_and_in_flight() -> None:
    scheduler, _ = make("a", tuned={"a": {"concurrency_limit": 10}})
    leases = [await scheduler.acquire("a") for _ in range(10)]
    with pytest.raises(TooManyRequests):
        await scheduler.acquire("a")
    for lease in leases:
        lease.release()


async def test_the_breaker_opens_after_repeated_start_failures_and_a_load_clears_it() -> None:
    scheduler, hub = make("a", breaker_failures=2, breaker_window=60.0)
    hub.failing.add("a")
    for _ in range(2):
        with pytest.raises(ModelStartFailed):
            await use(scheduler, "a")
    with pytest.raises(ModelStartFailed, match="not retrying"):
        await use(scheduler, "a")
    assert proc(scheduler, "a").starts == 2  # refused at once, no third start
    hub.failing.clear()
    await scheduler.load("a")
    assert proc(scheduler, "a").state is S.READY


async def test_ttl_unloads_after_the_last_request_never_during_one() -> None:
    scheduler, _ = make("a", tuned={"a": {"ttl": 0.02}})
    lease = await scheduler.acquire("a")
    assert scheduler.slot("a").ttl_handle is None  # disarmed while in flight
    lease.release()
    assert scheduler.slot("a").ttl_handle is not None
    await wait_until(lambda: proc(scheduler, "a").state is S.STOPPED, 2, "the ttl unload")


async def test_a_forced_unload_stops_at_once_and_a_plain_one_drains() -> None:
    scheduler, _ = make("a")
    lease = await scheduler.acquire("a")
    plain = asyncio.ensure_future(scheduler.unload("a"))
    await wait_until(lambda: scheduler.slot("a").evicting)
    assert proc(scheduler, "a").state is S.READY
    assert await asyncio.wait_for(scheduler.unload("a", force=True), 1)
    assert proc(scheduler, "a").state is S.STOPPED
    lease.release()
    assert await asyncio.wait_for(plain, 1)


async def test_a_reload_drain_happens_outside_the_queue() -> None:
    scheduler, _ = make("a", "b", groups=(GroupConfig("all", swap=False, exclusive=False, members=("a", "b")),))
    await use(scheduler, "b")
    lease = await scheduler.acquire("a")
    old = proc(scheduler, "a")
    changed = Config(models={"a": spec("a", cmd=("fake", "a", "--new")), "b": spec("b")},
                     groups=scheduler.config.groups)
    assert (await scheduler.apply_config(changed))["changed"] == ["a"]
    request = asyncio.ensure_future(scheduler.acquire("a"))
    await wait_until(lambda: scheduler.slot("a").evicting)
    assert await asyncio.wait_for(scheduler.unload("b"), 1)  # not held up by a's drain
    await asyncio.wait_for(use(scheduler, "b"), 1)
    assert not request.done()
    lease.release()
    (await asyncio.wait_for(request, 1)).release()
    await wait_until(lambda: old.state is S.SHUTDOWN, what="the old process retired")
    assert proc(scheduler, "a") is not old
    assert proc(scheduler, "a").spec.cmd[-1] == "--new" and proc(scheduler, "a").state is S.READY


async def test_a_removed_model_is_not_routable_and_stops_after_its_requests() -> None:
    scheduler, _ = make("a", "b", groups=(GroupConfig("all", swap=False, exclusive=False, members=("a", "b")),))
    lease = await scheduler.acquire("b")
    retired = proc(scheduler, "b")
    await scheduler.apply_config(Config(models={"a": spec("a")}))
    with pytest.raises(ModelNotFound):
        await scheduler.acquire("b")
    assert retired.state is S.READY
    start_a = asyncio.ensure_future(use(scheduler, "a"))  # a retired model still holds memory
    await wait_until(lambda: scheduler.slot("a").inflight == 1, what="a reserved")
    assert not start_a.done() and proc(scheduler, "a").state is S.STOPPED  # waiting for b's drain
    lease.release()
    await asyncio.wait_for(start_a, 1)
    await wait_until(lambda: retired.state is S.SHUTDOWN, what="b shut down")
