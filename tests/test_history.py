"""The request history (issue 19, part 3): what each proxied request leaves behind, and llama-swap's routes to it.

A real swapproxy on a real socket with the fake llama-server; the history's rows are
written off the request path, so the tests wait for them (the ``activity`` events on
/api/events, or the rows themselves) under a deadline. The store, its bounds and the
statistics' maths are also checked on their own.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sqlite3
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from support import Proxy, fake, make_config, sse_events, start_proxy, wait_until

from swapproxy import cli
from swapproxy.config import ConfigError, parse_config
from swapproxy.config.model import HistoryConfig
from swapproxy.web.runtime import Kind, Tier
from swapproxy.historydb import ActivityQuery, HistoryDB, histogram, percentile

CHAT = "/v1/chat/completions"
HI = [{"role": "user", "content": "one two"}]


async def get(proxy: Proxy, path: str, params: Any = None, status: int = 200, **kw: Any) -> Any:
    async with proxy.http.get(proxy.url + path, params=params, **kw) as resp:
        body = await resp.json(content_type=None)
        assert resp.status == status, (path, params, body)
        return body


async def rows(proxy: Proxy, count: int, **kw: Any) -> list[dict[str, Any]]:
    """The newest rows once at least ``count`` are recorded (oldest first)."""
    found: list[dict[str, Any]] = []

    async def enough() -> bool:
        nonlocal found
        found = (await get(proxy, "/api/metrics/activity", {"limit": "999"}, **kw))["data"]
        return len(found) >= count

    await wait_until(enough, 10, f"{count} history rows")
    return found[::-1]


async def post(proxy: Proxy, body: dict[str, Any], path: str = CHAT, **kw: Any) -> tuple[int, bytes]:
    async with proxy.http.post(proxy.url + path, json=body, **kw) as resp:
        return resp.status, await resp.read()


async def test_each_request_is_recorded_with_its_tokens_wait_and_error(proxy_factory) -> None:
    proxy = await proxy_factory(make_config({"a": fake("a", "--tokens", "3", "-c", "6"), "b": fake("b")},
                                            routing={"scheduler": {"settings": {"fifo": {"priority": {"b": 4}}}}}))
    async with proxy.http.get(proxy.url + "/api/events") as events_resp:
        events = sse_events(events_resp)
        assert (await anext(events))["type"] == "snapshot"
        assert (await post(proxy, {"model": "a", "messages": HI}))[0] == 200  # a starts
        status, raw = await post(proxy, {"model": "a", "messages": HI, "stream": True,
                                         "stream_options": {"include_usage": True}})
        assert status == 200 and raw.endswith(b"data: [DONE]\n\n")
        assert (await post(proxy, {"model": "b", "messages": HI}))[0] == 200  # a swaps out for b
        long = [{"role": "user", "content": "w " * 9}]  # over a's context of 6: the upstream's 400
        assert (await post(proxy, {"model": "a", "messages": long}))[0] == 400
        assert (await post(proxy, {"model": "nope", "messages": HI}))[0] == 404
        ids = []
        while len(ids) < 5:  # each row is announced once written, as llama-swap's "activity" event
            event = await asyncio.wait_for(anext(events), 10)
            if event["type"] == "activity":
                ids.append(event["id"])
    assert ids == [1, 2, 3, 4, 5]
    plain, stream, swapped, refused, unknown = await rows(proxy, 5)

    assert plain["model"] == "a" and plain["method"] == "POST" and plain["req_path"] == CHAT
    assert plain["resp_status_code"] == 200 and plain["resp_content_type"] == "application/json"
    assert plain["waited_for"] == "start" and 0 < plain["wait_ms"] <= plain["duration_ms"] + 1
    assert plain["wait_ms"] <= plain["ttfb_ms"] <= plain["duration_ms"] + 1
    # the fake: prompt "one two" is 2 tokens, 3 generated; its timings give the speeds; nothing cached yet
    tokens = plain["tokens"]
    assert (tokens["input_tokens"], tokens["output_tokens"], tokens["cache_tokens"]) == (2, 3, 0)
    assert tokens["prompt_per_second"] > 0 and tokens["tokens_per_second"] > 0
    assert (tokens["draft_tokens"], tokens["draft_acc_tokens"]) == (-1, -1)  # not reported
    assert "error_msg" not in plain and plain["metadata"] == {"fifo_priority": "0"}

    assert stream["resp_content_type"] == "text/event-stream" and stream["waited_for"] is None
    assert stream["wait_ms"] is None and stream["ttfb_ms"] is not None
    assert (stream["tokens"]["input_tokens"], stream["tokens"]["output_tokens"]) == (2, 3)
    assert stream["tokens"]["cache_tokens"] == 1  # the fake's slot held the same prompt (one is always processed)

    assert swapped["model"] == "b" and swapped["waited_for"] == "swap" and swapped["wait_ms"] > 0
    assert swapped["metadata"] == {"fifo_priority": "4"}

    assert refused["resp_status_code"] == 400 and refused["waited_for"] == "swap"
    assert refused["error_msg"] == "request (9 tokens) exceeds the available context size (6 tokens), try increasing it"
    assert unknown["model"] == "nope" and unknown["resp_status_code"] == 404
    assert unknown["error_msg"] == "model 'nope' not found in config" and unknown["ttfb_ms"] is None

    stats = await get(proxy, "/api/metrics/stats")
    assert stats["total_requests"] == 5 and stats["total_input_tokens"] == 2 + 2 + 2
    assert stats["total_output_tokens"] == 3 + 3 + 5 and stats["total_cache_tokens"] == 1
    assert stats["gen_histogram"]["bins"] and sum(stats["gen_histogram"]["bins"]) == 3
    only_b = await get(proxy, "/api/metrics/stats", {"model": "b"})
    assert only_b["total_requests"] == 1 and only_b["total_output_tokens"] == 5


async def test_activity_filters_sorts_pages_and_refuses_bad_parameters(proxy_factory) -> None:
    proxy = await proxy_factory(make_config({"a": fake("a", "--tokens", "2"), "b": fake("b", "--tokens", "7")},
                                            groups={"g": {"swap": False, "members": ["a", "b"]}}, captureBuffer=0))
    for i in range(6):
        words = [{"role": "user", "content": "x " * (i + 1)}]
        assert (await post(proxy, {"model": "a" if i % 2 else "b", "messages": words}))[0] == 200
    every = await rows(proxy, 6)
    assert [r["id"] for r in every] == [1, 2, 3, 4, 5, 6] and not any(r["has_capture"] for r in every)
    assert (await get(proxy, "/api/captures/1", status=404))["error"]["message"] == "capture not found"

    page = await get(proxy, "/api/metrics/activity", {"limit": "4", "page": "2"})
    assert [r["id"] for r in page["data"]] == [2, 1]  # newest first
    assert (page["page"], page["limit"], page["total"], page["total_pages"]) == (2, 4, 6, 2)
    only_a = await get(proxy, "/api/metrics/activity", [("model", "a"), ("sort", "prompt"), ("order", "asc")])
    assert [r["tokens"]["input_tokens"] for r in only_a["data"]] == [2, 4, 6] and only_a["total"] == 3
    both = await get(proxy, "/api/metrics/activity", [("model", "a"), ("model", "b")])
    assert both["total"] == 6
    ids = await get(proxy, "/api/metrics/activity", {"min_id": "2", "max_id": "4", "sort": "generated"})
    assert [(r["id"], r["tokens"]["output_tokens"]) for r in ids["data"]] == [(3, 7), (4, 2), (2, 2)]
    future = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
    assert (await get(proxy, "/api/metrics/activity", {"start": future}))["total"] == 0
    assert (await get(proxy, "/api/metrics/activity", {"end": future}))["total"] == 6
    empty = await get(proxy, "/api/metrics/activity", {"model": "none"})
    assert (empty["data"], empty["total"], empty["total_pages"]) == ([], 0, 0)

    bad = {
        (("limit", "0"),): "limit must be between 1 and 999", (("limit", "x"),): "invalid limit",
        (("page", "0"),): "page must be >= 1", (("min_id", "-1"),): "min_id must be >= 1",
        (("min_id", "5"), ("max_id", "2")): "min_id must be <= max_id",
        (("start", "yesterday"),): "invalid 'start' timestamp, use RFC3339 format",
        (("end", "2026-01-01T00:00:00"),): "invalid 'end' timestamp, use RFC3339 format",  # no zone
        (("start", "2026-02-01T00:00:00Z"), ("end", "2026-01-01T00:00:00Z")): "start must be before end",
        (("order", "up"),): "order must be asc or desc",
    }
    for params, message in bad.items():
        body = await get(proxy, "/api/metrics/activity", list(params), status=400)
        assert body["error"]["message"] == message and body["error"]["type"] == "invalid_request_error"
    body = await get(proxy, "/api/metrics/activity", {"sort": "drop table"}, status=400)
    assert body["error"]["message"].startswith("invalid sort column")
    assert (await get(proxy, "/api/captures/x", status=400))["error"]["message"] == "invalid capture ID"


def test_histogram_bins_by_sturges_and_interpolates_percentiles() -> None:
    assert histogram([]) is None
    assert histogram([7.0, 7.0]) == {"bins": [2], "min": 7.0, "max": 7.0, "binSize": 0.0, "p50": 7.0, "p95": 7.0,
                                     "p99": 7.0}
    # 10 values: ceil(log2(10)) + 1 = 5 bins over 1..10, 1.8 wide
    ten = histogram([float(v) for v in range(10, 0, -1)])
    assert ten is not None and ten["bins"] == [2, 2, 2, 2, 2] and ten["binSize"] == pytest.approx(1.8)
    assert (ten["p50"], ten["p95"], ten["p99"]) == pytest.approx((5.5, 9.55, 9.91))
    # 3 values still get 5 bins (the floor); 100,000 get ceil(16.6) + 1 = 18; 600,000 get 20 (the ceiling)
    assert len(histogram([1.0, 2.0, 3.0])["bins"]) == 5  # type: ignore[index]
    many = histogram([float(v) for v in range(100_000)])
    assert many is not None and len(many["bins"]) == 18 and sum(many["bins"]) == 100_000
    assert many["p99"] == pytest.approx(98_999.01) and many["binSize"] == pytest.approx(99_999 / 18)
    most = histogram([float(v) for v in range(600_000)])
    assert most is not None and len(most["bins"]) == 20 and most["bins"][-1] == 30_000  # the largest in the last
    assert percentile([1.0, 2.0], 25) == 1.25 and percentile([], 50) == 0.0


async def test_captures_hide_credentials_and_keys_and_fit_their_buffer(proxy_factory) -> None:
    key = "sk-client-key-0123"
    proxy = await proxy_factory(make_config({"a": fake("a", apiKey="upstream-secret-4567")}, apiKeys=[key],
                                            captureBuffer=0.04))  # 41,943 bytes: bodies cut at a quarter
    auth = {"Authorization": f"Bearer {key}"}
    secret_body = {"model": "a", "messages": [{"role": "user", "content": f"my key is {key}"}]}
    headers = {**auth, "Cookie": "session=abc", "X-Custom-Token": "tok-abcdef", "X-Trace": f"t-{key}"}
    assert (await post(proxy, secret_body, headers=headers))[0] == 200
    first = (await rows(proxy, 1, headers=auth))[0]
    assert first["has_capture"]
    capture = await get(proxy, f"/api/captures/{first['id']}", headers=auth)
    assert set(capture) >= {"id", "req_path", "req_headers", "req_body", "resp_headers", "resp_body"}
    sent = capture["req_headers"]
    assert sent["Authorization"] == sent["Cookie"] == sent["X-Custom-Token"] == "***"
    assert sent["X-Trace"] == "t-***" and sent["Content-Type"] == "application/json"
    req_body = base64.b64decode(capture["req_body"])
    assert key.encode() not in req_body and json.loads(req_body)["messages"][0]["content"] == "my key is ***"
    answer = json.loads(base64.b64decode(capture["resp_body"]))
    assert answer["choices"][0]["message"]["content"] == "tok0 tok1 tok2 tok3 tok4 "
    assert capture["resp_headers"]["Content-Type"].startswith("application/json")

    big = os.urandom(15_000).hex()  # 30,000 characters: more than a body's share (10,485 bytes)
    for _ in range(8):
        assert (await post(proxy, {"model": "a", "messages": [{"role": "user", "content": big}]},
                           headers=auth))[0] == 200
    recorded = await rows(proxy, 9, headers=auth)
    kept = [r["id"] for r in recorded if r["has_capture"]]
    assert 1 <= len(kept) < 8 and kept == list(range(10 - len(kept), 10))  # the newest stay, the oldest went
    assert (await get(proxy, "/api/captures/1", status=404, headers=auth))["error"]["message"] == "capture not found"
    newest = await get(proxy, f"/api/captures/{kept[-1]}", headers=auth)
    assert len(base64.b64decode(newest["req_body"])) == 10_485 and newest["req_body_truncated"]
    assert not newest["resp_body_truncated"]
    assert (await get(proxy, "/api/captures/9", status=401))["error"]["code"] == "invalid_api_key"


async def test_a_store_file_keeps_the_history_across_a_restart(tmp_path: Path) -> None:
    store = tmp_path / "history.sqlite"
    config = make_config({"a": fake("a")}, store={"path": str(store)})
    runner, proxy = await start_proxy(config)
    try:
        for _ in range(3):
            assert (await proxy.chat("a"))[0] == 200
        await rows(proxy, 3)
    finally:
        await proxy.http.close()
        await runner.cleanup()
    with sqlite3.connect(store) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("SELECT COUNT(*) FROM history").fetchone()[0] == 3
    runner, proxy = await start_proxy(config)
    try:
        assert (await proxy.chat("a"))[0] == 200
        after = await rows(proxy, 4)
        assert [r["id"] for r in after] == [1, 2, 3, 4] and after[0]["model"] == "a"
    finally:
        await proxy.http.close()
        await runner.cleanup()


async def test_a_damaged_store_file_is_logged_and_the_history_kept_in_memory(
        proxy_factory, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = tmp_path / "history.sqlite"
    store.write_bytes(b"not a database, but not empty either\n" * 100)
    proxy = await proxy_factory(make_config({"a": fake("a")}, store={"path": str(store)}))
    assert (await proxy.chat("a"))[0] == 200  # serving goes on
    assert [r["model"] for r in await rows(proxy, 1)] == ["a"]  # recorded, in memory
    assert any("cannot open the request history" in r.getMessage() and r.levelname == "ERROR"
               for r in caplog.records)
    assert store.read_bytes().startswith(b"not a database")  # the operator's file is left as it was


async def test_a_reload_with_another_store_path_opens_that_store(proxy_factory, tmp_path: Path) -> None:
    first, second = tmp_path / "one.sqlite", tmp_path / "two.sqlite"
    config = make_config({"a": fake("a")}, store={"path": str(first)})
    proxy = await proxy_factory(config)
    assert (await proxy.chat("a"))[0] == 200
    await rows(proxy, 1)
    doc = {"startPort": config.models["a"].port, "stateDir": config.state_dir, "store": {"path": str(second)},
           "models": {"a": fake("a")}}
    await proxy.runtime.reloader.apply(parse_config(yaml.safe_dump(doc), file="reload.yaml", previous=config))
    assert (await get(proxy, "/api/metrics/activity"))["total"] == 0  # the new store is empty
    assert (await proxy.chat("a"))[0] == 200
    assert [r["id"] for r in await rows(proxy, 1)] == [1]
    with sqlite3.connect(first) as db:
        assert db.execute("SELECT COUNT(*) FROM history").fetchone()[0] == 1


async def test_a_full_queue_drops_records_and_never_holds_a_request(proxy_factory) -> None:
    proxy = await proxy_factory(make_config({"a": fake("a")}))
    assert (await proxy.chat("a"))[0] == 200
    await rows(proxy, 1)
    history = proxy.runtime.history
    gate = threading.Event()
    history._executor.submit(gate.wait, 30)  # the history's thread is stuck (a disk that hangs)
    history.max_pending = 2
    try:
        for _ in range(6):
            began = time.monotonic()
            assert (await proxy.chat("a"))[0] == 200
            assert time.monotonic() - began < 5
        assert history.dropped >= 2  # of six: at most one batch of two in the thread's hands, and two pending
        async with proxy.http.get(proxy.url + "/metrics") as resp:
            assert f"swapproxy_history_dropped_total {float(history.dropped)}" in await resp.text()
    finally:
        gate.set()
    recorded = await rows(proxy, 7 - history.dropped)
    assert len(recorded) == 7 - history.dropped


def test_store_bounds_by_count_age_and_size(tmp_path: Path) -> None:
    def row(ts: float, model: str = "m", error: str = "") -> tuple[Any, ...]:
        return (round(ts * 1000), model, "POST", CHAT, 200, "application/json", 1.0, 1.0, 1, 1, -1, -1, -1, -1.0, -1.0, None,
                None, error, "")

    memory = HistoryDB(HistoryConfig(max_in_memory=3))
    memory.insert([row(time.time()) for _ in range(5)])
    memory.prune()
    assert [r["id"] for r in memory.activity(_query(), set())["data"]] == [5, 4, 3]
    memory.insert([row(time.time()) for _ in range(2)])  # queued until read: the read sees the newest 3
    memory.insert([row(time.time(), model="other")])
    assert [r["id"] for r in memory.activity(_query(), set())["data"]] == [8, 7, 6]
    memory.reconfigure(HistoryConfig(max_in_memory=2))  # a smaller bound cuts what is there too
    assert [r["id"] for r in memory.activity(_query(), set())["data"]] == [8, 7]
    memory.insert([row(time.time()) for _ in range(4)])
    assert memory.stats(None)["total_requests"] == 2 and memory.stats("other")["total_requests"] == 0

    settings = HistoryConfig(store_path=str(tmp_path / "h.sqlite"), max_age=3600.0, max_bytes=0)
    aged = HistoryDB(settings)
    now = time.time()
    aged.insert([row(now - 7200), row(now - 10), row(now)])
    aged.reconfigure(settings)  # a pass of the age limit
    assert [r["id"] for r in aged.activity(_query(), set())["data"]] == [3, 2]
    aged.close()

    sized = HistoryDB(replace(settings, store_path=str(tmp_path / "s.sqlite"), max_age=0, max_bytes=200_000))
    for _ in range(40):
        sized.insert([row(now, error="e" * 400) for _ in range(50)])
        sized.prune()
        assert sized.used_bytes() <= 200_000
    left = sized.activity(_query(), set())
    assert 100 < left["total"] < 500 and left["data"][0]["id"] == 2000  # the newest stay
    sized.close()
    assert os.path.getsize(tmp_path / "s.sqlite") <= 220_000  # freed pages went back to the file system


def _query() -> ActivityQuery:
    return ActivityQuery(limit=999)


def test_store_path_problems_name_file_line_and_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    if os.geteuid() == 0:  # root writes anywhere: the folder reads as not writable all the same
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(locked) else real_access(p, mode))
    cases = {
        "": "store.path: must not be empty",
        str(tmp_path): f"store.path: {tmp_path} is a directory, not a file",
        str(locked / "h.sqlite"): f"store.path: directory {locked} is not writable",
        str(tmp_path / "gone" / "h.sqlite"): f"store.path: directory {tmp_path / 'gone'} does not exist",
    }
    for path, message in cases.items():
        file = tmp_path / "config.yaml"
        file.write_text(f"models:\n  a:\n    cmd: x --port ${{PORT}}\nstore:\n  path: '{path}'\n")
        with pytest.raises(ConfigError) as err:
            parse_config(file.read_text(), file=str(file))
        assert [str(p) for p in err.value.problems] == [f"{file}:5: {message}"]
        assert cli.main(["-c", str(file)]) == 2  # swapproxy refuses to serve, as for any config error
        assert f"{file}:5: {message}" in capsys.readouterr().err
    with pytest.raises(ConfigError) as err:
        parse_config("models:\n  a:\n    cmd: x --port ${PORT}\nperformance:\n  every: 2s\n", file="c.yaml")
    assert [str(p) for p in err.value.problems] == ["c.yaml:5: performance.every: must be at least 5s, got 2s"]


async def test_performance_samples_and_the_hardware_snapshot(proxy_factory) -> None:
    proxy = await proxy_factory(make_config({"a": fake("a")}))
    hardware = await get(proxy, "/api/hardware")
    assert hardware["schema_version"] == 1 and hardware["capture"]["scope"] == "inference_host"
    assert hardware["memory"]["capacity_bytes"] > 0 and hardware["cpu"]["logical_thread_count"] >= 1
    assert hardware["accelerators"] == []  # no GPU here (no NVML)
    sampled: dict[str, Any] = {}

    async def one_sample() -> bool:
        sampled.update(await get(proxy, "/api/performance"))
        return bool(sampled["sys_stats"])

    await wait_until(one_sample, 5, "the first performance sample")
    sample = sampled["sys_stats"][0]
    assert sampled["enabled"] is True and sampled["gpu_stats"] == []
    assert len(sample["cpu_util_per_core"]) == os.cpu_count() and sample["mem_total_mb"] > 0
    assert {"load_avg_1", "swap_used_mb", "net_io", "timestamp"} <= set(sample)
    assert (await get(proxy, "/api/performance", {"after": sample["timestamp"]}))["sys_stats"] == []
    body = await get(proxy, "/api/performance", {"after": "soon"}, status=400)
    assert body["error"]["message"] == "invalid 'after' timestamp, use RFC3339 format"

    off = await proxy_factory(make_config({"a": fake("a")}, performance={"disabled": True}))
    async with off.http.get(off.url + "/api/performance") as resp:
        assert resp.status == 503 and (await resp.json())["enabled"] is False


async def test_history_routes_are_read_only_management_routes(proxy_factory) -> None:
    proxy = await proxy_factory(make_config({"a": fake("a")}, inferenceApiKeys=["inf-key-1234"],
                                            managementApiKeys=["mgmt-key-5678"]))
    for path in ("/api/metrics/activity", "/api/metrics/stats", "/api/captures/1", "/api/performance",
                 "/api/hardware"):
        async with proxy.http.get(proxy.url + path, headers={"Authorization": "Bearer inf-key-1234"}) as resp:
            assert resp.status == 401, path
        async with proxy.http.get(proxy.url + path, headers={"Authorization": "Bearer mgmt-key-5678"}) as resp:
            assert resp.status in (200, 404), path
    tags = {route.resource.canonical: tag for route, tag in proxy.runtime.tags.items()
            if route.resource is not None and route.method == "GET"}
    for path in ("/api/metrics/activity", "/api/metrics/stats", "/api/captures/{id}", "/api/performance",
                 "/api/hardware"):
        assert (tags[path].tier, tags[path].kind) == (Tier.MANAGEMENT, Kind.READ), path
