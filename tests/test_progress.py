"""Load progress: the stage from llama-server's own log, a value and the time left from past starts.

The stage lines below are copied from real llama-server runs (the build install_llama.py
makes, at its default verbosity and at ``-lv 4``). The end-to-end tests run the fake
llama-server, which logs the same stage lines during its ``--startup-delay``.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from support import Proxy, fake, make_config, wait_until
from swapproxy.progress import STAGES, later, router_progress, stage_of, start_progress

QUIET_LOG = """\
0.00.003.037 I srv  llama_server: initializing ...
0.00.004.361 I cmn  common_param: common_params_print_info: verbosity = 3 (adjust with the `-lv N` CLI arg)
0.00.014.231 I srv    load_model: loading model '/models/gemma-3-270m-q4_k_m.gguf'
0.02.431.151 I cmn          init: llama threadpool init, n_threads = 2
0.04.375.623 I srv    load_model: initializing, n_slots = 4, n_ctx_slot = 1024, kv_unified = 'true'
0.04.380.578 I srv  llama_server: model loaded
0.04.382.252 I srv  llama_server: listening on http://127.0.0.1:18779"""

VERBOSE_LOG = """\
0.00.016.383 I srv    load_model: loading model '/models/gemma-3-270m-q4_k_m.gguf'
0.02.839.470 I load_tensors: loading model tensors, this can take a while... (load_mode = mmap)
0.02.947.344 I llama_context: constructing llama_context
0.02.987.703 I cmn  common_init_: warming up the model with an empty run - please wait ...
0.09.681.887 I srv    load_model: initializing, n_slots = 4, n_ctx_slot = 1024, kv_unified = 'true'
0.09.685.415 I srv  llama_server: model loaded"""


def stages(log: str) -> list[str]:
    seen: list[str] = []
    current: str | None = None
    for line in log.splitlines():
        found = stage_of(line)
        if found is not None:
            current = later(current, found)
            if not seen or seen[-1] != current:
                seen.append(current)
    return seen


def test_the_stages_of_a_real_llama_server_start() -> None:
    assert stages(QUIET_LOG) == ["reading model", "creating context", "health check"]
    assert stages(VERBOSE_LOG) == ["reading model", "loading tensors", "creating context", "warming up",
                                   "health check"]  # "initializing" after the warm-up does not go back
    assert stage_of("main: server is listening on http://127.0.0.1:8080") is None  # older builds: before the load


def test_the_value_comes_from_past_starts_and_a_first_start_says_it_has_none() -> None:
    first = start_progress("loading tensors", 3.0, None)
    assert (first.value, first.eta_s) == (None, None)
    assert first.describe() == "loading tensors, 3s (first start: no estimate yet)"
    assert "value" not in router_progress(first.as_json())
    later_start = start_progress("loading tensors", 4.0, 10.0)
    assert (later_start.value, later_start.eta_s) == (0.4, 6.0)
    assert later_start.describe() == "loading tensors, 40%, about 6s left"
    assert router_progress(later_start.as_json()) == {"stages": list(STAGES), "current": "loading tensors",
                                                     "value": 0.4}
    slow = start_progress("warming up", 12.0, 10.0)
    assert slow.value == 0.99 and slow.eta_s == 0.0  # below 1 until it is ready
    assert slow.describe() == "warming up, 12s, longer than its usual 10s"


async def collect(proxy: Proxy, path: str, sink: list[dict[str, Any]]) -> None:
    """Append every ``data:`` object of an event stream to ``sink`` until cancelled."""
    async with aiohttp.ClientSession() as s, s.get(proxy.url + path) as resp:
        async for line in resp.content:
            if line.startswith(b"data: "):
                sink.append(json.loads(line[6:]))


async def test_a_starting_model_reports_its_progress(proxy_factory) -> None:
    proxy = await proxy_factory(make_config({"a": fake("a", "--startup-delay", "0.8"), "b": fake("b")}))
    router: list[dict[str, Any]] = []
    ours: list[dict[str, Any]] = []
    readers = [asyncio.ensure_future(collect(proxy, "/models/sse", router)),
               asyncio.ensure_future(collect(proxy, "/api/events", ours))]
    try:
        await wait_until(lambda: proxy.runtime.events.subscriber_count == 2, 10, "both streams subscribed")
        chat = asyncio.ensure_future(proxy.chat("a"))

        async def shows_progress() -> bool:
            async with proxy.http.get(proxy.url + "/running?details=1") as resp:
                entry = (await resp.json()).get("details", {}).get("a", {})
            return entry.get("state") == "starting" and entry.get("progress", {}).get("first_start") is True

        await wait_until(shows_progress, 10, "a's progress in /running?details=1 while it starts")
        assert (await chat)[0] == 200
        first = [e for e in router if e["model"] == "a" and e["event"] == "status_change"]
        assert first, router
        assert all(e["data"]["status"] == "loading" and e["data"]["progress"]["current"] in STAGES
                   and "value" not in e["data"]["progress"] for e in first)  # a first start: no value

        assert (await proxy.chat("b"))[0] == 200
        router.clear()
        ours.clear()
        assert (await proxy.chat("a"))[0] == 200  # its start time is known now
        again = [e["data"]["progress"] for e in router if e["model"] == "a" and e["event"] == "status_change"]
        assert again and all(0 <= p["value"] < 1 for p in again), again
        values = [p["value"] for p in again]
        assert values == sorted(values)  # it only grows
        progress = [e["progress"] for e in ours if e.get("type") == "progress" and e["model"] == "a"]
        assert progress and all(p["first_start"] is False and p["eta_s"] is not None for p in progress)
        assert router[-1] == {"model": "a", "event": "model_status", "data": {"status": "loaded"}}
    finally:
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)


async def test_the_loading_state_stream_says_where_the_start_is(proxy_factory) -> None:
    proxy = await proxy_factory(make_config({"a": fake("a", "--startup-delay", "1.5", sendLoadingState=True)}))
    body = {"model": "a", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    async with proxy.http.post(proxy.url + "/v1/chat/completions", json=body) as resp:
        text = await resp.text()
    notes = [json.loads(line[6:])["choices"][0]["delta"].get("reasoning_content", "")
             for line in text.splitlines() if line.startswith("data: {") and "swapproxy-loading" in line]
    assert any("(first start: no estimate yet)" in note for note in notes), notes
