"""The swap engine through real HTTP: groups, queueing, draining, TTL, limits, failures."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from support import NO_WAIT, make_config, models, open_gated_stream, pid_gone, release_all, wait_until
from swapproxy.states import ProcessState


async def test_swap_stops_a_then_starts_b(proxy_factory) -> None:
    proxy = await proxy_factory(make_config(models("a", "b")))
    status, data = await proxy.chat("a")
    assert status == 200 and data["model"] == "a"
    pid_a = proxy.pid("a")
    assert pid_a is not None
    status, data = await proxy.chat("b")
    assert status == 200 and data["model"] == "b"
    assert pid_gone(pid_a)
    assert proxy.swapper.running() == ["b"]


async def test_swap_group_members_replace_each_other_persistent_survives(proxy_factory) -> None:
    config = make_config(
        models("a", "b", "emb", "x"),
        groups={
            "chat": {"swap": True, "exclusive": True, "members": ["a", "b"]},
            "always": {"swap": False, "exclusive": False, "persistent": True, "members": ["emb"]},
            "other": {"swap": True, "exclusive": True, "members": ["x"]},
        },
    )
    proxy = await proxy_factory(config)
    for model in ("emb", "a"):
        assert (await proxy.chat(model))[0] == 200
    assert proxy.swapper.running() == ["a", "emb"]
    assert (await proxy.chat("b"))[0] == 200  # swap within the group
    assert proxy.swapper.running() == ["b", "emb"]
    assert (await proxy.chat("x"))[0] == 200  # exclusive: stops chat, not the persistent group
    assert proxy.swapper.running() == ["emb", "x"]


async def test_non_exclusive_groups_run_side_by_side(proxy_factory) -> None:
    config = make_config(
        models("a", "b", "c"),
        groups={
            "g1": {"swap": False, "exclusive": False, "members": ["a", "b"]},
            "g2": {"swap": True, "exclusive": False, "members": ["c"]},
        },
    )
    proxy = await proxy_factory(config)
    for model in ("a", "b", "c"):
        assert (await proxy.chat(model))[0] == 200
    assert proxy.swapper.running() == ["a", "b", "c"]


async def test_exclusive_group_stops_non_persistent_groups(proxy_factory) -> None:
    config = make_config(
        models("a", "b", "c"),
        groups={
            "side": {"swap": False, "exclusive": False, "members": ["a", "b"]},
            "big": {"swap": True, "exclusive": True, "members": ["c"]},
        },
    )
    proxy = await proxy_factory(config)
    for model in ("a", "b"):
        assert (await proxy.chat(model))[0] == 200
    pids = [proxy.pid("a"), proxy.pid("b")]
    assert (await proxy.chat("c"))[0] == 200
    assert proxy.swapper.running() == ["c"]
    assert all(pid is not None and pid_gone(pid) for pid in pids)


async def test_concurrent_requests_across_models_all_succeed(proxy_factory) -> None:
    proxy = await proxy_factory(make_config(models("a", "b", flags=("--startup-delay", "0.05"))))
    order = ["a", "b", "a", "b", "a", "b", "b", "a"]
    results = await asyncio.wait_for(asyncio.gather(*(proxy.chat(m) for m in order)), 60)
    assert [status for status, _ in results] == [200] * len(order)
    assert [data["model"] for _, data in results] == order


async def test_stream_in_flight_is_not_cut_by_a_swap(proxy_factory) -> None:
    proxy = await proxy_factory(make_config(models("a", "b", flags=("--tokens", "4")), **NO_WAIT))
    stream = await open_gated_stream(proxy, "a")
    pid_a = proxy.pid("a")
    swap = asyncio.ensure_future(proxy.chat("b"))
    await wait_until(lambda: proxy.swapper.slot("a").evicting, what="a marked for eviction")
    assert proxy.swapper.slot("a").process.state is ProcessState.READY  # still serving the stream
    assert not swap.done()
    rest = await release_all(proxy, "a", stream)
    assert rest.count(b"data: ") >= 4 and rest.endswith(b"data: [DONE]\n\n")
    status, data = await asyncio.wait_for(swap, 20)
    assert status == 200 and data["model"] == "b"
    assert pid_a is not None and pid_gone(pid_a)


async def test_ttl_unloads_after_idle_not_during_a_stream(proxy_factory) -> None:
    proxy = await proxy_factory(make_config(models("a", ttl=0.3)))
    stream = await open_gated_stream(proxy, "a")
    stopped = asyncio.Event()
    proxy.swapper.slot("a").process.add_listener(
        lambda p, old, new: stopped.set() if new is ProcessState.STOPPING else None
    )
    with pytest.raises(asyncio.TimeoutError):  # three TTLs pass with the stream open: no unload
        await asyncio.wait_for(stopped.wait(), 0.9)
    await release_all(proxy, "a", stream)
    await asyncio.wait_for(stopped.wait(), 5)  # idle now: the TTL fires
    await wait_until(lambda: proxy.swapper.slot("a").process.state is ProcessState.STOPPED)


async def test_a_long_drain_does_not_hold_up_other_models(proxy_factory) -> None:
    config = make_config(
        models("a", "b", "emb"),
        groups={
            "chat": {"swap": True, "exclusive": True, "members": ["a", "b"]},
            "side": {"swap": False, "exclusive": False, "persistent": True, "members": ["emb"]},
        },
        **NO_WAIT,
    )
    proxy = await proxy_factory(config)
    stream = await open_gated_stream(proxy, "a")  # a stream that does not end by itself
    swap = asyncio.ensure_future(proxy.chat("b"))  # must wait for that stream
    await wait_until(lambda: proxy.swapper.slot("a").evicting, what="a draining")
    status, data = await asyncio.wait_for(proxy.chat("emb"), 10)  # needs no eviction: not held up
    assert status == 200 and data["model"] == "emb"
    assert not swap.done()
    await release_all(proxy, "a", stream)
    assert (await asyncio.wait_for(swap, 15))[0] == 200


async def test_concurrency_limit_answers_429(proxy_factory) -> None:
    proxy = await proxy_factory(make_config(models("a", concurrencyLimit=2)))
    s1 = await open_gated_stream(proxy, "a")
    s2 = await open_gated_stream(proxy, "a")
    async with proxy.http.post(
        proxy.url + "/v1/chat/completions", json={"model": "a", "messages": []}
    ) as resp:
        assert resp.status == 429
        assert resp.headers["Retry-After"] == "1"
        body = await resp.json()
        assert body["error"]["code"] == "rate_limit_exceeded"
    await release_all(proxy, "a", s1)
    await release_all(proxy, "a", s2)
    assert (await proxy.chat("a"))[0] == 200


async def test_start_failure_is_503_with_log_lines_then_the_same_answer_within_the_backoff(proxy_factory) -> None:
    proxy = await proxy_factory(make_config(models("a", flags=("--exit-during-startup", "7")),
                                            circuitBreaker={"backoff": 30}))
    starts: list[int] = []
    proxy.swapper.slot("a").process.add_listener(
        lambda p, old, new: starts.append(1) if new is ProcessState.STARTING else None)
    body = {"model": "a", "messages": [{"role": "user", "content": "hi"}]}
    answers = []
    for _ in range(3):  # what the openai SDK's default retries would send
        async with proxy.http.post(proxy.url + "/v1/chat/completions", json=body) as resp:
            answers.append((resp.status, resp.headers.get("Retry-After"), resp.headers.get("x-should-retry"),
                            await resp.json()))
    status, retry_after, should_retry, data = answers[0]
    assert (status, retry_after, should_retry) == (503, "30", "false")
    assert data["error"]["code"] == "model_start_failed"
    assert "code 7" in data["error"]["message"]
    assert "failed to load model" in data["error"]["message"]
    for status2, retry2, should2, data2 in answers[1:]:  # the cached failure: same message, no spawn
        assert (status2, should2, data2) == (503, "false", data) and 1 <= int(retry2) <= 30
    assert len(starts) == 1
    assert proxy.swapper.slot("a").process.state is ProcessState.FAILED


async def test_health_timeout_is_503(proxy_factory) -> None:
    config = make_config(models("a", flags=("--startup-delay", "30")), healthCheckTimeout=0.4)
    proxy = await proxy_factory(config)
    status, data = await proxy.chat("a")
    assert status == 503
    assert data["error"]["code"] == "health_check_timeout"
    assert data["error"]["message"].startswith("upstream health check timed out after 0.4s")


async def test_waiter_that_disconnects_leaves_the_queue(proxy_factory) -> None:
    proxy = await proxy_factory(make_config(models("a", "b"), **NO_WAIT))
    stream = await open_gated_stream(proxy, "a")
    body = {"model": "b", "messages": []}
    waiter = asyncio.ensure_future(proxy.http.post(proxy.url + "/v1/chat/completions", json=body))
    # b waits in the queue and a is closed to new requests while its stream drains
    await wait_until(lambda: proxy.swapper.slot("a").evicting and proxy.swapper.slot("b").waiting == 1,
                     what="b waiting for a to drain")
    waiter.cancel()  # the client goes away while waiting for the swap
    await wait_until(lambda: proxy.swapper.slot("b").waiting == 0, what="b's place given back")
    await wait_until(lambda: not proxy.swapper.slot("a").evicting, what="eviction abandoned")
    await release_all(proxy, "a", stream)
    assert proxy.swapper.running() == ["a"]  # nobody asked for b any more
    assert (await proxy.chat("a"))[0] == 200


async def test_preload_hook_starts_models(proxy_factory) -> None:
    config = make_config(models("a", "b"), hooks={"on_startup": {"preload": ["b"]}})
    proxy = await proxy_factory(config)
    await wait_until(lambda: proxy.swapper.running() == ["b"] and proxy.pid("b") is not None, 10, "preload")
    await wait_until(lambda: proxy.swapper.slot("b").process.state is ProcessState.READY, 10, "b ready")


async def test_upstream_crash_mid_stream_ends_the_client_stream(proxy_factory) -> None:
    proxy = await proxy_factory(make_config(models("a", flags=("--tokens", "20", "--crash-after-tokens", "3"))))
    body = {"model": "a", "messages": [], "stream": True}
    async with proxy.http.post(proxy.url + "/v1/chat/completions", json=body) as resp:
        assert resp.status == 200
        text = b""
        with pytest.raises(aiohttp.ClientPayloadError):
            async for chunk in resp.content.iter_any():
                text += chunk
    assert b"upstream_disconnected" in text
    await wait_until(lambda: proxy.swapper.slot("a").process.state is ProcessState.FAILED, what="marked failed")
    assert (await proxy.chat("a"))[0] == 200  # the next request starts it again


# -- the batching scheduler (routing.scheduler.use: fifo, the default) -----------------------------
async def test_a_ready_model_is_served_at_once_while_a_swap_waits_for_it(proxy_factory) -> None:
    """Request 1 streams on a; request 2 for b waits; request 3 for a is served at once, no swap."""
    proxy = await proxy_factory(make_config(models("a", "b")))
    stream = await open_gated_stream(proxy, "a")
    pid_a = proxy.pid("a")
    waiting = asyncio.ensure_future(proxy.chat("b"))
    await wait_until(lambda: proxy.swapper.slot("b").waiting == 1, what="b waiting")
    status, data = await asyncio.wait_for(proxy.chat("a"), 5)  # served while b waits
    assert status == 200 and data["model"] == "a" and proxy.pid("a") == pid_a
    assert not proxy.swapper.slot("a").evicting and not waiting.done()
    await release_all(proxy, "a", stream)
    status, data = await asyncio.wait_for(waiting, 20)
    assert status == 200 and data["model"] == "b"
    assert pid_gone(pid_a)


async def test_a_model_busy_past_max_wait_is_closed_so_the_swap_happens(proxy_factory) -> None:
    config = make_config(models("a", "b"), routing={"scheduler": {"settings": {"fifo": {"maxWait": 0.3}}}})
    proxy = await proxy_factory(config)
    stream = await open_gated_stream(proxy, "a")  # never ends by itself
    waiting = asyncio.ensure_future(proxy.chat("b"))
    await wait_until(lambda: proxy.swapper.slot("a").evicting, what="a closed after maxWait")
    late = asyncio.ensure_future(proxy.chat("a"))  # a takes no new request now: it queues behind b
    await wait_until(lambda: proxy.swapper.slot("a").waiting == 1, what="the late a request queued")
    await release_all(proxy, "a", stream)
    assert (await asyncio.wait_for(waiting, 20))[1]["model"] == "b"
    assert (await asyncio.wait_for(late, 20))[1]["model"] == "a"


async def test_strict_closes_the_running_model_at_once(proxy_factory) -> None:
    proxy = await proxy_factory(make_config(models("a", "b"), routing={"scheduler": {"use": "strict"}}))
    stream = await open_gated_stream(proxy, "a")
    waiting = asyncio.ensure_future(proxy.chat("b"))
    await wait_until(lambda: proxy.swapper.slot("a").evicting, what="a closed at once")
    late = asyncio.ensure_future(proxy.chat("a"))
    await wait_until(lambda: proxy.swapper.slot("a").waiting == 1, what="the late a request queued")
    await release_all(proxy, "a", stream)
    assert (await asyncio.wait_for(waiting, 20))[1]["model"] == "b"
    assert (await asyncio.wait_for(late, 20))[1]["model"] == "a"
