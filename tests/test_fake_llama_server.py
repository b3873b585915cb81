"""Tests for tests/fake_llama_server.py, run as a real child process."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import signal
import socket

import aiohttp
import pytest

from support import FAKE_TIMEOUT, LISTENING_RE, Spawn, wait_until

TIMEOUT = FAKE_TIMEOUT


async def read_event(content: aiohttp.StreamReader) -> str | None:
    """The ``data:`` payload of the next SSE event, or None at end of stream."""
    data: list[str] = []
    while True:
        line = await content.readline()
        if not line:
            return "\n".join(data) if data else None
        text = line.decode().rstrip("\r\n")
        if text == "":
            if data:
                return "\n".join(data)
            continue
        if text.startswith("data: "):
            data.append(text[len("data: "):])


async def read_all_events(content: aiohttp.StreamReader) -> list[str]:
    events = []
    while (event := await read_event(content)) is not None:
        events.append(event)
    return events


CHAT = {"model": "m", "messages": [{"role": "user", "content": "hello there"}]}


# --------------------------------------------------------------------------- #


async def test_startup_delay_health_503_then_200(spawn: Spawn, session: aiohttp.ClientSession) -> None:
    server = await spawn("--startup-delay", "0.4", "--model-name", "llama-a")
    async with session.get(f"{server.url}/health") as resp:
        assert resp.status == 503
        assert await resp.json() == {
            "error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}
        }
    async with session.post(f"{server.url}/v1/chat/completions", json=CHAT) as resp:
        assert resp.status == 503

    async def healthy() -> bool:
        async with session.get(f"{server.url}/health") as resp:
            return resp.status == 200

    await wait_until(healthy, TIMEOUT, "/health 200")
    async with session.get(f"{server.url}/health") as resp:
        assert await resp.json() == {"status": "ok"}
    async with session.get(f"{server.url}/v1/models") as resp:
        assert [m["id"] for m in (await resp.json())["data"]] == ["llama-a"]
    async with session.get(f"{server.url}/props") as resp:
        props = await resp.json()
        assert props["total_slots"] == 1 and "default_generation_settings" in props
    assert any("loading model" in line for line in server.stdout)


async def test_chat_non_stream(spawn: Spawn, session: aiohttp.ClientSession) -> None:
    server = await spawn("--tokens", "4", "--model-name", "llama-b")
    async with session.post(f"{server.url}/v1/chat/completions", json=CHAT) as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == "llama-b"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "tok0 tok1 tok2 tok3 "}
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] == 4
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + 4
    assert body["timings"]["predicted_n"] == 4

    async with session.post(f"{server.url}/chat/completions", json={**CHAT, "max_tokens": 2}) as resp:
        body = await resp.json()
    assert body["choices"][0]["message"]["content"] == "tok0 tok1 "
    assert body["choices"][0]["finish_reason"] == "length"

    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    async with session.post(f"{server.url}/v1/chat/completions", json={**CHAT, "tools": tools}) as resp:
        body = await resp.json()
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": "{}"}

    async with session.post(f"{server.url}/v1/chat/completions", data=b"{not json") as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["type"] == "invalid_request_error"
    async with session.get(f"{server.url}/no/such/route") as resp:
        assert resp.status == 404
        assert (await resp.json())["error"]["code"] == 404


async def test_chat_stream_with_and_without_usage(spawn: Spawn, session: aiohttp.ClientSession) -> None:
    server = await spawn("--tokens", "3")
    async with session.post(f"{server.url}/v1/chat/completions", json={**CHAT, "stream": True}) as resp:
        assert resp.status == 200
        assert resp.content_type == "text/event-stream"
        events = await read_all_events(resp.content)
    assert len(events) == 3 + 1 + 1  # tokens, finish chunk, [DONE]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "tok0 "}
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "tok0 tok1 tok2 "
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, None, "stop"]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)

    request = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    async with session.post(f"{server.url}/v1/chat/completions", json=request) as resp:
        events = await read_all_events(resp.content)
    assert len(events) == 3 + 1 + 1 + 1
    assert events[-1] == "[DONE]"
    usage_chunk = json.loads(events[-2])
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["completion_tokens"] == 3

    async with session.get(f"{server.url}/debug/stats") as resp:
        stats = await resp.json()
    assert stats["requests"] == 2 and stats["completed_streams"] == 2 and stats["active_streams"] == 0


async def test_gated_stream_waits_for_release(spawn: Spawn, session: aiohttp.ClientSession) -> None:
    server = await spawn("--tokens", "3")
    request = {**CHAT, "stream": True, "x_gate": True}
    async with session.post(f"{server.url}/v1/chat/completions", json=request) as resp:
        first = await read_event(resp.content)
        assert first is not None and json.loads(first)["choices"][0]["delta"]["content"] == "tok0 "
        second = asyncio.create_task(read_event(resp.content))

        async def blocked_at_gate() -> bool:
            async with session.get(f"{server.url}/debug/stats") as r:
                return (await r.json())["gate_waiting"] == 1

        await wait_until(blocked_at_gate, TIMEOUT, "the stream to wait at the gate")
        done, _ = await asyncio.wait({second}, timeout=0.02)  # chunk 2 must not come by itself
        assert not done, "chunk 2 arrived before /debug/release"

        async with session.post(f"{server.url}/debug/release") as r:
            assert r.status == 200
        event = await asyncio.wait_for(second, TIMEOUT)
        assert event is not None and json.loads(event)["choices"][0]["delta"]["content"] == "tok1 "

        async with session.post(f"{server.url}/debug/release?n=100") as r:
            assert r.status == 200
        rest = await read_all_events(resp.content)
    assert rest[-1] == "[DONE]"
    assert len(rest) == 3  # tok2, finish chunk, [DONE]


async def test_client_disconnect_counts_as_cancelled(spawn: Spawn, session: aiohttp.ClientSession) -> None:
    server = await spawn("--tokens", "1000", "--token-rate", "200")
    resp = await session.post(f"{server.url}/v1/completions", json={"prompt": "x", "stream": True})
    assert await read_event(resp.content) is not None
    resp.close()  # drop the connection mid-stream

    async def cancelled() -> bool:
        async with session.get(f"{server.url}/debug/stats") as r:
            stats = await r.json()
            return stats["cancelled_streams"] == 1 and stats["active_streams"] == 0

    await wait_until(cancelled, TIMEOUT, "cancelled_streams == 1")


async def test_crash_after_tokens(spawn: Spawn, session: aiohttp.ClientSession) -> None:
    server = await spawn("--tokens", "10", "--crash-after-tokens", "2")
    events: list[str] = []
    with pytest.raises(aiohttp.ClientPayloadError):
        async with session.post(f"{server.url}/v1/chat/completions", json={**CHAT, "stream": True}) as resp:
            while (event := await read_event(resp.content)) is not None:
                events.append(event)
    assert len(events) == 2
    assert await server.wait_exit() == 1


async def test_exit_during_startup(spawn: Spawn) -> None:
    server = await spawn("--exit-during-startup", "3", wait_listening=False)
    assert await server.wait_exit() == 3
    assert any("failed to load model" in line for line in server.stderr)
    assert not any(LISTENING_RE.search(line) for line in server.stderr)


async def test_sigterm_exits_zero(spawn: Spawn) -> None:
    server = await spawn()
    server.proc.send_signal(signal.SIGTERM)
    assert await server.wait_exit() == 0
    assert "fake-llama: shutting down" in server.stdout


async def test_ignore_sigterm_needs_sigkill(spawn: Spawn, session: aiohttp.ClientSession) -> None:
    server = await spawn("--ignore-sigterm")
    server.proc.send_signal(signal.SIGTERM)
    with pytest.raises(asyncio.TimeoutError):  # it does not exit on SIGTERM...
        await asyncio.wait_for(asyncio.shield(server.proc.wait()), 0.3)
    async with session.get(f"{server.url}/health") as resp:  # ...and keeps answering
        assert resp.status == 200
    server.proc.kill()
    assert await server.wait_exit() == -signal.SIGKILL


async def test_echo_returns_exact_body(spawn: Spawn, session: aiohttp.ClientSession) -> None:
    server = await spawn()
    payload = bytes(range(256)) * 3 + b"\r\n\x00end"
    url = f"{server.url}/debug/echo/a%2Fb?q=1%20two&q=3"
    async with session.put(url, data=payload, headers={"X-Test": "yes", "Content-Type": "application/x-raw"}) as resp:
        body = await resp.json()
    assert base64.b64decode(body["body_b64"]) == payload
    assert body["method"] == "PUT"
    assert body["path"] == "/debug/echo/a%2Fb?q=1%20two&q=3"
    assert body["query"] == "q=1%20two&q=3"
    assert body["headers"]["x-test"] == "yes"
    assert body["headers"]["content-type"] == "application/x-raw"
    assert body["pid"] == server.proc.pid

    async with session.post(f"{server.url}/v1/debug/echo", data=b"") as resp:
        assert base64.b64decode((await resp.json())["body_b64"]) == b""


async def test_api_key(spawn: Spawn, session: aiohttp.ClientSession) -> None:
    server = await spawn("--api-key", "sekrit")
    async with session.get(f"{server.url}/health") as resp:
        assert resp.status == 200
    async with session.post(f"{server.url}/v1/chat/completions", json=CHAT) as resp:
        assert resp.status == 401
        assert await resp.json() == {
            "error": {"code": 401, "message": "Invalid API Key", "type": "authentication_error"}
        }
    auth = {"Authorization": "Bearer sekrit"}
    async with session.post(f"{server.url}/v1/chat/completions", json=CHAT, headers=auth) as resp:
        assert resp.status == 200
    async with session.get(f"{server.url}/debug/stats") as resp:
        stats = await resp.json()
    assert stats["unauthorized"] == 1 and stats["requests"] == 1
    assert stats["last_headers"]["authorization"] == "Bearer sekrit"


async def test_embeddings_completion_and_transcription(spawn: Spawn, session: aiohttp.ClientSession) -> None:
    server = await spawn("--embedding-dim", "5", "--tokens", "2")
    async with session.post(f"{server.url}/v1/embeddings", json={"input": ["a", "b", "a"]}) as resp:
        data = (await resp.json())["data"]
    assert [len(d["embedding"]) for d in data] == [5, 5, 5]
    assert data[0]["embedding"] == data[2]["embedding"] != data[1]["embedding"]

    async with session.post(f"{server.url}/completion", json={"prompt": "p", "n_predict": 1}) as resp:
        body = await resp.json()
    assert body["content"] == "tok0 " and body["tokens_predicted"] == 1 and body["stop"] is True

    async with session.post(f"{server.url}/completion", json={"prompt": "p", "stream": True}) as resp:
        events = [json.loads(e) for e in await read_all_events(resp.content)]
    assert [e["content"] for e in events] == ["tok0 ", "tok1 ", ""]
    assert [e["stop"] for e in events] == [False, False, True]

    audio = os.urandom(200_000)
    form = aiohttp.FormData()
    form.add_field("model", "whisper-1")
    form.add_field("file", audio, filename="a.wav", content_type="audio/wav")
    async with session.post(f"{server.url}/v1/audio/transcriptions", data=form) as resp:
        body = await resp.json()
    assert body["model"] == "whisper-1"
    assert body["file_bytes"] == len(audio)
    assert body["file_sha256"] == hashlib.sha256(audio).hexdigest()


async def test_bind_delay_grandchild_and_big_line(spawn: Spawn, session: aiohttp.ClientSession) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = await spawn("--port", str(port), "--bind-delay", "0.3", "--fork-grandchild",
                         "--big-line", "100000", wait_listening=False)
    m = await server.wait_for_line(server.stdout, r"^grandchild pid (\d+)$")
    grandchild = int(m.group(1))
    assert os.getpgid(grandchild) == os.getpgid(server.proc.pid)
    await server.wait_for_line(server.stdout, r"^x{100000}$")
    assert not any(LISTENING_RE.search(line) for line in server.stderr)
    with pytest.raises(aiohttp.ClientConnectionError):
        async with session.get(f"http://127.0.0.1:{port}/health"):
            pass
    assert await server.wait_listening() == port
    async with session.get(f"{server.url}/health") as resp:
        assert resp.status == 200


async def test_hang(spawn: Spawn, session: aiohttp.ClientSession) -> None:
    server = await spawn("--hang")
    with pytest.raises(asyncio.TimeoutError):
        async with session.post(f"{server.url}/v1/chat/completions", json=CHAT,
                                timeout=aiohttp.ClientTimeout(total=0.2)):
            pass
    async with session.get(f"{server.url}/health") as resp:
        assert resp.status == 200
