"""End to end against the real llama-server and a real model (marker: llama).

Needs ``python3 scripts/install_llama.py`` to have filled ~/.cache/swapproxy/
(``bash scripts/test.sh`` does it). Without it these tests fail with a message
saying so; they are never skipped.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import openai
import pytest

from support import Proxy, free_port_block, make_config, pid_gone, wait_http_ok, wait_until

pytestmark = pytest.mark.llama

#: gemma-3-270m's embedding width.
N_EMBD = 640


def e2e_config(llama: tuple[Path, Path], **extra_models: dict[str, object]):
    server, model = llama
    base = f"{server} --host 127.0.0.1 --port ${{PORT}} -m {model} -t 2"
    models: dict[str, dict[str, object]] = {
        "chat-a": {"cmd": f"{base} -c 1024 --metrics", "aliases": ["gpt-4o-mini"]},
        "chat-b": {"cmd": f"{base} -c 768 --temp 1.0"},
        "embed": {"cmd": f"{base} -c 512 --embeddings --pooling mean"},
        **extra_models,
    }
    groups = {
        "chat": {"swap": True, "exclusive": True, "members": [m for m in models if m != "embed"]},
        "embeddings": {"swap": True, "exclusive": False, "persistent": True, "members": ["embed"]},
    }
    return make_config(models, groups=groups, healthCheckTimeout=60)


def sdk(proxy: Proxy, key: str = "sk-none") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key=key, max_retries=0, timeout=120)


USER = [{"role": "user", "content": "Say hello in three words."}]


async def test_openai_sdk_chat_stream_completions_embeddings(proxy_factory, llama) -> None:
    proxy = await proxy_factory(e2e_config(llama))
    client = sdk(proxy)
    try:
        chat = await client.chat.completions.create(model="gpt-4o-mini", messages=USER, max_tokens=16)
        assert chat.choices[0].message.content
        assert chat.choices[0].finish_reason in ("stop", "length")

        stream = await client.chat.completions.create(model="chat-a", messages=USER, max_tokens=16, stream=True)
        parts, finish = [], None
        async for chunk in stream:
            for choice in chunk.choices:
                parts.append(choice.delta.content or "")
                finish = choice.finish_reason or finish
        assert "".join(parts).strip()
        assert finish in ("stop", "length")

        completion = await client.completions.create(model="chat-a", prompt="The capital of France is", max_tokens=8)
        assert completion.choices[0].text

        emb = await client.embeddings.create(model="embed", input=["hello world", "a second text"])
        assert [len(d.embedding) for d in emb.data] == [N_EMBD, N_EMBD]
        # persistent embeddings group: the chat model kept running beside it
        assert proxy.swapper.running() == ["chat-a", "embed"]
        # llama-server's own metrics (chat-a runs with --metrics) in swapproxy's, labelled
        async with proxy.http.get(proxy.url + "/metrics") as resp:
            text = await resp.text()
        assert 'llamacpp:prompt_tokens_total{model="chat-a"}' in text
        assert 'llamacpp:tokens_predicted_total{model="embed"}' not in text  # embed runs without --metrics
    finally:
        await client.close()


async def swap_there_and_back(proxy: Proxy) -> list[int | None]:
    """chat-a, chat-b, chat-a through the SDK: each answers alone; the pids each one ran as."""
    client = sdk(proxy)
    try:
        pids = []
        for model in ("chat-a", "chat-b", "chat-a"):
            chat = await client.chat.completions.create(model=model, messages=USER, max_tokens=4)
            assert chat.choices[0].message.content is not None
            assert proxy.swapper.running() == [model]
            pids.append(proxy.pid(model))
        return pids
    finally:
        await client.close()


async def test_swap_between_chat_models_and_back(proxy_factory, llama) -> None:
    proxy = await proxy_factory(e2e_config(llama))
    pids = await swap_there_and_back(proxy)
    assert len(set(pids)) == 3
    assert pid_gone(pids[0]) and pid_gone(pids[1])


async def test_swap_with_fast_stop_as_in_the_example_config(proxy_factory, llama) -> None:
    """config.example.yaml stops its chat models with ``cmdStop: kill -KILL ${PID}``: swaps work."""
    server, model = llama
    base = f"{server} --host 127.0.0.1 --port ${{PORT}} -m {model} -t 2"
    fast = {"cmdStop": "kill -KILL ${PID}"}
    proxy = await proxy_factory(e2e_config(
        llama, **{"chat-a": {"cmd": f"{base} -c 1024", **fast}, "chat-b": {"cmd": f"{base} -c 768", **fast}}
    ))
    pids = await swap_there_and_back(proxy)
    assert len(set(pids)) == 3
    assert pid_gone(pids[0]) and pid_gone(pids[1])
    # Killed by cmdStop's SIGKILL, not by SIGTERM after a wait.
    assert proxy.swapper.slot("chat-b").process.exit_code == -9


async def test_native_completion_and_upstream_slots(proxy_factory, llama) -> None:
    proxy = await proxy_factory(e2e_config(llama))
    body = {"model": "chat-b", "prompt": "Once upon a time", "n_predict": 8}
    async with proxy.http.post(proxy.url + "/completion", json=body) as resp:
        assert resp.status == 200
        data = await resp.json()
        assert data["content"] and data["tokens_predicted"] > 0
    async with proxy.http.get(proxy.url + "/upstream/chat-b/slots") as resp:
        assert resp.status == 200
        slots = await resp.json()
        assert isinstance(slots, list) and slots and "id" in slots[0]
    async with proxy.http.get(proxy.url + "/props?model=chat-b") as resp:
        assert resp.status == 200
        assert "gemma" in json.dumps(await resp.json()).lower()


async def test_open_webui_call_pattern(proxy_factory, llama) -> None:
    """GET /v1/models, then a streamed chat with include_usage: the usage chunk arrives."""
    proxy = await proxy_factory(e2e_config(llama))
    async with proxy.http.get(proxy.url + "/v1/models") as resp:
        ids = [m["id"] for m in (await resp.json())["data"]]
    assert ids == ["chat-a", "chat-b", "embed"]
    body = {
        "model": ids[0],
        "messages": USER,
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 8,
    }
    events = []
    async with proxy.http.post(proxy.url + "/v1/chat/completions", json=body) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        async for line in resp.content:
            if line.startswith(b"data: ") and not line.startswith(b"data: [DONE]"):
                events.append(json.loads(line[6:]))
            if line.startswith(b"data: [DONE]"):
                break
    usage = [e["usage"] for e in events if e.get("usage")]
    assert usage and usage[-1]["completion_tokens"] > 0 and usage[-1]["prompt_tokens"] > 0


async def test_tools_and_json_schema_pass_through(proxy_factory, llama) -> None:
    proxy = await proxy_factory(e2e_config(llama))
    client = sdk(proxy)
    try:
        tools = [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "Weather for a city",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
                },
            }
        ]
        messages = [{"role": "user", "content": "What is the weather in Paris?"}]
        answer = await client.chat.completions.create(model="chat-a", messages=messages, tools=tools, max_tokens=48)
        assert answer.choices[0].finish_reason in ("stop", "length", "tool_calls")

        schema = {
            "type": "object",
            "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
            "required": ["name", "age"],
        }
        structured = await client.chat.completions.create(
            model="chat-a",
            messages=[{"role": "user", "content": "Invent a person."}],
            response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema}},
            max_tokens=64,
        )
        content = structured.choices[0].message.content or ""
        if structured.choices[0].finish_reason == "stop":  # grammar-constrained: it must parse
            person = json.loads(content)
            assert set(person) >= {"name", "age"}
        else:
            assert content.lstrip().startswith("{")
    finally:
        await client.close()


async def test_upstream_api_key_reaches_llama_server(proxy_factory, llama) -> None:
    server, model = llama
    keyed = {"cmd": f"{server} --host 127.0.0.1 --port ${{PORT}} -m {model} -c 512 -t 2 --api-key upstream-secret"}
    proxy = await proxy_factory(e2e_config(llama, keyed=keyed))
    body = {"model": "keyed", "messages": USER, "max_tokens": 2}
    async with proxy.http.post(proxy.url + "/v1/chat/completions", json=body) as resp:
        assert resp.status == 401  # llama-server's own answer, passed through
    headers = {"Authorization": "Bearer upstream-secret"}
    async with proxy.http.post(proxy.url + "/v1/chat/completions", json=body, headers=headers) as resp:
        assert resp.status == 200
        assert (await resp.json())["choices"][0]["message"]["content"] is not None


async def test_llama_server_routes_and_variants_through_swapproxy(proxy_factory, llama) -> None:
    """The routes llama.cpp's own tests call, which swapproxy answered 404 before: /responses and
    token counting, without /v1; a setParamsByID variant and a warm selector on the same server."""
    proxy = await proxy_factory(e2e_config(llama, **{"chat-v": {
        "cmd": f"{llama[0]} --host 127.0.0.1 --port ${{PORT}} -m {llama[1]} -t 2 -c 1024",
        "filters": {"setParamsByID": {"${MODEL_ID}:short": {"max_tokens": 2}}}}},
    ))
    http = proxy.http
    async with http.post(proxy.url + "/chat/completions/input_tokens", json={"model": "chat-a", "messages": USER}) as r:
        assert r.status == 200, await r.text()
        assert (await r.json())["input_tokens"] > 3
    async with http.post(proxy.url + "/responses", json={"model": "chat-a", "input": "Hello", "max_output_tokens": 8}) as r:
        assert r.status == 200, await r.text()
        assert (await r.json())["object"] == "response"
    async with http.post(proxy.url + "/v1/chat/completions", json={"model": "chat-v:short", "messages": USER}) as r:
        assert r.status == 200, await r.text()
        assert (await r.json())["usage"]["completion_tokens"] <= 2  # the variant's max_tokens
    assert proxy.swapper.running() == ["chat-v"]


async def test_a_cold_context_error_is_llama_servers_own_in_every_loading_state_mode(proxy_factory, llama) -> None:
    """The real server's exceed_context_size_error: BadRequestError warm; cold with a loading state,
    the same error object in the stream (APIError), no [DONE]; and /v1/models lists the GGUF's facts."""
    server, model = llama
    base = f"{server} --host 127.0.0.1 --port ${{PORT}} -m {model} -t 2 -c 256"
    proxy = await proxy_factory(make_config({
        "off": {"cmd": base}, "true": {"cmd": base, "sendLoadingState": True},
        "keepalive": {"cmd": base, "sendLoadingState": "keepalive"},
    }, healthCheckTimeout=60))
    long = [{"role": "user", "content": "hello " * 400}]
    client = sdk(proxy)
    seen: dict[tuple[str, str], tuple[type, object]] = {}
    try:
        for mode in ("off", "true", "keepalive"):
            for temperature in ("cold", "warm"):
                try:
                    stream = await client.chat.completions.create(model=mode, messages=long, stream=True)
                    async for _ in stream:
                        pass
                except openai.APIError as exc:
                    seen[(mode, temperature)] = (type(exc), exc.body)

        async def described() -> bool:  # the GGUF reader parses the whole tokenizer: seconds, off the loop
            return "params_string" in ((await client.models.list()).data[0].model_extra or {})

        await wait_until(described, 120, "the GGUF's facts in /v1/models")
        listed = {m.id: m.model_extra for m in (await client.models.list()).data}
    finally:
        await client.close()
    upstream = seen[("off", "warm")][1]
    assert isinstance(upstream, dict) and upstream["type"] == "exceed_context_size_error" and upstream["code"] == 400
    assert upstream["n_ctx"] == 256
    for mode in ("off", "true", "keepalive"):
        assert seen[(mode, "warm")][0] is openai.BadRequestError
        assert seen[(mode, "cold")] == ((openai.BadRequestError if mode == "off" else openai.APIError), upstream)
    facts = listed["off"]
    assert (facts["params_string"], facts["quantization"]["name"]) == ("270M", "Q4_K_M")
    assert facts["meta"]["n_ctx_train"] == 32768 and facts["meta"]["n_params"] == 268098176


async def test_a_real_llama_server_and_a_swapproxy_as_peers(proxy_factory, llama) -> None:
    """A swapproxy whose peers are a bare llama-server and another swapproxy (which runs a real model)."""
    server, model = llama
    port = free_port_block(1)
    bare = subprocess.Popen([str(server), "--host", "127.0.0.1", "--port", str(port), "-m", str(model), "-t", "2",
                             "-c", "512", "--alias", "gemma"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        other = await proxy_factory(e2e_config(llama))
        front = await proxy_factory(make_config({"local": {"cmd": "sleep 60", "proxy": "http://127.0.0.1:9",
                                                           "checkEndpoint": "none"}}, peers={
            "bare": {"proxy": f"http://127.0.0.1:{port}", "models": ["gemma"]},
            "other": {"proxy": other.url, "models": ["chat-a", "embed"]}}))
        await wait_http_ok(f"http://127.0.0.1:{port}/health", 60, "the bare llama-server")
        client = sdk(front)
        for name in ("bare/gemma", "gemma", "chat-a", "other/chat-a"):
            chat = await client.chat.completions.create(model=name, messages=USER, max_tokens=8)
            assert chat.choices[0].message.content is not None, name
        vectors = await client.embeddings.create(model="other/embed", input="hello")
        assert len(vectors.data[0].embedding) == N_EMBD
        # the probes read what is loaded where: the other swapproxy's statuses, the bare server's list
        await wait_until(lambda: front.runtime.peers.health("other").loaded >= {"chat-a", "embed"}, 10)
        assert front.runtime.peers.health("bare").up and "gemma" in front.runtime.peers.health("bare").loaded
    finally:
        bare.terminate()
        bare.wait(timeout=20)
