"""setParamsByID, selectors and profiles through a live swapproxy and the fake llama-server."""

from __future__ import annotations

import asyncio
import base64
import json

from support import fake, make_config, models, open_gated_stream, sse_events, wait_until


async def echoed(proxy, model: str, **extra: object) -> dict:  # type: ignore[no-untyped-def]
    """The body the upstream received for a request naming ``model``."""
    async with proxy.http.post(proxy.url + "/v1/debug/echo", json={"model": model, **extra}) as resp:
        assert resp.status == 200, await resp.text()
        return json.loads(base64.b64decode((await resp.json())["body_b64"]))


async def test_set_params_by_id_serves_variants_from_one_server(proxy_factory) -> None:
    proxy = await proxy_factory(make_config({"gpt": fake("gpt", filters={
        "setParams": {"temperature": 0.7, "effort": "default"},
        "setParamsByID": {"${MODEL_ID}": {"effort": "medium"}, "${MODEL_ID}:high": {"effort": "high", "model": "x"},
                          "${MODEL_ID}:low": {"effort": "low"}}})}))
    assert await echoed(proxy, "gpt", temperature=1) == {"model": "gpt", "temperature": 0.7, "effort": "medium"}
    pid = proxy.pid("gpt")
    assert await echoed(proxy, "gpt:high") == {"model": "gpt:high", "temperature": 0.7, "effort": "high"}
    assert await echoed(proxy, "gpt:low") == {"model": "gpt:low", "temperature": 0.7, "effort": "low"}
    assert proxy.pid("gpt") == pid  # no swap: one loaded server serves every variant
    async with proxy.http.get(proxy.url + "/v1/models") as resp:
        assert (await resp.json())["data"][0]["aliases"] == ["gpt:high", "gpt:low"]


async def test_warm_selector_uses_the_chat_model_already_loaded(proxy_factory) -> None:
    """Open WebUI's task model pointed at a warm selector: titles go to whatever is loaded."""
    proxy = await proxy_factory(make_config(models("chat-a", "chat-b"), selectors={
        "task-model": {"strategy": "warm", "targets": ["chat-a", "chat-b"]}}))
    assert (await echoed(proxy, "task-model"))["model"] == "chat-a"  # nothing loaded: start the first
    status, _ = await proxy.chat("chat-b")  # the user switches chat models
    assert status == 200 and proxy.swapper.running() == ["chat-b"]
    pid = proxy.pid("chat-b")
    assert (await echoed(proxy, "task-model"))["model"] == "chat-b"  # no swap back to chat-a
    assert proxy.swapper.running() == ["chat-b"] and proxy.pid("chat-b") == pid


async def test_spillover_selector_fills_targets_then_starts_the_next(proxy_factory) -> None:
    proxy = await proxy_factory(make_config(models("a", "b"), groups={"pool": {"swap": False, "members": ["a", "b"]}},
                                            selectors={"pool": {"strategy": "spillover", "targets": ["a", "b"],
                                                                "settings": {"spillover": 2}}}))
    streams = [await open_gated_stream(proxy, "pool") for _ in range(2)]  # both fit on a
    assert proxy.swapper.running() == ["a"] and proxy.swapper.slot("a").inflight == 2
    streams.append(await open_gated_stream(proxy, "pool"))  # a is full: b starts
    assert proxy.swapper.running() == ["a", "b"] and proxy.swapper.slot("b").inflight == 1
    streams.append(await open_gated_stream(proxy, "pool"))  # b has room
    streams.append(await open_gated_stream(proxy, "pool"))  # both full, none cold: the least busy (a tie)
    assert sorted(proxy.swapper.slot(m).inflight for m in ("a", "b")) == [2, 3]
    for model in ("a", "b"):
        port = proxy.swapper.slot(model).process.spec.port
        async with proxy.http.post(f"http://127.0.0.1:{port}/debug/release?n=100") as resp:
            assert resp.status == 200
    for stream in streams:
        assert b"[DONE]" in await asyncio.wait_for(stream.content.read(), 10)
        stream.release()
    await wait_until(lambda: proxy.swapper.slot("a").inflight + proxy.swapper.slot("b").inflight == 0)
    assert proxy.runtime.selectors.reserved("pool", "a") == proxy.runtime.selectors.reserved("pool", "b") == 0


async def test_pin_selector_and_selectors_do_not_apply_on_upstream(proxy_factory) -> None:
    proxy = await proxy_factory(make_config(models("a", "b"), selectors={
        "fixed": {"strategy": "pin", "targets": ["b", "a"], "name": "Fixed", "metadata": {"purpose": "x"}}}))
    assert (await echoed(proxy, "fixed"))["model"] == "b"
    async with proxy.http.get(proxy.url + "/upstream/fixed/health") as resp:
        assert resp.status == 404 and (await resp.json())["error"]["code"] == "model_not_found"
    async with proxy.http.get(proxy.url + "/v1/models") as resp:
        listed = {m["id"]: m for m in (await resp.json())["data"]}
    assert listed["fixed"]["selector"] == {"strategy": "pin", "targets": ["b", "a"]}
    assert (listed["fixed"]["name"], listed["fixed"]["meta"], listed["fixed"]["status"]) == (
        "Fixed", {"purpose": "x"}, {"value": "loaded"})


async def test_profiles_pin_names_and_are_switched_through_the_api(proxy_factory) -> None:
    config = make_config(models("big", "small"), selectors={"any": {"strategy": "warm", "targets": ["small", "big"]}},
                         profiles={"coding": {"description": "Coding models",
                                              "pins": {"llm-code": "big", "small": "big", "llm-any": "any",
                                                       "image-gen": None}}})
    proxy = await proxy_factory(config)
    async with proxy.http.get(proxy.url + "/api/profiles") as resp:
        assert await resp.json() == {"active": None, "profiles": [{
            "id": "coding", "description": "Coding models",
            "pins": {"llm-code": "big", "small": "big", "llm-any": "any", "image-gen": ""}}]}
    assert (await echoed(proxy, "small"))["model"] == "small"
    async with proxy.http.get(proxy.url + "/api/events") as events:
        stream = sse_events(events)
        assert (await anext(stream))["profile"] is None
        async with proxy.http.put(proxy.url + "/api/profiles/active", json={"name": "coding"}) as resp:
            assert resp.status == 200 and await resp.json() == {"active": "coding"}
        event = await anext(stream)
        while event["type"] != "profile":
            event = await anext(stream)
        assert event["active"] == "coding"
    assert (await echoed(proxy, "small"))["model"] == "big"  # a pin shadows an existing id
    assert (await echoed(proxy, "llm-code"))["model"] == "big"
    assert (await echoed(proxy, "llm-any"))["model"] == "big"  # pin -> warm selector -> the loaded target
    async with proxy.http.post(proxy.url + "/v1/chat/completions", json={"model": "image-gen"}) as resp:
        assert resp.status == 404
        assert (await resp.json())["error"]["message"] == "model 'image-gen' is disabled by the active profile 'coding'"
    async with proxy.http.get(proxy.url + "/upstream/llm-code/debug/echo") as resp:  # pins apply on /upstream
        assert resp.status == 200 and (await resp.json())["path"] == "/debug/echo"
    async with proxy.http.get(proxy.url + "/v1/models") as resp:
        ids = [(m["id"], m.get("profile")) for m in (await resp.json())["data"]]
    assert ids == [("big", None), ("small", None), ("any", None), ("llm-code", "coding"), ("llm-any", "coding")]

    for body, status, message in [
        ([1], 400, "invalid profile request"), ({}, 400, "profile name is required"),
        ({"name": 3}, 400, "profile name must be a string or null"), ({"name": "nope"}, 404, "profile 'nope' not found"),
    ]:
        async with proxy.http.put(proxy.url + "/api/profiles/active", json=body) as resp:
            assert resp.status == status and (await resp.json())["error"]["message"].startswith(message)
    async with proxy.http.put(proxy.url + "/api/profiles/active", json={"name": None}) as resp:
        assert await resp.json() == {"active": None}
    assert (await echoed(proxy, "small"))["model"] == "small"
