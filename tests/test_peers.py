"""Peers on loopback: a second swapproxy (in-process and as a child process) and a bare fake llama-server.

Each test runs real servers on real sockets: requests for a peer's model go to the peer with its
key, filters and model id; a peer that is down answers 503 with Retry-After at once, even when
connecting to it would hang; a warm selector prefers the peer that has the model loaded and fails
over to its next target when one cannot be reached.
"""

from __future__ import annotations

import base64
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from support import STATE_DIR, Proxy, fake, free_port_block, make_config, models, start_cli, wait_until


def peer(url: str, *names: str, **extra: Any) -> dict[str, Any]:
    return {"proxy": url, "models": list(names), **extra}


async def details(proxy: Proxy, headers: dict[str, str] | None = None) -> dict[str, Any]:
    async with proxy.http.get(proxy.url + "/running?details=1", headers=headers) as resp:
        assert resp.status == 200
        return await resp.json()


async def peer_up(proxy: Proxy, name: str, model: str | None = None, headers: dict[str, str] | None = None) -> bool:
    """Whether ``proxy``'s last probe found peer ``name`` up (and, with ``model``, that model loaded there)."""
    health = (await details(proxy, headers))["peers"][name]
    return bool(health["up"]) and (model is None or health["models"][model] == "ready")


def sample(text: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return None


@pytest.fixture
def blackhole() -> Iterator[int]:
    """A loopback port whose accept queue is full: a connection attempt to it hangs (its SYN is dropped)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    filler = socket.create_connection(server.getsockname())  # takes the queue's one place
    try:
        yield server.getsockname()[1]
    finally:
        filler.close()
        server.close()


async def test_two_swapproxies_serve_each_others_models_as_peers(proxy_factory, tmp_path: Path) -> None:
    port_a = free_port_block(1)
    # B: a swapproxy with keys, which knows A as its peer "a" (A is not up yet: B sees it down first)
    b = await proxy_factory(make_config(models("b-model"), apiKeys=["key-b"],
                                        peers={"a": peer(f"http://127.0.0.1:{port_a}", "a-model")}))
    key_b = {"Authorization": "Bearer key-b"}
    # A: another swapproxy, a child process, which knows B as its peer "b" and holds B's key
    doc = {"startPort": free_port_block(2), "stateDir": str(STATE_DIR), "models": models("a-model"),
           "peers": {"b": peer(b.url, "b-model", apiKey="key-b")}}
    (tmp_path / "a.yaml").write_text(json.dumps(doc))
    proc = await start_cli(tmp_path / "a.yaml", port_a)
    a = Proxy(b.app, f"http://127.0.0.1:{port_a}", b.http)  # A's URL, through the same client session
    try:
        for name in ("b-model", "b/b-model"):  # the bare id (one peer lists it) and the full name
            status, body = await a.chat(name, max_tokens=3)
            assert (status, body["model"]) == (200, "b-model"), body  # B's own server answered
        # a stream through the hop arrives as a stream
        chat = {"model": "b-model", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        async with a.http.post(a.url + "/v1/chat/completions", json=chat) as resp:
            assert resp.status == 200 and resp.content_type == "text/event-stream"
            assert (await resp.read()).rstrip().endswith(b"data: [DONE]")
        # the other way round, once B's probe finds A up
        await wait_until(lambda: peer_up(b, "a", headers=key_b), 10, "B to see A up")
        chat = {"model": "a/a-model", "messages": [{"role": "user", "content": "hi"}]}
        async with b.http.post(b.url + "/v1/chat/completions", json=chat, headers=key_b) as resp:
            assert resp.status == 200 and (await resp.json())["model"] == "a-model"
        # A lists B's model by its full name, loaded there, as its probe of B's /v1/models read it
        await wait_until(lambda: peer_up(a, "b", "b-model"), 10, "A to see b-model loaded on B")
        async with a.http.get(a.url + "/v1/models") as resp:
            listed = {m["id"]: m for m in (await resp.json())["data"]}
        assert listed["b/b-model"]["status"] == {"value": "loaded"} and listed["b/b-model"]["peer"] == "b"
        assert "b-model" not in listed  # bare ids are not listed (llama-swap's rule)
        async with a.http.get(a.url + "/metrics") as resp:
            text = await resp.text()
        assert sample(text, "swapproxy_requests_total", model="b/b-model", route="/v1/chat/completions",
                      status="200") == 3
        assert sample(text, "swapproxy_peer_up", peer="b") == 1
    finally:
        proc.terminate()
        await proc.wait()


async def test_a_llama_server_peer_gets_its_key_filters_and_model_id(proxy_factory, spawn) -> None:
    server = await spawn("--model-name", "echo", "--api-key", "peer-key")
    lab = peer(server.url, "echo", apiKey="peer-key",
               filters={"stripParams": "top_k", "setParams": {"provider": {"zdr": True}}})
    # a local model aliased "echo": local names win over a bare peer id, "lab/echo" reaches the peer
    proxy = await proxy_factory(make_config({"local": fake("local", aliases=["echo"])}, peers={"lab": lab}))
    client_key = {"Authorization": "Bearer client-key", "x-api-key": "client-key"}
    body = {"model": "lab/echo", "top_k": 5, "x": 1}
    async with proxy.http.post(proxy.url + "/v1/debug/echo", json=body, headers=client_key) as resp:
        assert resp.status == 200
        echo = await resp.json()
    assert echo["path"] == "/v1/debug/echo"
    assert (echo["headers"]["authorization"], echo["headers"]["x-api-key"]) == ("Bearer peer-key", "peer-key")
    sent = json.loads(base64.b64decode(echo["body_b64"]))
    assert sent == {"model": "echo", "x": 1, "provider": {"zdr": True}}  # the peer's own id, its filters
    # a multipart upload: its model field becomes the peer's id too
    form = aiohttp.FormData()
    form.add_field("model", "lab/echo")
    form.add_field("file", b"\x00" * 70000, filename="a.wav", content_type="audio/wav")
    async with proxy.http.post(proxy.url + "/v1/debug/echo", data=form) as resp:
        assert resp.status == 200
        upload = base64.b64decode((await resp.json())["body_b64"])
    assert b'name="model"\r\n\r\necho\r\n' in upload and upload.count(b"\x00") == 70000
    # the raw passthrough reaches the peer too, with its key
    async with proxy.http.get(proxy.url + "/upstream/lab/echo/debug/echo?q=1") as resp:
        assert resp.status == 200 and (await resp.json())["path"] == "/debug/echo?q=1"
    status, answer = await proxy.chat("echo")  # the local alias
    assert (status, answer["model"]) == (200, "local")
    # a bare llama-server says nothing of what is loaded: its model counts as loaded while it answers
    await wait_until(lambda: peer_up(proxy, "lab", "echo"), 10, "the probe to find the peer")
    assert (await details(proxy))["peers"]["lab"]["source"] == "listed"


async def test_a_dead_peer_answers_503_at_once_not_after_its_connect_timeout(proxy_factory, blackhole) -> None:
    refused = free_port_block(1)  # nothing listens there
    proxy = await proxy_factory(make_config(models("local"), peers={
        "hole": peer(f"http://127.0.0.1:{blackhole}", "m"),  # connecting hangs: llama-swap would wait 30 s
        "gone": peer(f"http://127.0.0.1:{refused}", "g")}))
    await wait_until(lambda: proxy.runtime.peers.is_down("hole"), 10, "the probe to give up on the black hole")
    for name in ("hole/m", "m", "gone/g"):
        began = time.monotonic()
        status, body = await proxy.chat(name)
        assert time.monotonic() - began < 0.5, name
        assert (status, body["error"]["code"]) == (503, "peer_unavailable")
    async with proxy.http.post(proxy.url + "/v1/chat/completions", json={"model": "hole/m"}) as resp:
        assert resp.status == 503 and resp.headers["Retry-After"] == "2"
    health = (await details(proxy))["peers"]
    assert health["hole"]["up"] is False and "probe" in health["hole"]["error"]
    assert health["gone"]["up"] is False and health["gone"]["models"] == {"g": "unreachable"}
    async with proxy.http.get(proxy.url + "/metrics") as resp:
        assert sample(await resp.text(), "swapproxy_peer_up", peer="hole") == 0


async def test_warm_prefers_the_peer_with_the_model_loaded_and_fails_over(proxy_factory, spawn) -> None:
    x = await proxy_factory(make_config({"m": fake("mx")}))
    y = await proxy_factory(make_config({"m": fake("my")}))
    assert (await y.chat("m"))[0] == 200  # m is loaded on Y only
    flaky = await spawn("--model-name", "m")
    proxy = await proxy_factory(make_config(models("local"), peers={
        "px": peer(x.url, "m"), "py": peer(y.url, "m"), "flaky": peer(flaky.url, "m")}, selectors={
        "any": {"strategy": "warm", "targets": ["px/m", "py/m"]},
        "first-up": {"strategy": "warm", "targets": ["flaky/m", "px/m"]},
        "pinned": {"strategy": "pin", "targets": ["flaky/m", "px/m"]}}))
    await wait_until(lambda: peer_up(proxy, "py", "m"), 10, "the probe to see m loaded on Y")
    status, body = await proxy.chat("any")
    assert (status, body["model"]) == (200, "my")  # Y has it loaded; X would have to start it
    # flaky is up when probed, then dies; the next request finds out, and goes to the next target
    await wait_until(lambda: peer_up(proxy, "flaky"), 10, "the probe to see flaky up")
    await flaky.kill()
    status, body = await proxy.chat("first-up")
    assert (status, body["model"]) == (200, "mx")
    assert proxy.runtime.peers.is_down("flaky")
    status, body = await proxy.chat("first-up")  # known down now: straight to the next target
    assert (status, body["model"]) == (200, "mx")
    status, body = await proxy.chat("pinned")  # pin keeps its first target
    assert (status, body["error"]["code"]) == (503, "peer_unavailable")
    assert not proxy.runtime.selectors._reserved  # every reservation was released

    # the request history has each of them by the target that served it (or failed), and the selector
    async def history() -> list[dict[str, Any]]:
        async with proxy.http.get(proxy.url + "/api/metrics/activity?limit=10") as r:
            return (await r.json())["data"]

    rows: list[dict[str, Any]] = []

    async def four() -> bool:
        rows[:] = await history()
        return len(rows) == 4

    await wait_until(four, 10, "the four requests in the history")
    assert [(r["model"], r["resp_status_code"], r["metadata"]["selector"]) for r in rows] == [
        ("flaky/m", 503, "pinned"), ("px/m", 200, "first-up"), ("px/m", 200, "first-up"), ("py/m", 200, "any")]
