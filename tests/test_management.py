"""Management API through real HTTP against the fake llama-server: shapes, status codes, streams."""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from support import (Proxy, fake, make_config, open_gated_stream, pid_gone, release_all, sse_events, start_proxy,
                     wait_until)

import swapproxy
from swapproxy import __version__
from swapproxy.web.management import UI_CSP

TIMEOUT = 10.0


def two_models(**top: Any) -> Any:
    """Models a and b (swap each other), and "bad", which fails to load (exit code 3)."""
    return make_config(
        {"a": fake("a", ttl=30), "b": fake("b"), "bad": fake("bad", "--exit-during-startup", "3")}, **top
    )


async def get_json(proxy: Proxy, path: str, **kw: Any) -> tuple[int, Any]:
    async with proxy.http.get(proxy.url + path, **kw) as resp:
        return resp.status, await resp.json(content_type=None)


async def call(proxy: Proxy, method: str, path: str, **kw: Any) -> tuple[int, Any]:
    async with proxy.http.request(method, proxy.url + path, **kw) as resp:
        return resp.status, await resp.json(content_type=None)


async def next_matching(events: AsyncIterator[dict[str, Any]], pred: Any, what: str) -> dict[str, Any]:
    async def find() -> dict[str, Any]:
        async for event in events:
            if pred(event):
                return event
        raise AssertionError(f"stream ended before {what}")

    try:
        return await asyncio.wait_for(find(), TIMEOUT)
    except asyncio.TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def assert_envelope(body: Any, code: str | None = None) -> None:
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "code", "param"}, body
    if code is not None:
        assert body["error"]["code"] == code, body


# -- health, running, load/unload -------------------------------------------------------------
async def test_health_liveness_and_running_details(proxy_factory) -> None:
    proxy = await proxy_factory(two_models())
    assert await get_json(proxy, "/health") == (200, {"status": "ok", "models": {}})
    assert await get_json(proxy, "/health/liveness") == (200, {"status": "alive"})
    assert await get_json(proxy, "/running") == (200, {"running": []})
    assert await get_json(proxy, "/running?details=1") == (200, {"running": [], "details": {}})

    assert await get_json(proxy, "/upstream/a/load") == (200, {"status": "ok", "message": "a is ready"})
    status, body = await get_json(proxy, "/health")
    assert (status, body) == (200, {"status": "ok", "models": {"a": {"status": "running", "pid": proxy.pid("a")}}})
    assert await get_json(proxy, "/running") == (200, {"running": ["a"]})
    status, body = await get_json(proxy, "/running?details=1")
    detail = body["details"]["a"]
    assert detail["state"] == "ready" and detail["pid"] == proxy.pid("a")
    assert detail["port"] == proxy.runtime.config.models["a"].port
    assert detail["rss_bytes"] > 1_000_000  # a real Python process tree
    assert 0 <= detail["uptime_s"] < 60
    assert detail["inflight"] == 0 and detail["waiting"] == 0
    assert detail["ttl_s"] == 30 and 0 < detail["ttl_remaining_s"] <= 30  # armed after the load's lease
    assert detail["health_check_timeout_s"] == 15
    assert time.time() - 60 < detail["state_since"] <= time.time()
    assert abs(detail["ready_since"] - detail["state_since"]) < 0.5


async def test_running_details_list_the_schedulers_queue_by_model(proxy_factory) -> None:
    # a busy model drains before the swap: b's request waits, first for its turn, then for a's drain
    proxy = await proxy_factory(two_models(routing={"scheduler": {"settings": {"fifo": {
        "maxWait": 0.3, "priority": {"b": 2}}}}}))
    stream = await open_gated_stream(proxy, "a")  # a is busy until released
    waiting = asyncio.ensure_future(proxy.chat("b"))
    try:
        await wait_until(lambda: proxy.swapper.queue_depth() == 1, 5, "b's request to queue")
        queue = (await get_json(proxy, "/running?details=1"))[1]["queue"]
        assert [(q["model"], q["waiting"], q["priority"]) for q in queue] == [("b", 1, 2)]
        assert 0 <= queue[0]["oldest_wait_s"] < 5
        assert queue[0]["swap"] is None or queue[0]["swap"]["phase"] == "draining"  # past maxWait already?

        async def draining() -> bool:
            queued = (await get_json(proxy, "/running?details=1"))[1]["queue"]
            return queued[0]["swap"] == {"phase": "draining", "stops": ["a"], "overlap": False}

        await wait_until(draining, 5, "the swap to b to wait for a's request")  # after maxWait
        await release_all(proxy, "a", stream)
        assert (await waiting)[0] == 200
    finally:
        stream.close()
        waiting.cancel()
    assert "queue" not in (await get_json(proxy, "/running?details=1"))[1]  # nothing waits


async def test_upstream_delete_load_and_errors(proxy_factory) -> None:
    proxy = await proxy_factory(two_models())
    assert await call(proxy, "DELETE", "/upstream/a") == (200, {"status": "error", "message": "a is not running"})
    assert (await get_json(proxy, "/upstream/a/load"))[0] == 200
    pid = proxy.pid("a")
    assert await call(proxy, "DELETE", "/upstream/a") == (200, {"status": "ok", "message": "a stopped"})
    assert proxy.pid("a") is None and pid is not None

    status, body = await call(proxy, "DELETE", "/upstream/nope")
    assert status == 404
    assert_envelope(body, "model_not_found")
    status, body = await get_json(proxy, "/upstream/nope/load")
    assert status == 404
    assert_envelope(body, "model_not_found")

    status, body = await get_json(proxy, "/upstream/bad/load")  # fails: 503 with its last output
    assert status == 503
    assert_envelope(body, "model_start_failed")
    assert "exited with code 3" in body["error"]["message"]
    assert "failed to load model" in body["error"]["message"]
    # /upstream/{model}/{path} is still a passthrough, native GETs included
    assert (await get_json(proxy, "/upstream/b/slots"))[0] == 200


async def test_llama_swap_unload_routes(proxy_factory) -> None:
    proxy = await proxy_factory(make_config({"a": fake("a"), "b": fake("b")}, groups={
        "g1": {"members": ["a"], "swap": True, "exclusive": False},
        "g2": {"members": ["b"], "swap": True, "exclusive": False},
    }))
    for path in ("/upstream/a/load", "/upstream/b/load"):
        assert (await get_json(proxy, path))[0] == 200
    assert proxy.swapper.running() == ["a", "b"]
    assert await call(proxy, "POST", "/api/models/unload/b") == (200, {"status": "ok", "message": "b stopped"})
    assert await call(proxy, "POST", "/api/models/unload/b") == (200, {"status": "error", "message": "b is not running"})
    status, body = await call(proxy, "POST", "/api/models/unload/zzz")
    assert status == 404 and body["error"]["code"] == "model_not_found"
    assert await get_json(proxy, "/unload") == (200, {"status": "ok", "message": "stopped 1 model(s)", "stopped": ["a"]})
    assert (await get_json(proxy, "/upstream/a/load"))[0] == 200
    status, body = await call(proxy, "POST", "/api/models/unload")
    assert (status, body["stopped"]) == (200, ["a"])
    assert proxy.swapper.running() == []


async def test_unload_waits_for_a_stream_unless_forced(proxy_factory) -> None:
    proxy = await proxy_factory(make_config({"m": fake("m", "--tokens", "50")}))
    port = proxy.swapper.slot("m").process.spec.port
    body = {"model": "m", "messages": [], "stream": True, "x_gate": True}
    async with proxy.http.post(proxy.url + "/v1/chat/completions", json=body) as resp:
        await asyncio.wait_for(resp.content.readuntil(b"\n\n"), TIMEOUT)
        pid = proxy.pid("m")
        # A plain unload waits for the stream (parked at the fake's gate) to finish...
        plain = asyncio.ensure_future(call(proxy, "POST", "/api/models/unload/m"))
        await wait_until(lambda: proxy.swapper.slot("m").evicting, TIMEOUT, "the unload to be under way")
        async with proxy.http.get(f"http://127.0.0.1:{port}/debug/stats") as r:
            assert (await r.json())["active_streams"] == 1
        assert not plain.done() and proxy.pid("m") == pid
        # ...a forced one does not: the model stops and the stream is cut.
        forced = await asyncio.wait_for(call(proxy, "POST", "/api/models/unload/m?force=1"), TIMEOUT)
        assert forced == (200, {"status": "ok", "message": "m stopped"})
        assert pid is not None and pid_gone(pid)
        try:
            rest = await asyncio.wait_for(resp.content.read(), TIMEOUT)
            assert b"[DONE]" not in rest
        except aiohttp.ClientPayloadError:
            pass  # the body was left unterminated: a broken response, as after a crash
    assert (await asyncio.wait_for(plain, TIMEOUT))[0] == 200
    await wait_until(lambda: proxy.swapper.slot("m").inflight == 0, TIMEOUT, "the cut request's lease released")
    async with proxy.http.get(proxy.url + "/metrics") as r:  # the upstream went away under the stream
        assert 'swapproxy_responses_cut_total{model="m",reason="upstream"} 1.0' in await r.text()
    assert proxy.swapper.running() == []
    assert (await proxy.chat("m"))[0] == 200  # and the model starts again on demand
    status, body = await call(proxy, "POST", "/api/models/unload/m?force=maybe")
    assert status == 400 and body["error"]["param"] == "force"
    assert proxy.swapper.running() == ["m"]  # a value it does not understand stops nothing


# -- llama.cpp router mode ----------------------------------------------------------------------
async def test_router_mode_load_unload_and_sse_as_a_router_client(proxy_factory) -> None:
    """What a llama.cpp router-mode client (Open WebUI) does: list, watch, load, unload."""
    proxy = await proxy_factory(two_models())
    status, listing = await get_json(proxy, "/models")
    by_id = {m["id"]: m for m in listing["data"]}
    assert by_id["a"]["status"]["value"] == "unloaded"
    assert by_id["a"]["status"]["args"] == [sys.executable]  # the program only: no flags, no keys

    async with proxy.http.get(proxy.url + "/models/sse") as sse:
        assert sse.headers["Content-Type"] == "text/event-stream"
        events = sse_events(sse)
        assert await call(proxy, "POST", "/models/load", json={"model": "a"}) == (200, {"success": True})
        first = await next_matching(events, lambda e: e["model"] == "a", "a loading")
        assert first == {"model": "a", "event": "model_status", "data": {"status": "loading"}}
        # (between them, llama.cpp's status_change events carry the load's progress: test_progress.py)
        second = await next_matching(events, lambda e: e["model"] == "a" and e["event"] == "model_status",
                                     "a loaded")
        assert second["data"] == {"status": "loaded"}
        status, listing = await get_json(proxy, "/v1/models")
        assert {m["id"]: m["status"]["value"] for m in listing["data"]}["a"] == "loaded"

        # loading b swaps a out: a is reported unloaded, b loading then loaded
        assert (await call(proxy, "POST", "/models/load", json={"model": "b"}))[0] == 200
        seen = []
        while ("b", "loaded") not in seen:
            e = await next_matching(events, lambda e: True, "b loaded")
            seen.append((e["model"], e["data"]["status"]))
        assert seen.index(("a", "unloaded")) < seen.index(("b", "loaded"))

        assert await call(proxy, "POST", "/models/unload", json={"model": "b"}) == (200, {"success": True})
        e = await next_matching(events, lambda e: e["model"] == "b", "b unloading")
        assert e["data"] == {"status": "unloading"}
        e = await next_matching(events, lambda e: e["model"] == "b", "b unloaded")
        assert e["data"] == {"status": "unloaded"}

        # a failed start: unloaded, failed, with the exit code — in the event and in the list
        assert (await call(proxy, "POST", "/models/load", json={"model": "bad"}))[0] == 200
        e = await next_matching(events, lambda e: e["model"] == "bad" and e["data"]["status"] == "unloaded",
                                "bad failed")
        assert e["data"] == {"status": "unloaded", "failed": True, "exit_code": 3}
    status, listing = await get_json(proxy, "/models")
    bad = {m["id"]: m for m in listing["data"]}["bad"]["status"]
    assert bad["value"] == "unloaded" and bad["failed"] is True and bad["exit_code"] == 3


async def test_router_mode_unload_answers_at_once_and_still_unloads(proxy_factory) -> None:
    """Open WebUI's Eject while a model generates: its unload call gives up after 30 s; ours answers at
    once, drains the request in flight, then stops the model; /models/sse says unloading, then unloaded."""
    proxy = await proxy_factory(make_config({"m": fake("m", "--tokens", "50")}))
    body = {"model": "m", "messages": [], "stream": True, "x_gate": True}
    async with proxy.http.get(proxy.url + "/models/sse") as sse, \
            proxy.http.post(proxy.url + "/v1/chat/completions", json=body) as resp:
        events = sse_events(sse)
        await asyncio.wait_for(resp.content.readuntil(b"\n\n"), TIMEOUT)
        await next_matching(events, lambda e: e["data"]["status"] == "loaded", "m loaded")
        pid = proxy.pid("m")
        # a client that gives up on its call at once (it got its answer anyway: at once)
        assert await asyncio.wait_for(call(proxy, "POST", "/models/unload", json={"model": "m"}), 2) == \
            (200, {"success": True})
        assert (await next_matching(events, lambda e: True, "unloading"))["data"] == {"status": "unloading"}
        assert proxy.swapper.slot("m").evicting and proxy.pid("m") == pid  # draining: the stream goes on
        port = proxy.swapper.slot("m").process.spec.port
        async with proxy.http.post(f"http://127.0.0.1:{port}/debug/release?n=1000") as r:
            assert r.status == 200
        rest = await asyncio.wait_for(resp.content.read(), TIMEOUT)
        assert rest.rstrip().endswith(b"data: [DONE]")  # finished, not cut
        assert (await next_matching(events, lambda e: True, "unloaded"))["data"] == {"status": "unloaded"}
    assert pid is not None and pid_gone(pid) and proxy.swapper.running() == []


async def test_router_mode_unload_cuts_what_is_still_in_flight_after_the_drain_limit(proxy_factory) -> None:
    proxy = await proxy_factory(make_config({"m": fake("m", "--tokens", "50")}))
    body = {"model": "m", "messages": [], "stream": True, "x_gate": True}
    async with proxy.http.post(proxy.url + "/v1/chat/completions", json=body) as resp:
        await asyncio.wait_for(resp.content.readuntil(b"\n\n"), TIMEOUT)
        pid = proxy.pid("m")
        unload = proxy.http.post(proxy.url + "/models/unload?drain=0.3", json={"model": "m"})
        async with unload as answer:  # read and closed at once: the unload is not this request's
            assert answer.status == 200
        try:
            rest = await asyncio.wait_for(resp.content.read(), TIMEOUT)  # never released: cut after 0.3 s
            assert b"[DONE]" not in rest
        except aiohttp.ClientPayloadError:
            pass  # the body was left unterminated: a broken response
    await wait_until(lambda: proxy.swapper.slot("m").process.state.value == "stopped", TIMEOUT, "m stopped")
    assert pid is not None and pid_gone(pid)
    status, answer = await call(proxy, "POST", "/models/unload?drain=soon", json={"model": "m"})
    assert status == 400 and answer["error"]["param"] == "drain"


async def test_router_mode_errors_are_envelopes(proxy_factory) -> None:
    proxy = await proxy_factory(two_models())
    status, body = await call(proxy, "POST", "/models/unload", json={"model": "a"})
    assert status == 400 and body["error"]["message"] == "model is not running"
    assert_envelope(body)
    status, body = await call(proxy, "POST", "/models/load", json={"model": "nope"})
    assert status == 404
    assert_envelope(body, "model_not_found")
    status, body = await call(proxy, "POST", "/models/load", json={"name": "a"})
    assert status == 400 and body["error"]["param"] == "model"
    status, body = await call(proxy, "POST", "/models/load", data=b"{not json", headers={"Content-Type": "application/json"})
    assert status == 400
    assert_envelope(body)


# -- logs ---------------------------------------------------------------------------------------
async def read_until(resp: aiohttp.ClientResponse, needle: str) -> str:
    seen = ""

    async def scan() -> str:
        nonlocal seen
        while needle not in seen:
            chunk = await resp.content.readany()
            if not chunk:
                raise AssertionError(f"stream ended before {needle!r}; got {seen!r}")
            seen += chunk.decode()
        return seen

    try:
        return await asyncio.wait_for(scan(), TIMEOUT)
    except asyncio.TimeoutError:
        raise AssertionError(f"no {needle!r} in {seen!r}") from None


async def test_logs_history_and_streams(proxy_factory, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="swapproxy")
    proxy = await proxy_factory(two_models())
    assert (await get_json(proxy, "/upstream/a/load"))[0] == 200
    async with proxy.http.get(proxy.url + "/logs") as resp:
        assert resp.status == 200 and resp.content_type == "text/plain"
        text = await resp.text()
    assert "[a] fake-llama: model loaded" in text
    assert "swapproxy.process: a: spawning" in text  # swapproxy's own lines too

    # history first, then live lines
    async with proxy.http.get(proxy.url + "/logs/stream/a") as resp:
        assert resp.status == 200
        await read_until(resp, "fake-llama: model loaded")
        async with proxy.http.get(proxy.url + "/logs/stream/upstream") as up, \
                proxy.http.get(proxy.url + "/logs/stream/proxy?no-history") as own, \
                proxy.http.get(proxy.url + "/logs/stream?no-history") as both:
            await read_until(up, "[a] fake-llama: model loaded")
            # ?no-history: nothing old arrives before the new lines
            assert (await call(proxy, "DELETE", "/upstream/a"))[0] == 200
            assert "fake-llama: shutting down" in await read_until(resp, "fake-llama: shutting down")
            got = await read_until(own, "a: ready -> stopping")
            assert "spawning" not in got
            got = await read_until(both, "[a] fake-llama: shutting down")
            assert "model loaded" not in got

    for source in ("nope", "a/b"):
        status, body = await get_json(proxy, f"/logs/stream/{source}")
        assert status == 400 and body["error"]["param"] == "source"


# -- /api/events ----------------------------------------------------------------------------------
async def test_api_events_snapshot_then_state_log_and_inflight(proxy_factory) -> None:
    proxy = await proxy_factory(two_models())
    assert (await get_json(proxy, "/upstream/b/load"))[0] == 200
    async with proxy.http.get(proxy.url + "/api/events?logs=5") as resp:
        assert resp.headers["Content-Type"] == "text/event-stream"
        events = sse_events(resp)
        snap = await next_matching(events, lambda e: True, "the snapshot")
        assert snap["type"] == "snapshot"
        assert [m["model"] for m in snap["models"]] == ["a", "b", "bad"]
        assert {m["model"]: m["state"] for m in snap["models"]} == {"a": "stopped", "b": "ready", "bad": "stopped"}
        assert {m["model"]: m["rss_bytes"] for m in snap["models"]}["b"] > 1_000_000  # one process-table pass
        # 5 of its lines in a row (which depends on how the fake's stdout and stderr interleave, and on
        # whether its /props request, made once it is ready, is logged yet)
        lines, logged = snap["logs"]["b"], proxy.swapper.slot("b").process.log.tail()
        assert len(lines) == 5 and any(logged[i:i + 5] == lines for i in range(len(logged) - 4)), (lines, logged)
        assert "proxy" in snap["logs"]

        status, _ = await proxy.chat("a")  # swaps b out, a in
        assert status == 200
        seen: list[dict[str, Any]] = []
        await next_matching(events, lambda e: seen.append(e) or (e["type"], e.get("inflight")) == ("inflight", 0),
                            "a's request to finish")
        states = [(e["model"], e["state"]) for e in seen if e["type"] == "state"]
        assert states == [("b", "stopping"), ("b", "stopped"), ("a", "starting"), ("a", "ready")]
        # no process-table pass inside a state change: it would sit on every swap's critical path
        assert not any("rss_bytes" in e for e in seen if e["type"] == "state")
        ready = next(e for e in seen if e.get("state") == "ready")
        assert ready["pid"] == proxy.pid("a") and ready["old"] == "starting"
        assert any(e["type"] == "log" and e["source"] == "a" and "model loaded" in e["line"] for e in seen)
        assert [(e["model"], e["inflight"]) for e in seen if e["type"] == "inflight"] == [("a", 1), ("a", 0)]
        swap = next(e for e in seen if e["type"] == "swap")
        assert (swap["stopped"], swap["cause"], swap["target"]) == (["b"], "swap", "a")
        assert abs(swap["at"] - time.time()) < 30
        assert [e["seq"] for e in seen] == sorted(e["seq"] for e in seen)

        await call(proxy, "POST", "/models/load", json={"model": "bad"})
        failed = await next_matching(events, lambda e: e.get("state") == "failed", "bad failed")
        assert failed["model"] == "bad" and failed["exit_code"] == 3
        assert "exited with code 3" in failed["error"]
        assert any("failed to load model" in line for line in failed["log_tail"])

    # a page opened now still sees what happened: every load (spawn to outcome) and stop, by time
    async with proxy.http.get(proxy.url + "/api/events?logs=0") as resp:
        timeline = (await next_matching(sse_events(resp), lambda e: True, "the snapshot"))["timeline"]
    assert [(e["kind"], e.get("model"), e.get("outcome"), e.get("stopped")) for e in timeline] == [
        ("load", "b", "ready", None), ("stop", None, None, ["b"]), ("load", "a", "ready", None),
        ("stop", None, None, ["a"]), ("load", "bad", "failed", None)]
    loads = [e for e in timeline if e["kind"] == "load"]
    assert all(e["start"] <= e["end"] for e in loads) and timeline[1]["target"] == "a"


# -- monitoring, docs, UI -----------------------------------------------------------------------
async def test_info_version_and_openapi_cover_every_route(proxy_factory) -> None:
    proxy = await proxy_factory(two_models())
    status, info = await get_json(proxy, "/info")
    assert status == 200
    assert info["version"] == __version__ and info["config_file"] == "test-config.yaml"
    assert info["listen"] == proxy.url.removeprefix("http://")
    assert 0 <= info["uptime_s"] < 60 and info["models"] == 3
    status, version = await get_json(proxy, "/api/version")
    assert (status, version["name"]) == (200, "swapproxy") and version["version"] == info["version"]

    status, doc = await get_json(proxy, "/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.")
    registered = set()
    for resource in proxy.app.router.resources():
        for route in resource:
            if route.method != "HEAD":
                registered.add((resource.canonical, route.method))
    documented = {(path, method.upper()) for path, ops in doc["paths"].items() for method in ops}
    for path, method in registered:
        if method == "*":
            assert any(p == path for p, _ in documented), path
        else:
            assert (path, method) in documented, (path, method)
    ops = doc["paths"]["/upstream/{model}/load"]["get"]
    assert ops["summary"].startswith("Start a model") and ops["parameters"][0]["name"] == "model"
    assert doc["paths"]["/models/load"]["post"]["requestBody"]["content"]["application/json"]["example"] == {
        "model": "my-model"}
    unload = doc["paths"]["/api/models/unload/{model}"]["post"]
    assert {"name": "force", "in": "query"}.items() <= next(
        p for p in unload["parameters"] if p["name"] == "force").items()

    async with proxy.http.get(proxy.url + "/swagger") as resp:
        assert resp.status == 200 and resp.content_type == "text/html"
        assert "openapi.json" in await resp.text()


async def test_root_redirects_to_ui_and_ui_files_are_served(proxy_factory) -> None:
    proxy = await proxy_factory(two_models())
    async with proxy.http.get(proxy.url + "/", allow_redirects=False) as resp:
        assert resp.status == 302 and resp.headers["Location"] == "ui"
    async with proxy.http.get(proxy.url + "/") as resp:
        assert resp.status == 200 and str(resp.url).endswith("/ui")
        page = await resp.text()
    assert "<script" in page and "http://" not in page.replace("http://www.w3.org", "")  # nothing remote
    # every file of the UI is served, under its CSP; each module's imports are files it serves too
    folder = Path(swapproxy.__file__).parent / "ui"
    for path in sorted(folder.glob("*.js")) + [folder / "style.css"]:
        async with proxy.http.get(proxy.url + "/ui/" + path.name) as resp:
            assert resp.status == 200, path.name
            assert resp.content_type == ("text/css" if path.suffix == ".css" else "text/javascript")
            assert resp.headers["Content-Security-Policy"] == UI_CSP
            text = await resp.text()
        for imported in re.findall(r'^import .* from "\./([\w.]+)";$', text, re.M):
            assert (folder / imported).is_file(), f"{path.name} imports {imported}"
        assert "http://" not in text.replace("http://www.w3.org/2000/svg", ""), path.name
    assert not re.search(r"<script(?![^>]*\bsrc=)|\bstyle=|\bon\w+=", page)  # nothing inline the CSP refuses
    status, body = await get_json(proxy, "/ui/secrets.txt")
    assert status == 404
    assert_envelope(body)


async def test_api_keys_gate_management_but_not_health(proxy_factory) -> None:
    proxy = await proxy_factory(two_models(apiKeys=["sk-test"]))
    assert (await get_json(proxy, "/health"))[0] == 200
    assert (await get_json(proxy, "/health/liveness"))[0] == 200
    for path in ("/running", "/metrics", "/logs", "/api/events", "/info", "/openapi.json"):
        async with proxy.http.get(proxy.url + path) as resp:
            assert resp.status == 401, path
    async with proxy.http.get(proxy.url + "/ui") as resp:  # a browser is asked for the key
        assert resp.status == 401 and resp.headers["WWW-Authenticate"].startswith("Basic ")
    basic = "Basic " + base64.b64encode(b"me:sk-test").decode()
    async with proxy.http.get(proxy.url + "/ui", headers={"Authorization": basic}) as resp:
        assert resp.status == 200
    assert (await get_json(proxy, "/running", headers={"Authorization": "Bearer sk-test"}))[0] == 200


async def test_open_streams_do_not_hold_up_shutdown() -> None:
    runner, proxy = await start_proxy(two_models())
    try:
        streams = [await proxy.http.get(proxy.url + p) for p in ("/api/events", "/logs/stream", "/models/sse")]
        assert all(s.status == 200 for s in streams)
        assert proxy.runtime.events.subscriber_count == 2  # subscribed before the headers went out
        began = time.monotonic()
        await runner.cleanup()
        assert time.monotonic() - began < 5  # aiohttp's own shutdown timeout is 60 s
        for s in streams:
            assert await asyncio.wait_for(s.content.read(), TIMEOUT) is not None  # ended, not hung
            s.release()
    finally:
        await proxy.http.close()
