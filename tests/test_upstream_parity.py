"""/upstream/<model>/...: upstream.ignorePaths, WebSockets (compat.ignoreWebsockets), ComfyUI's routes;
and cutting a request in flight (POST /api/inflight/{id}/cancel)."""

from __future__ import annotations

import asyncio

import aiohttp

from support import fake, make_config, models, open_gated_stream, wait_until


async def test_ignored_paths_never_start_or_swap_a_model(proxy_factory) -> None:
    proxy = await proxy_factory(make_config(models("a", "b"), upstream={"ignorePaths": [r"\.css$", "^/debug/ws$"]}))
    async with proxy.http.get(proxy.url + "/upstream/a/static/site.css") as resp:
        assert resp.status == 409
        err = (await resp.json())["error"]
    assert err["code"] == "conflict"
    assert err["message"] == r"model 'a' is not loaded; path matches upstream.ignorePaths (\.css$)"
    assert proxy.swapper.running() == []
    status, _ = await proxy.chat("b")
    assert status == 200
    async with proxy.http.get(proxy.url + "/upstream/a/x.css") as resp:
        assert resp.status == 409
    assert proxy.swapper.running() == ["b"]  # b was not swapped out for a
    async with proxy.http.get(proxy.url + "/upstream/b/debug/echo/x.css?v=1") as resp:
        assert resp.status == 200 and (await resp.json())["path"] == "/debug/echo/x.css?v=1"  # ready: proxied
    async with proxy.http.get(proxy.url + "/upstream/a/debug/echo") as resp:  # any other path starts it
        assert resp.status == 200
    assert proxy.swapper.running() == ["a"]


async def test_default_ignore_paths_are_static_assets(proxy_factory) -> None:
    proxy = await proxy_factory(make_config(models("a")))
    for path in ("/app.js", "/favicon.ico", "/v1/models.json"):
        async with proxy.http.get(proxy.url + "/upstream/a" + path) as resp:
            assert resp.status == 409, path
    assert proxy.swapper.running() == []


async def test_websockets_pass_through_upstream(proxy_factory) -> None:
    proxy = await proxy_factory(make_config(models("a")))
    async with proxy.http.ws_connect(proxy.url + "/upstream/a/debug/ws/x?q=1", protocols=("echo.v2", "other"),
                                     headers={"X-Custom": "yes"}) as ws:
        hello = await ws.receive_json(timeout=10)
        assert (hello["hello"], hello["protocol"], hello["path"]) == ("a", "echo.v2", "/debug/ws/x?q=1")
        assert hello["headers"]["x-custom"] == "yes" and ws.protocol == "echo.v2"
        assert proxy.swapper.slot("a").inflight == 1  # a plain WebSocket is a request: it started a
        await ws.send_str("hello")
        assert await ws.receive_str(timeout=5) == "hello"
        await ws.send_bytes(b"\x00\x01")
        assert await ws.receive_bytes(timeout=5) == b"\x00\x01"
        await ws.send_str("close:4001")  # the upstream closes: the client gets its code
        msg = await ws.receive(timeout=5)
        assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 4001
    await wait_until(lambda: proxy.swapper.slot("a").inflight == 0)
    async with proxy.http.ws_connect(proxy.url + "/upstream/a/debug/ws") as ws:  # the client closes first
        await ws.receive_json(timeout=10)
        await ws.close(code=4002)
    await wait_until(lambda: proxy.swapper.slot("a").inflight == 0)


async def test_ignored_websockets_never_load_a_model_nor_count(proxy_factory) -> None:
    config = make_config({"tool": fake("tool", compat={"ignoreWebsockets": True}, ttl=300), **models("other")})
    proxy = await proxy_factory(config)
    async with proxy.http.get(proxy.url + "/upstream/tool/debug/ws", headers={
            "Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}) as resp:
        assert resp.status == 409
        assert (await resp.json())["error"]["message"] == ("model 'tool' is not loaded; ignored websocket requests "
                                                           "cannot start it")
    assert proxy.swapper.running() == []
    status, _ = await proxy.chat("tool")
    assert status == 200
    async with proxy.http.ws_connect(proxy.url + "/upstream/tool/debug/ws") as ws:
        await ws.receive_json(timeout=10)
        slot = proxy.swapper.slot("tool")
        assert (slot.inflight, proxy.runtime.inflight.list()) == (0, [])  # no lease, not listed
        assert slot.ttl_handle is not None  # its TTL keeps running
        status, _ = await proxy.chat("other")  # and it does not hold up a swap: it is cut
        assert status == 200
        msg = await ws.receive(timeout=10)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)
    assert proxy.swapper.running() == ["other"]


async def test_comfyui_routes_reach_comfyui_auto_and_only_its_root_starts_it(proxy_factory) -> None:
    proxy = await proxy_factory(make_config(models("a")))
    async with proxy.http.get(proxy.url + "/comfyui/") as resp:
        assert resp.status == 404 and (await resp.json())["error"]["message"] == "local model comfyui_auto not found"
    proxy = await proxy_factory(make_config({"comfyui_auto": fake("comfyui_auto")}))
    async with proxy.http.get(proxy.url + "/comfyui?x=1", allow_redirects=False) as resp:
        assert resp.status == 301 and resp.headers["Location"] == "/comfyui/?x=1"
    async with proxy.http.post(proxy.url + "/comfyui", allow_redirects=False) as resp:
        assert resp.status == 308
    async with proxy.http.get(proxy.url + "/comfyui/debug/echo") as resp:
        assert resp.status == 409
        assert (await resp.json())["error"]["message"].endswith("only /comfyui/ can start it")
    async with proxy.http.get(proxy.url + "/comfyui/") as resp:
        assert resp.status == 404  # the fake has no page at /, but the model started to say so
    assert proxy.swapper.running() == ["comfyui_auto"]
    async with proxy.http.get(proxy.url + "/comfyui/debug/echo?a=b") as resp:
        assert (await resp.json())["path"] == "/debug/echo?a=b"
    async with proxy.http.ws_connect(proxy.url + "/comfyui/debug/ws") as ws:
        assert (await ws.receive_json(timeout=10))["hello"] == "comfyui_auto"
        assert proxy.swapper.slot("comfyui_auto").inflight == 0


async def test_an_operator_cancels_a_request_in_flight(proxy_factory) -> None:
    proxy = await proxy_factory(make_config(models("a", "b")))
    stream = await open_gated_stream(proxy, "a")  # its response has begun
    async with proxy.http.get(proxy.url + "/api/inflight") as resp:
        (entry,) = (await resp.json())["requests"]
    assert (entry["model"], entry["method"], entry["path"]) == ("a", "POST", "/v1/chat/completions")
    waiting = asyncio.ensure_future(proxy.chat("b"))  # waits for a's stream before b may start
    await wait_until(lambda: len(proxy.runtime.inflight) == 2)
    queued = [e for e in proxy.runtime.inflight.list() if e.model == "b"][0]
    async with proxy.http.post(proxy.url + f"/api/inflight/{queued.id}/cancel") as resp:
        assert resp.status == 200 and await resp.json() == {"msg": "ok"}
    status, body = await asyncio.wait_for(waiting, 10)
    assert status == 503 and body["error"]["code"] == "request_cancelled"  # no response had begun: an envelope
    async with proxy.http.post(proxy.url + f"/api/inflight/{entry['id']}/cancel") as resp:
        assert resp.status == 200
    try:  # begun: the stream is cut, not ended
        rest = await asyncio.wait_for(stream.content.read(), 10)
        assert b"[DONE]" not in rest
    except aiohttp.ClientPayloadError:
        pass
    stream.release()
    await wait_until(lambda: proxy.swapper.slot("a").inflight == 0 and len(proxy.runtime.inflight) == 0)
    async with proxy.http.post(proxy.url + "/api/inflight/99/cancel") as resp:
        assert resp.status == 404 and (await resp.json())["error"]["message"] == "inflight request '99' not found"
    status, _ = await proxy.chat("b")  # nothing is left holding a
    assert status == 200
