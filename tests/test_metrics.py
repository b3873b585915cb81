"""/metrics: parsed with prometheus-client's own parser; counters move as requests and swaps happen."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from support import Proxy, fake, fake_cmd, make_config, sse, wait_until

from swapproxy.metrics import TokenTap, tree_rss, usage_from_tail
from swapproxy.tokens import tail_counts


async def scrape(proxy: Proxy) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of one /metrics scrape."""
    async with proxy.http.get(proxy.url + "/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await resp.text()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def v(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def config(**top: Any) -> Any:
    return make_config({"a": fake("a", "--tokens", "4"), "b": fake("b", "--tokens", "6"),
                        "bad": fake("bad", "--exit-during-startup", "1")}, **top)


async def post(proxy: Proxy, path: str, body: dict[str, Any]) -> tuple[int, bytes]:
    async with proxy.http.post(proxy.url + path, json=body) as resp:
        return resp.status, await resp.read()


CHAT = "/v1/chat/completions"


async def test_counters_move_with_requests_swaps_and_tokens(proxy_factory) -> None:
    proxy = await proxy_factory(config())
    before = await scrape(proxy)
    assert v(before, "swapproxy_model_state", model="a", state="stopped") == 1
    assert v(before, "swapproxy_requests_total", model="a", route=CHAT, status="200") == 0
    assert v(before, "swapproxy_queue_depth") == 0

    hi = [{"role": "user", "content": "one two three"}]
    # non-stream: usage in the JSON body
    assert (await post(proxy, CHAT, {"model": "a", "messages": hi}))[0] == 200
    # stream with include_usage (b swaps a out): usage in the last event
    status, raw = await post(proxy, CHAT, {"model": "b", "messages": hi, "stream": True,
                                           "stream_options": {"include_usage": True}})
    assert status == 200 and raw.endswith(b"data: [DONE]\n\n")
    # stream without usage: llama.cpp's timings in the finish event
    assert (await post(proxy, CHAT, {"model": "b", "messages": hi, "stream": True}))[0] == 200
    # native /completion stream (timings, no [DONE]) and embeddings (prompt tokens only)
    assert (await post(proxy, "/completion", {"model": "b", "prompt": "four five", "stream": True}))[0] == 200
    assert (await post(proxy, "/v1/embeddings", {"model": "b", "input": "six seven eight nine"}))[0] == 200
    # errors count too, with bounded labels
    assert (await post(proxy, CHAT, {"model": "no-such-model", "messages": hi}))[0] == 404
    assert (await post(proxy, "/v1/some/other/route", {"model": "zzz"}))[0] == 404

    after = await scrape(proxy)
    assert v(after, "swapproxy_requests_total", model="a", route=CHAT, status="200") == 1
    assert v(after, "swapproxy_requests_total", model="b", route=CHAT, status="200") == 2
    assert v(after, "swapproxy_requests_total", model="b", route="/completion", status="200") == 1
    assert v(after, "swapproxy_requests_total", model="", route=CHAT, status="404") == 1  # not "no-such-model"
    assert v(after, "swapproxy_requests_total", model="", route="/{tail}", status="404") == 1  # not the raw URL
    models_seen = {dict(labels).get("model") for (name, labels) in after if name == "swapproxy_requests_total"}
    assert models_seen <= {"a", "b", "bad", ""}
    assert v(after, "swapproxy_request_duration_seconds_count", model="b", route=CHAT) == 2
    assert v(after, "swapproxy_time_to_first_byte_seconds_count", model="a", route=CHAT) == 1
    # the first request's time to first byte includes starting the model
    assert v(after, "swapproxy_time_to_first_byte_seconds_sum", model="a", route=CHAT) >= v(
        after, "swapproxy_model_start_seconds_sum", model="a")

    assert v(after, "swapproxy_swaps_total", model="a") == 1
    assert v(after, "swapproxy_swaps_total", model="b") == 1
    assert v(after, "swapproxy_model_start_seconds_count", model="b") == 1
    assert v(after, "swapproxy_model_state", model="a", state="stopped") == 1
    assert v(after, "swapproxy_model_state", model="b", state="ready") == 1
    assert v(after, "swapproxy_upstream_rss_bytes", model="b") > 1_000_000
    assert ("swapproxy_upstream_rss_bytes", (("model", "a"),)) not in after  # not running: no sample
    assert v(after, "swapproxy_inflight_requests", model="b") == 0

    # tokens: prompt "one two three" = 3 words in the fake; completions 4 (a) and 6 (b)
    assert v(after, "swapproxy_tokens_total", model="a", kind="prompt") == 3
    assert v(after, "swapproxy_tokens_total", model="a", kind="completion") == 4
    # b's second stream counts from llama.cpp's timings, which leave out the prompt tokens its
    # slot's cache already held (the same "one two three": 2 of 3; one is always processed)
    assert v(after, "swapproxy_tokens_total", model="b", kind="prompt") == 3 + 1 + 2 + 4
    assert v(after, "swapproxy_tokens_total", model="b", kind="completion") == 6 + 6 + 6


async def test_inflight_gauge_during_a_held_stream_and_start_failures(proxy_factory) -> None:
    proxy = await proxy_factory(config(groups={
        "main": {"members": ["a", "b"], "swap": True, "exclusive": False},
        "side": {"members": ["bad"], "swap": True, "exclusive": False},
    }))
    body = {"model": "a", "messages": [{"role": "user", "content": "x"}], "stream": True, "x_gate": True}
    async with proxy.http.post(proxy.url + CHAT, json=body) as resp:
        assert resp.status == 200
        await resp.content.readline()  # the first event: the stream is open and held by the gate
        held = await scrape(proxy)
        assert v(held, "swapproxy_inflight_requests", model="a") == 1
        async with proxy.http.post(proxy.url + "/upstream/a/debug/release?n=100") as rel:
            assert rel.status == 200
        await resp.read()
    await wait_until(lambda: proxy.swapper.slots["a"].inflight == 0)
    assert v(await scrape(proxy), "swapproxy_inflight_requests", model="a") == 0

    assert (await post(proxy, CHAT, {"model": "bad", "messages": []}))[0] == 503
    after = await scrape(proxy)
    assert v(after, "swapproxy_model_start_failures_total", model="bad") == 1
    assert v(after, "swapproxy_model_state", model="bad", state="failed") == 1
    assert v(after, "swapproxy_model_state", model="a", state="ready") == 1  # another group: still up


async def test_each_app_has_its_own_registry(proxy_factory) -> None:
    one, two = await asyncio.gather(proxy_factory(config()), proxy_factory(config()))
    assert (await post(one, CHAT, {"model": "a", "messages": []}))[0] == 200
    assert v(await scrape(one), "swapproxy_swaps_total", model="a") == 1
    assert v(await scrape(two), "swapproxy_swaps_total", model="a") == 0


# -- the token tap, without HTTP -------------------------------------------------------------------
def test_usage_from_the_tail_of_an_event_stream() -> None:
    usage = {"prompt_tokens": 7, "completion_tokens": 9, "total_tokens": 16}
    timings = {"prompt_n": 5, "predicted_n": 9}
    both = sse({"choices": [{"delta": {"content": "x"}}]}, {"choices": [], "timings": timings},
               {"choices": [], "usage": usage}, b"[DONE]")
    assert usage_from_tail(both, sse=True, complete=True) == (7, 9)
    one_event = sse({"choices": [], "usage": usage, "timings": timings})  # llama-server's non-OpenAI routes
    assert usage_from_tail(one_event, sse=True, complete=True) == (7, 9)  # usage wins over timings
    assert usage_from_tail(sse({"timings": timings, "stop": True}), sse=True, complete=True) == (5, 9)
    assert usage_from_tail(sse({"usage": None}, b"[DONE]"), sse=True, complete=True) is None
    assert usage_from_tail(b'data: {"cut in the midd', sse=True, complete=False) is None
    # Anthropic messages and the Responses API name them differently
    assert usage_from_tail(sse({"usage": {"input_tokens": 3, "output_tokens": 2}}), sse=True, complete=True) == (3, 2)
    assert usage_from_tail(sse({"type": "response.completed",
                                "response": {"usage": {"input_tokens": 4, "output_tokens": 1}}}),
                           sse=True, complete=True) == (4, 1)


def test_usage_from_a_json_body_whole_or_only_its_tail() -> None:
    body = {"object": "list", "data": [{"embedding": [0.1] * 5}], "usage": {"prompt_tokens": 12, "total_tokens": 12}}
    raw = json.dumps(body).encode()
    assert usage_from_tail(raw, sse=False, complete=True) == (12, 0)
    tap = TokenTap(limit=64)
    big = json.dumps({"data": [0.5] * 5000, "usage": {"prompt_tokens": 30, "completion_tokens": 2}}).encode()
    for i in range(0, len(big), 1000):
        tap(big[i:i + 1000])
    assert not tap.complete and len(tap.tail) <= 128 and tap.total == len(big)
    assert bytes(tap.tail) == big[-len(tap.tail):]
    assert usage_from_tail(tap.tail, sse=False, complete=False) == (30, 2)
    assert usage_from_tail(b"<html>not json</html>", sse=False, complete=True) is None
    assert usage_from_tail(b'..."timings":{"prompt_n":3,"predicted_n":8}}', sse=False, complete=False) == (3, 8)


def test_list_bodies_add_up_and_timings_are_kept_for_their_cache_count() -> None:
    # /completion with several prompts answers a list: every item's tokens count, the last one's timings stay
    items = [{"content": "a", "timings": {"prompt_n": 3, "predicted_n": 4, "cache_n": 1}},
             {"content": "b", "timings": {"prompt_n": 5, "predicted_n": 6, "cache_n": 2}}]
    counts = tail_counts(json.dumps(items).encode(), sse=False, complete=True)
    assert counts.tokens == (8, 10) and counts.cache_n == 2
    assert tail_counts(json.dumps(items[:1]).encode(), sse=False, complete=True).tokens == (3, 4)  # /infill's one
    # a timings object without token counts still tells the slot cache what it reused
    only_cache = tail_counts(b'{"timings": {"cache_n": 7}}', sse=False, complete=True)
    assert only_cache.tokens is None and only_cache.cache_n == 7
    # a whole body that is not JSON is searched as a cut one is
    odd = tail_counts(b'junk {"timings": {"prompt_n": 1, "predicted_n": 2, "cache_n": 9}} junk', sse=False,
                      complete=True)
    assert odd.tokens == (1, 2) and odd.cache_n == 9
    # in a stream, the newest timings are kept even when an older event has the token counts
    stream = sse({"timings": {"prompt_n": 4, "predicted_n": 2}}, {"timings": {"cache_n": 3}}, b"[DONE]")
    newest = tail_counts(stream, sse=True, complete=True)
    assert newest.tokens == (4, 2) and newest.cache_n == 3


async def test_tree_rss_counts_descendants_in_one_pass_and_leaves_out_the_gone() -> None:
    import psutil

    from swapproxy.process import ManagedProcess

    config = make_config({"m": {"cmd": fake_cmd("--fork-grandchild")}, "n": {"cmd": fake_cmd()}},
                         groups={"g": {"swap": False, "exclusive": False, "members": ["m", "n"]}})
    procs = [ManagedProcess(config.models[mid]) for mid in ("m", "n")]
    try:
        for proc in procs:
            await proc.start()
        m, n = (proc.pid for proc in procs)
        assert m is not None and n is not None
        grandchild = int(next(line for line in procs[0].log.tail() if line.startswith("grandchild pid ")).split()[-1])
        sizes = tree_rss([m, n, None])
        own = psutil.Process(m).memory_info().rss
        assert sizes[m] >= own + psutil.Process(grandchild).memory_info().rss // 2  # the grandchild counts
        assert sizes[n] > 1_000_000 and tree_rss([n])[n] > 0  # one root alone works too
    finally:
        for proc in procs:
            await proc.shutdown()
    assert tree_rss([m, n]) == {} and m not in tree_rss([m])  # gone: left out, not 0
