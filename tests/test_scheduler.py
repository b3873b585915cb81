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
from swapproxy.config.model import SchedulerConfig
from swapproxy.errors import ModelNotFound, ModelStartFailed, TooManyRequests
from swapproxy.scheduler import Scheduler, StopCause, StopEvent
from swapproxy.states import ProcessState

S = ProcessState


def make(*ids: str, groups: tuple[GroupConfig, ...] = (), tuned: dict[str, dict[str, Any]] | None = None,
         use: str = "fifo", max_wait: float = 3.0, priority: dict[str, int] | None = None,
         **top: Any) -> tuple[Scheduler, FakeHub]:
    """A scheduler over fake processes for ``ids``; ``tuned`` overrides fields of some models' specs."""
    specs = {m: spec(m, **(tuned or {}).get(m, {})) for m in ids}
    hub = FakeHub()
    settings = SchedulerConfig(use, priority or {}, max_wait)  # type: ignore[arg-type]
    return Scheduler(Config(models=specs, groups=groups, scheduler=settings, **top), hub), hub


def strict(*ids: str, **kw: Any) -> tuple[Scheduler, FakeHub]:
    """The strict arrival-order baseline: the models to stop are closed at once."""
    return make(*ids, use="strict", **kw)


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
    scheduler, _ = strict("a", "b")
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
    scheduler, _ = strict("a", "b", "c")
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
    scheduler, _ = strict("a", "b")
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
    scheduler, hub = make("a", breaker_failures=2, breaker_window=60.0, breaker_backoff=0.0)
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


async def test_within_the_backoff_a_failed_start_is_answered_again_without_a_new_start() -> None:
    scheduler, hub = make("a", breaker_failures=2, breaker_window=60.0, breaker_backoff=30.0)
    hub.failing.add("a")
    with pytest.raises(ModelStartFailed) as first:
        await use(scheduler, "a")
    assert first.value.retry_after == 30 and first.value.headers()["x-should-retry"] == "false"
    for _ in range(3):  # an SDK's retries, or several clients at once: the same answer, no spawn
        with pytest.raises(ModelStartFailed) as again:
            await use(scheduler, "a")
        assert again.value.message == first.value.message and again.value.code == first.value.code
        assert 1 <= again.value.retry_after <= 30 and again.value.headers()["Retry-After"] == str(again.value.retry_after)
    assert proc(scheduler, "a").starts == 1
    # only real starts count toward the breaker (2 here): four answers, one failure, still closed
    assert scheduler.failures.breaker_remaining(proc(scheduler, "a")) <= 0
    hub.failing.clear()
    await scheduler.load("a")  # an operator's load clears the back-off too
    assert proc(scheduler, "a").starts == 2 and proc(scheduler, "a").state is S.READY


async def test_after_the_backoff_the_next_request_starts_the_model_again() -> None:
    scheduler, hub = make("a", breaker_backoff=0.05)
    hub.failing.add("a")
    with pytest.raises(ModelStartFailed):
        await use(scheduler, "a")
    with pytest.raises(ModelStartFailed):
        await use(scheduler, "a")  # within the back-off
    assert proc(scheduler, "a").starts == 1
    loop = asyncio.get_running_loop()
    until = loop.time() + 0.05
    await wait_until(lambda: loop.time() > until, what="the back-off to pass")
    hub.failing.clear()
    await use(scheduler, "a")
    assert proc(scheduler, "a").starts == 2


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
    scheduler, _ = strict("a", "b", groups=(GroupConfig("all", swap=False, exclusive=False, members=("a", "b")),))
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
    await wait_until(lambda: scheduler.slot("a").waiting == 1, what="a waiting")
    assert not start_a.done() and proc(scheduler, "a").state is S.STOPPED  # waiting for b's drain
    lease.release()
    await asyncio.wait_for(start_a, 1)
    await wait_until(lambda: retired.state is S.SHUTDOWN, what="b shut down")


# -- the batching scheduler (fifo, the default) -----------------------------------------------------
async def ask(scheduler: Scheduler, model_id: str, served: list[str]) -> None:
    """A request that notes when it is served and gives its lease back at once."""
    lease = await scheduler.acquire(model_id)
    served.append(model_id)
    lease.release()


def starts(hub: FakeHub) -> list[str]:
    return [name for name, state in hub.history if state is S.STARTING]


async def test_abcabc_runs_as_aabbcc_and_strict_swaps_for_each() -> None:
    for build, expected_starts in ((make, ["a", "b", "c"]), (strict, ["a", "b", "c", "a", "b", "c"])):
        scheduler, hub = build("a", "b", "c")
        lease = await scheduler.acquire("a")
        served: list[str] = []
        tasks = []
        for model_id in "abcabc"[1:]:
            tasks.append(asyncio.ensure_future(ask(scheduler, model_id, served)))
            await asyncio.sleep(0)
        lease.release()
        await asyncio.wait_for(asyncio.gather(*tasks), 2)
        assert starts(hub) == expected_starts, build
        if build is make:
            assert served == ["a", "b", "b", "c", "c"]  # the second a came in while a ran: served at once


async def test_waiting_requests_for_one_model_share_one_swap() -> None:
    scheduler, hub = make("a", "b", "c")
    for model_id in ("b", "c"):  # starts known, and alike: the count of waiting requests decides
        scheduler.learned.record_start(scheduler.slot(model_id).process.spec, 0.1)
    lease = await scheduler.acquire("a")
    served: list[str] = []
    tasks = [asyncio.ensure_future(ask(scheduler, m, served)) for m in ("c", "b", "b", "c", "b")]
    await wait_until(lambda: scheduler.queue_depth() == 5)
    assert not scheduler.slot("a").evicting  # a keeps serving until it is idle (or maxWait passes)
    lease.release()
    await asyncio.wait_for(asyncio.gather(*tasks), 2)
    assert starts(hub) == ["a", "b", "c"]  # b first: three waiting against c's two
    assert served == ["b", "b", "b", "c", "c"]


async def test_max_wait_bounds_the_wait_behind_a_model_that_stays_busy() -> None:
    scheduler, hub = make("a", "b", max_wait=0.05)
    first = await scheduler.acquire("a")
    waiting = asyncio.ensure_future(scheduler.acquire("b"))
    await wait_until(lambda: scheduler.queue_depth() == 1)
    # a keeps receiving work: a new request overlaps the first (served at once, b's wait being
    # under maxWait), so a is never idle by itself; maxWait then closes it
    assert not scheduler.slot("a").evicting
    leases = [await asyncio.wait_for(scheduler.acquire("a"), 1)]
    first.release()
    await wait_until(lambda: scheduler.slot("a").evicting, 1, "maxWait to close the busy model")
    late = asyncio.ensure_future(scheduler.acquire("a"))
    await asyncio.sleep(0)
    assert not late.done()  # closed: new work for a queues now
    for lease in leases:
        lease.release()
    (await asyncio.wait_for(waiting, 1)).release()
    (await asyncio.wait_for(late, 1)).release()
    assert starts(hub) == ["a", "b", "a"]


async def test_higher_priority_models_are_served_first() -> None:
    scheduler, hub = make("a", "low", "high", priority={"high": 5})
    lease = await scheduler.acquire("a")
    served: list[str] = []
    tasks = [asyncio.ensure_future(ask(scheduler, m, served)) for m in ("low", "low", "high")]
    await wait_until(lambda: scheduler.queue_depth() == 3)
    lease.release()
    await asyncio.wait_for(asyncio.gather(*tasks), 2)
    assert served == ["high", "low", "low"]


async def test_a_quicker_swap_goes_first_unless_an_older_waiter_would_pass_max_wait() -> None:
    for max_wait, expected in ((60.0, ["quick", "slow"]), (0.05, ["slow", "quick"])):
        scheduler, hub = make("a", "slow", "quick", max_wait=max_wait)
        scheduler.learned.record_start(scheduler.slot("slow").process.spec, 30.0)
        scheduler.learned.record_start(scheduler.slot("quick").process.spec, 0.1)
        lease = await scheduler.acquire("a")
        served: list[str] = []
        tasks = [asyncio.ensure_future(ask(scheduler, "slow", served))]
        await asyncio.sleep(0)
        tasks.append(asyncio.ensure_future(ask(scheduler, "quick", served)))
        await wait_until(lambda: scheduler.queue_depth() == 2)
        lease.release()
        await asyncio.wait_for(asyncio.gather(*tasks), 2)
        # same number waiting: the 0.1 s start beats the 30 s one, unless that would keep the
        # older request for "slow" past its maxWait
        assert served == expected, max_wait


async def test_swaps_that_stop_nothing_of_each_other_run_side_by_side() -> None:
    groups = (GroupConfig("left", swap=True, exclusive=False, members=("a", "b")),
              GroupConfig("right", swap=True, exclusive=False, members=("c", "d")))
    scheduler, hub = make("a", "b", "c", "d", groups=groups)
    hub.held.update({"b", "d"})
    await use(scheduler, "a")
    await use(scheduler, "c")
    to_b = asyncio.ensure_future(use(scheduler, "b"))
    to_d = asyncio.ensure_future(use(scheduler, "d"))
    await wait_until(lambda: proc(scheduler, "b").state is S.STARTING and proc(scheduler, "d").state is S.STARTING)
    proc(scheduler, "b").release_start()
    proc(scheduler, "d").release_start()
    await asyncio.wait_for(asyncio.gather(to_b, to_d), 1)
    assert scheduler.running() == ["b", "d"]


async def test_a_client_sending_one_request_after_another_keeps_its_model() -> None:
    scheduler, hub = make("a", "b")
    scheduler.learned.record_start(scheduler.slot("a").process.spec, 1.0)  # it lingers 0.1 s after a request
    lease = await scheduler.acquire("a")
    waiting = asyncio.ensure_future(scheduler.acquire("b"))
    await wait_until(lambda: scheduler.slot("b").waiting == 1)
    for _ in range(3):  # the same client's next request comes right after the last one ends
        lease.release()
        await asyncio.sleep(0)
        lease = await asyncio.wait_for(scheduler.acquire("a"), 0.05)
    assert starts(hub) == ["a"] and not waiting.done()
    lease.release()
    (await asyncio.wait_for(waiting, 1)).release()  # a while later, nobody came back: b's turn
    assert starts(hub) == ["a", "b"]


async def test_requests_past_max_wait_are_served_in_arrival_order_whatever_else_waits() -> None:
    scheduler, hub = make("a", "b", "c", max_wait=0.05)
    for model_id in ("b", "c"):  # alike starts: without the cap, c's three waiting requests would go first
        scheduler.learned.record_start(scheduler.slot(model_id).process.spec, 0.1)
    lease = await scheduler.acquire("a")
    served: list[str] = []
    tasks = [asyncio.ensure_future(ask(scheduler, "b", served))]
    await asyncio.sleep(0)
    tasks += [asyncio.ensure_future(ask(scheduler, "c", served)) for _ in range(3)]
    await wait_until(lambda: scheduler.slot("a").evicting, what="a closed once b passed maxWait")
    lease.release()
    await asyncio.wait_for(asyncio.gather(*tasks), 2)
    assert served == ["b", "c", "c", "c"] and starts(hub) == ["a", "b", "c"]
