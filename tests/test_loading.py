"""What a client sees with ``sendLoadingState`` off, ``true`` and ``keepalive``: the openai SDK, cold and warm.

Each mode is one model of the same config (the fake llama-server with a context of
8 words, so that a longer prompt gets llama-server's 400 ``exceed_context_size_error``).
*Cold* is a request that finds its model stopped; *warm*, the same request once it runs.
The exception classes asserted here are the README's table (Open WebUI and clients).
"""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

from support import Proxy, fake, fake_cmd, make_config, wait_until
from swapproxy.states import ProcessState

MODES: dict[str, bool | str] = {"off": False, "true": True, "keepalive": "keepalive"}
LONG = " ".join(["word"] * 20)  # 20 words: more than the fakes' context of 8
CTX = ("-c", "8")


def config() -> Any:
    models = {f"m-{name}": fake(f"m-{name}", *CTX, sendLoadingState=value) for name, value in MODES.items()}
    models["other"] = fake("other")
    return make_config(models)


def client(proxy: Proxy, **kw: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="sk-anything", **kw)


async def failing_stream(proxy: Proxy, model: str) -> openai.OpenAIError:
    """The exception a streamed chat whose prompt is too long ends with."""
    sdk = client(proxy, max_retries=0)
    try:
        stream = await sdk.chat.completions.create(model=model, messages=[{"role": "user", "content": LONG}],
                                                   stream=True)
        async for _ in stream:
            pass
    except openai.OpenAIError as exc:
        return exc
    finally:
        await sdk.close()
    raise AssertionError("the stream did not fail")


async def raw_stream(proxy: Proxy, model: str, content: str) -> tuple[int, bytes]:
    body = {"model": model, "messages": [{"role": "user", "content": content}], "stream": True}
    async with proxy.http.post(proxy.url + "/v1/chat/completions", json=body) as resp:
        return resp.status, await resp.read()


def data_events(raw: bytes) -> list[Any]:
    return [json.loads(line[6:]) for line in raw.decode().split("\n") if line.startswith("data: {")]


@pytest.mark.parametrize("mode", list(MODES))
async def test_an_upstream_error_is_the_upstreams_own_cold_and_warm(proxy_factory, mode: str) -> None:
    proxy = await proxy_factory(config())
    model = f"m-{mode}"
    assert proxy.swapper.slot(model).process.state is ProcessState.STOPPED
    cold = await failing_stream(proxy, model)
    warm = await failing_stream(proxy, model)
    upstream = {"code": 400, "message": "request (20 tokens) exceeds the available context size (8 tokens), "
                                        "try increasing it", "type": "exceed_context_size_error",
                "n_prompt_tokens": 20, "n_ctx": 8}
    # warm, every mode: the upstream's 400 as it sent it
    assert type(warm) is openai.BadRequestError and warm.status_code == 400
    assert warm.body == upstream
    if mode == "off":  # the request waited for the load: a status, as warm
        assert type(cold) is openai.BadRequestError and cold.body == upstream
    else:  # the 200 went first: an error event holding the upstream's own error object, not re-wrapped
        assert type(cold) is openai.APIError and getattr(cold, "status_code", None) is None
        assert cold.body == upstream and cold.message == upstream["message"]

    # the bytes: the error event, then the end (no [DONE], as llama-server ends a failed stream)
    await proxy.swapper.unload(model)
    status, raw = await raw_stream(proxy, model, LONG)
    if mode == "off":
        assert status == 400 and json.loads(raw) == {"error": upstream}
        return
    assert status == 200 and raw.endswith(b"data: " + json.dumps({"error": upstream}, separators=(",", ":")).encode()
                                          + b"\n\n")
    assert b"[DONE]" not in raw
    if mode == "keepalive":  # nothing but comment lines before it
        assert [e for e in data_events(raw) if "error" not in e] == []
        assert raw.startswith(b": swapproxy: ")


async def final_completion(proxy: Proxy, model: str) -> Any:
    """What the openai SDK's ``.stream()`` helper reports as the whole completion of a cold request."""
    sdk = client(proxy, max_retries=0)
    try:
        async with sdk.chat.completions.stream(model=model, messages=[{"role": "user", "content": "hi"}]) as stream:
            return await stream.get_final_completion()
    finally:
        await sdk.close()


async def test_keepalive_leaves_a_clients_records_to_the_upstreams_chunks(proxy_factory) -> None:
    proxy = await proxy_factory(config())
    final = await final_completion(proxy, "m-keepalive")
    warm_status, warm = await raw_stream(proxy, "m-keepalive", "hi")
    assert proxy.swapper.slot("m-keepalive").process.state is ProcessState.READY
    assert final.id.startswith("chatcmpl") and final.model == "m-keepalive"
    assert final.choices[0].message.content == "tok0 tok1 tok2 tok3 tok4 "
    assert getattr(final.choices[0].message, "reasoning_content", None) is None
    assert warm_status == 200 and data_events(warm)[0]["id"].startswith("chatcmpl")


async def test_with_true_a_client_keeps_the_loading_chunks(proxy_factory) -> None:
    """What the README warns of: the openai SDK's .stream() helper takes the first chunk's id."""
    final = await final_completion(await proxy_factory(config()), "m-true")
    assert final.id == "swapproxy-loading"
    assert final.choices[0].message.content == "tok0 tok1 tok2 tok3 tok4 "


async def test_loading_chunks_carry_the_upstreams_model_name(proxy_factory) -> None:
    """sendLoadingState: true — the chunks a client keeps name the model as the upstream's own do."""
    proxy = await proxy_factory(make_config({
        "chat": {"cmd": fake_cmd("--model-name", "chat-file.gguf"), "sendLoadingState": True},
        "other": fake("other"),
    }))
    spec = proxy.swapper.slot("chat").process.spec
    assert (await proxy.chat("chat"))[0] == 200  # it ran once: its /props named it
    await wait_until(lambda: proxy.runtime.upstream_props.name(spec) == "chat-file.gguf", what="/props read")
    assert (await proxy.chat("other"))[0] == 200  # chat is swapped out
    status, raw = await raw_stream(proxy, "chat", "hi")
    events = data_events(raw)
    loading = [e for e in events if e["id"] == "swapproxy-loading"]
    own = [e for e in events if e["id"] != "swapproxy-loading"]
    assert status == 200 and loading and own
    assert loading[0]["choices"][0]["delta"]["reasoning_content"].startswith("stopping other; starting chat")
    assert {e["model"] for e in events} == {"chat-file.gguf"}
    assert raw.endswith(b"data: [DONE]\n\n")


@pytest.mark.parametrize("mode", list(MODES))
async def test_a_failed_start_then_the_cached_failure(proxy_factory, mode: str) -> None:
    """A failed start: after the 200 an error event; within the back-off, a plain 503 in every mode."""
    proxy = await proxy_factory(make_config(
        {"bad": fake("bad", "--exit-during-startup", "3", sendLoadingState=MODES[mode])},
        circuitBreaker={"backoff": 30}))
    starts: list[int] = []
    proxy.swapper.slot("bad").process.add_listener(
        lambda p, old, new: starts.append(1) if new is ProcessState.STARTING else None)
    sdk = client(proxy)  # the SDK's default retries

    async def attempt() -> openai.OpenAIError:
        try:
            stream = await sdk.chat.completions.create(model="bad", messages=[{"role": "user", "content": "hi"}],
                                                       stream=True)
            async for _ in stream:
                pass
        except openai.OpenAIError as exc:
            return exc
        raise AssertionError("no error")

    try:
        first, again = await attempt(), await attempt()
    finally:
        await sdk.close()
    if mode == "off":
        assert type(first) is openai.InternalServerError and first.status_code == 503
    else:
        assert type(first) is openai.APIError and first.body["code"] == "model_start_failed"
    assert "code 3" in first.message
    assert type(again) is openai.InternalServerError and again.status_code == 503  # before any 200
    assert again.response.headers["Retry-After"] and again.response.headers["x-should-retry"] == "false"
    assert len(starts) == 1  # neither the SDK's retries nor the second call spawned it again
