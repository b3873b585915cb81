"""The streaming proxy through real HTTP: routing, rewrites, headers, SSE, errors."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import socket
from urllib.parse import urlsplit

import aiohttp
import pytest

from support import PY, Proxy, fake, make_config, wait_until

from swapproxy.web import proxy as proxy_module


def one(model: str = "m", *flags: str, **extra: object) -> dict[str, dict[str, object]]:
    return {model: fake(model, *flags, **extra)}


async def echo(proxy: Proxy, raw: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    async with proxy.http.post(proxy.url + "/v1/debug/echo", data=raw, headers=hdrs) as resp:
        return resp.status, await resp.json(content_type=None)


async def test_body_reaches_upstream_byte_identical(proxy_factory) -> None:
    proxy = await proxy_factory(make_config(one()))
    raw = json.dumps(
        {
            "model": "m",
            "messages": [
                {"role": "system", "content": "ünïcode ✓ and \\u escapes"},
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
            ],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}},
            "temperature": 0.70,
        },
        indent=3,
        ensure_ascii=False,
    ).encode()
    status, seen = await echo(proxy, raw, {"Authorization": "Bearer upstream-key", "Connection": "keep-alive, X-Drop", "X-Drop": "1", "X-Keep": "2"})
    assert status == 200
    assert base64.b64decode(seen["body_b64"]) == raw
    assert seen["headers"]["authorization"] == "Bearer upstream-key"
    assert seen["headers"]["x-keep"] == "2"
    assert "x-drop" not in seen["headers"]  # named in Connection: hop-by-hop


async def test_alias_use_model_name_and_filters(proxy_factory) -> None:
    config = make_config(
        one(
            "real",
            aliases=["gpt-4o-mini"],
            useModelName="org/Real-Model",
            filters={"stripParams": "temperature, top_p, model", "setParams": {"top_k": 5, "model": "evil"}},
        )
    )
    proxy = await proxy_factory(config)
    raw = json.dumps({"model": "gpt-4o-mini", "temperature": 2, "top_p": 0.1, "messages": []}).encode()
    status, seen = await echo(proxy, raw)
    assert status == 200
    sent = json.loads(base64.b64decode(seen["body_b64"]))
    assert sent == {"model": "org/Real-Model", "messages": [], "top_k": 5}


async def test_default_model_and_missing_model(proxy_factory) -> None:
    proxy = await proxy_factory(make_config(one("d"), defaultModel="d"))
    async with proxy.http.post(proxy.url + "/v1/chat/completions", json={"messages": []}) as resp:
        assert resp.status == 200
        assert (await resp.json())["model"] == "d"
    proxy2 = await proxy_factory(make_config(one("x")))
    async with proxy2.http.post(proxy2.url + "/v1/chat/completions", json={"messages": []}) as resp:
        assert resp.status == 400
        err = (await resp.json())["error"]
        assert err["param"] == "model" and "no model" in err["message"]


async def test_errors_are_openai_envelopes(proxy_factory) -> None:
    proxy = await proxy_factory(make_config(one()))
    cases = [
        (b'{"model": "nope", "messages": []}', 404, "model 'nope' not found in config"),
        (b"{not json", 400, "not valid JSON"),
        (b"[1, 2]", 400, "must be a JSON object"),
        (b'{"model": 5}', 400, "'model' must be a string"),
        (b"\xff\xfe", 400, "not valid"),
    ]
    for raw, status, text in cases:
        async with proxy.http.post(proxy.url + "/v1/chat/completions", data=raw) as resp:
            assert resp.status == status, raw
            body = await resp.json()
            assert set(body["error"]) == {"message", "type", "code", "param"}
            assert text in body["error"]["message"], body
    async with proxy.http.get(proxy.url + "/no/such/route") as resp:
        assert resp.status == 404
        assert "error" in await resp.json()


async def test_a_get_on_a_post_route_is_405_with_allow(proxy_factory) -> None:
    proxy = await proxy_factory(make_config(one()))
    for path in ("/v1/chat/completions", "/completion"):
        async with proxy.http.get(proxy.url + path) as resp:
            assert resp.status == 405, path
            assert resp.headers["Allow"] == "POST"
            assert "not allowed" in (await resp.json())["error"]["message"]
    assert proxy.swapper.running() == []  # nothing started for it


async def test_body_over_limit_is_413(proxy_factory) -> None:
    proxy = await proxy_factory(make_config(one(), maxRequestBodyMB=0.01))
    raw = json.dumps({"model": "m", "prompt": "x" * 20000}).encode()
    async with proxy.http.post(proxy.url + "/v1/completions", data=raw) as resp:
        assert resp.status == 413
        assert (await resp.json())["error"]["code"] == "request_too_large"


async def test_sse_events_are_forwarded_one_by_one(proxy_factory) -> None:
    proxy = await proxy_factory(make_config(one("m", "--tokens", "5")))
    port = proxy.swapper.slot("m").process.spec.port
    body = {"model": "m", "messages": [], "stream": True, "x_gate": True}
    async with proxy.http.post(proxy.url + "/v1/chat/completions", json=body) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        assert resp.headers["X-Accel-Buffering"] == "no"
        events = [await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 5)]
        while not events[-1].startswith(b"data: [DONE]"):
            # The fake holds event k+1 until released: event k must already be here.
            async with proxy.http.get(f"http://127.0.0.1:{port}/debug/stats") as r:
                assert (await r.json())["gate_waiting"] >= 0
            async with proxy.http.post(f"http://127.0.0.1:{port}/debug/release") as r:
                assert r.status == 200
            events.append(await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 5))
    contents = [json.loads(e[6:])["choices"][0]["delta"].get("content") for e in events[:-1] if b'"choices": []' not in e]
    assert "".join(c for c in contents if c) == "tok0 tok1 tok2 tok3 tok4 "


async def test_client_disconnect_reaches_the_upstream(proxy_factory) -> None:
    proxy = await proxy_factory(make_config(one("m", "--tokens", "50")))
    port = proxy.swapper.slot("m").process.spec.port
    body = {"model": "m", "messages": [], "stream": True, "x_gate": True}
    resp = await proxy.http.post(proxy.url + "/v1/chat/completions", json=body)
    await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 5)
    resp.close()  # the client goes away mid-stream
    # The fake is parked at its gate; only the closed connection can end its handler.
    await upstream_sees_its_stream_cut(proxy, port)


async def upstream_sees_its_stream_cut(proxy: Proxy, port: int) -> None:
    """The fake on ``port`` saw its one stream's connection close, and model m's lease is back."""

    async def upstream_saw_it() -> bool:
        async with proxy.http.get(f"http://127.0.0.1:{port}/debug/stats") as r:
            stats = await r.json()
        return stats["cancelled_streams"] == 1 and stats["active_streams"] == 0

    await wait_until(upstream_saw_it, 5, "the upstream to see its connection closed")
    await wait_until(lambda: proxy.swapper.slot("m").inflight == 0, what="lease released")


async def test_a_stalled_stream_is_cut_after_response_idle(proxy_factory) -> None:
    proxy = await proxy_factory(make_config(one("m", "--tokens", "50", timeouts={"responseIdle": 0.5})))
    port = proxy.swapper.slot("m").process.spec.port
    body = {"model": "m", "messages": [], "stream": True, "x_gate": True}
    async with proxy.http.post(proxy.url + "/v1/chat/completions", json=body) as resp:
        first = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 5)
        assert b'"choices"' in first
        # The fake now waits at its gate and sends nothing: swapproxy cuts the stream.
        last = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 10)
        error = json.loads(last.removeprefix(b"data: "))["error"]
        assert error["code"] == "upstream_timeout" and "responseIdle" in error["message"]
        try:  # and the body is left unterminated: a broken response, not a short one
            rest = await asyncio.wait_for(resp.content.read(), 5)
            assert b"[DONE]" not in rest
        except aiohttp.ClientPayloadError:
            pass
    await upstream_sees_its_stream_cut(proxy, port)
    async with proxy.http.get(proxy.url + "/metrics") as r:
        assert 'swapproxy_responses_cut_total{model="m",reason="idle"} 1.0' in await r.text()


async def test_a_small_body_that_stalls_gets_504_after_response_idle(proxy_factory) -> None:
    proxy = await proxy_factory(make_config(one("m", timeouts={"responseIdle": 0.5})))
    # The fake sends Content-Length: 100, ten bytes, then nothing.
    async with proxy.http.post(proxy.url + "/v1/debug/stall", json={"model": "m"}) as resp:
        assert resp.status == 504
        error = (await resp.json())["error"]
    assert error["code"] == "upstream_timeout" and "responseIdle" in error["message"]
    await wait_until(lambda: proxy.swapper.slot("m").inflight == 0, what="lease released")


TCP_ESTABLISHED = 1  # linux/tcp_states.h


async def _stats(proxy: Proxy, port: int) -> dict[str, int]:
    async with proxy.http.get(f"http://127.0.0.1:{port}/debug/stats") as r:
        return await r.json()  # type: ignore[no-any-return]


@pytest.mark.parametrize("loading_state", [False, True], ids=["plain", "sendLoadingState"])
async def test_a_client_that_stops_reading_is_cut_after_response_idle(
    proxy_factory, monkeypatch: pytest.MonkeyPatch, loading_state: bool
) -> None:
    monkeypatch.setattr(proxy_module, "FLUSH_GRACE", 0.2)
    proxy = await proxy_factory(make_config(one(
        "m", "--tokens", "200000", timeouts={"responseIdle": 0.5}, sendLoadingState=loading_state
    )))
    port = proxy.swapper.slot("m").process.spec.port
    assert port is not None
    loop = asyncio.get_running_loop()
    body = json.dumps({"model": "m", "messages": [], "stream": True}).encode()
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills up after a few events
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, ("127.0.0.1", urlsplit(proxy.url).port))
        await loop.sock_sendall(sock, head + body)
        # This client never reads: swapproxy's writes back up and nothing passes for 0.5 s.
        await wait_until(lambda: proxy.swapper.slot("m").inflight == 1, 10, "the stream to start")
        await wait_until(lambda: proxy.swapper.slot("m").inflight == 0, 30, "the lease released")

        async def upstream_saw_it() -> bool:
            stats = await _stats(proxy, port)
            return stats["cancelled_streams"] == 1 and stats["active_streams"] == 0

        await wait_until(upstream_saw_it, 10, "the upstream to see its connection closed")

        def client_connection_gone() -> bool:
            # TCP_INFO's first byte is the state. A close() could never finish (it waits to
            # flush to a client that does not read): only an abort (RST) ends this one.
            state = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]
            return state != TCP_ESTABLISHED

        # And the client's connection is dropped FLUSH_GRACE later, not kept open for ever.
        await wait_until(client_connection_gone, 10, "swapproxy to drop the client's connection")
    finally:
        sock.close()


async def test_response_idle_counts_from_the_last_chunk_not_the_start(proxy_factory) -> None:
    # 8 tokens at 10/s: the whole stream takes ~0.8 s, twice the idle limit, each gap 0.1 s.
    proxy = await proxy_factory(make_config(one("m", "--tokens", "8", "--token-rate", "10",
                                                timeouts={"responseIdle": 0.4})))
    body = {"model": "m", "messages": [], "stream": True}
    async with proxy.http.post(proxy.url + "/v1/chat/completions", json=body) as resp:
        text = (await asyncio.wait_for(resp.read(), 15)).decode()
    assert "upstream_timeout" not in text
    assert text.rstrip().endswith("data: [DONE]")
    assert all(f"tok{i} " in text for i in range(8))


async def test_multipart_routes_by_form_field_and_streams_the_file(proxy_factory) -> None:
    proxy = await proxy_factory(make_config(one("whisper")))
    payload = os.urandom(3 * 1024 * 1024)
    form = aiohttp.FormData()
    form.add_field("file", payload, filename="a.wav", content_type="audio/wav")
    form.add_field("model", "whisper")  # after the file: the spool must find it anyway
    async with proxy.http.post(proxy.url + "/v1/audio/transcriptions", data=form) as resp:
        assert resp.status == 200, await resp.text()
        data = await resp.json()
    assert data["file_bytes"] == len(payload)
    assert data["file_sha256"] == hashlib.sha256(payload).hexdigest()
    assert data["model"] == "whisper"


async def test_query_model_routes_native_gets(proxy_factory) -> None:
    proxy = await proxy_factory(make_config({**one("a"), **one("b")}))
    async with proxy.http.get(proxy.url + "/props?model=b") as resp:
        assert resp.status == 200
        assert "b" in (await resp.json())["model_path"]
    async with proxy.http.get(proxy.url + "/slots") as resp:  # no model: the one running
        assert resp.status == 200
        assert (await resp.json())[0]["id"] == 0


async def test_model_ids_with_slashes_and_colons(proxy_factory) -> None:
    proxy = await proxy_factory(make_config(one("org/model:Q4")))
    status, data = await proxy.chat("org/model:Q4")
    assert status == 200
    async with proxy.http.get(proxy.url + "/upstream/org/model:Q4/slots") as resp:
        assert resp.status == 200
        assert isinstance(await resp.json(), list)


async def test_model_list(proxy_factory) -> None:
    config = make_config(
        {
            **one("a", aliases=["alias-a"], name="Model A", description="first", metadata={"k": 1}),
            **one("hidden", unlisted=True),
        },
        includeAliasesInList=True,
    )
    proxy = await proxy_factory(config)
    await proxy.chat("a")
    async with proxy.http.get(proxy.url + "/v1/models") as resp:
        data = (await resp.json())["data"]
    ids = [m["id"] for m in data]
    assert ids == ["a", "alias-a"]
    assert data[0]["name"] == "Model A" and data[0]["description"] == "first"
    assert data[0]["status"]["value"] == "loaded"
    assert data[0]["object"] == "model" and data[0]["owned_by"] == "swapproxy"


async def test_upstream_unreachable_is_502_with_message(proxy_factory) -> None:
    config = make_config(
        {"dead": {"cmd": f"{PY} -c \"import time; time.sleep(60)\" ${{PORT}}", "checkEndpoint": "none"}}
    )
    proxy = await proxy_factory(config)
    status, data = await proxy.chat("dead")
    assert status == 502
    assert "unreachable" in data["error"]["message"]


async def test_upstream_http_errors_pass_through(proxy_factory) -> None:
    proxy = await proxy_factory(make_config(one("k", "--api-key", "secret")))
    status, data = await proxy.chat("k")
    assert status == 401
    assert data["error"]["message"] == "Invalid API Key"  # the upstream's own body
    async with proxy.http.post(
        proxy.url + "/v1/chat/completions",
        json={"model": "k", "messages": []},
        headers={"Authorization": "Bearer secret"},
    ) as resp:
        assert resp.status == 200


async def test_loading_state_stream(proxy_factory) -> None:
    proxy = await proxy_factory(make_config(one("slow", "--startup-delay", "1.2"), sendLoadingState=True))
    body = {"model": "slow", "messages": [], "stream": True}
    async with proxy.http.post(proxy.url + "/v1/chat/completions", json=body) as resp:
        assert resp.status == 200
        text = (await resp.read()).decode()
    events = [json.loads(e[6:]) for e in text.split("\n\n") if e.startswith("data: {")]
    reasoning = [e["choices"][0]["delta"].get("reasoning_content") for e in events if e.get("choices")]
    loading = [r for r in reasoning if r]
    assert loading[0].startswith("starting slow")
    assert any("first start: no estimate yet" in r for r in loading)  # where the start is (test_progress.py)
    assert any("ready after" in r for r in loading)
    content = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e.get("choices"))
    assert content == "tok0 tok1 tok2 tok3 tok4 "
    assert text.rstrip().endswith("data: [DONE]")


async def test_per_model_upstream_key_is_injected(proxy_factory) -> None:
    proxy = await proxy_factory(make_config(one("k", "--api-key", "model-secret", apiKey="model-secret")))
    status, data = await proxy.chat("k")  # the client holds no key at all
    assert status == 200
    status, seen = await echo(proxy, json.dumps({"model": "k"}).encode(), {"Authorization": "Bearer client-key"})
    assert status == 200
    assert seen["headers"]["authorization"] == "Bearer model-secret"
    assert seen["headers"]["x-api-key"] == "model-secret"


async def test_upstream_passthrough_limits_chunked_bodies_and_bad_encodings(proxy_factory) -> None:
    proxy = await proxy_factory(make_config(one("m"), maxRequestBodyMB=0.05))  # ~52 KB

    def chunked(size: int):  # type: ignore[no-untyped-def]
        async def gen():  # type: ignore[no-untyped-def]
            for _ in range(size // 4096):
                yield b"x" * 4096
        return gen()

    async with proxy.http.post(proxy.url + "/upstream/m/debug/echo", data=chunked(40 * 4096)) as resp:
        assert resp.status == 413  # unknown length: spooled, refused before anything goes upstream
        assert (await resp.json())["error"]["code"] == "request_too_large"
    async with proxy.http.post(proxy.url + "/upstream/m/debug/echo", data=chunked(8 * 4096)) as resp:
        assert resp.status == 200
        assert base64.b64decode((await resp.json())["body_b64"]) == b"x" * 8 * 4096
    async with proxy.http.post(
        proxy.url + "/upstream/m/debug/echo", data=b"not gzip at all", headers={"Content-Encoding": "gzip"}
    ) as resp:
        assert resp.status == 400  # the client's body is at fault, not the model
        assert resp.content_type == "application/json"
