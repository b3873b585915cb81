"""The hot path's shortcuts give the answers the plain code gave (see docs/PERFORMANCE.md)."""

from __future__ import annotations

import gc
import json
import sys
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from support import make_config, sse

from swapproxy import server
from swapproxy.metrics import Metrics
from swapproxy.tokens import _EVENT_SPLIT, TokenTap, _events_newest_first, tail_counts, usage_from_tail


def data_lines(pieces: Any) -> list[bytes]:
    """What the token counter takes from each event: its joined data lines (empty ones dropped)."""
    out = []
    for raw in pieces:
        data = b"\n".join(line[5:].strip() for line in raw.splitlines() if line.startswith(b"data:"))
        if data:
            out.append(data)
    return out


SSE_BITS = st.sampled_from([b"data: a", b"data:b", b"data: [DONE]", b": ping", b"event: x", b"x", b"\n", b"\n\n",
                            b"\r\n", b'data: {"usage":{"prompt_tokens":1,"completion_tokens":2}}'])


@settings(max_examples=500, deadline=None)
@given(st.lists(SSE_BITS, max_size=20))
def test_events_from_the_end_carry_the_data_a_regex_split_does(bits: list[bytes]) -> None:
    text = b"".join(bits)
    assert data_lines(_events_newest_first(text)) == data_lines(reversed(_EVENT_SPLIT.split(text)))


def test_usage_spelt_with_unicode_escapes_is_still_counted() -> None:
    # Only events that could hold the keys are decoded; a \\u escape could spell them.
    escaped = b'{"us\\u0061ge": {"prompt_tokens": 2, "completion_tokens": 3}}'
    assert usage_from_tail(sse({"choices": []}, escaped, b"[DONE]"), sse=True, complete=True) == (2, 3)
    assert usage_from_tail(escaped, sse=False, complete=True) == (2, 3)


def test_token_deltas_are_not_decoded_yet_the_window_is_the_same() -> None:
    # The last eight data events are looked at, counted or not: usage nine events back is out of reach.
    usage = {"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 5}}
    deltas = [{"choices": [{"delta": {"content": f"t{i}"}}]} for i in range(8)]
    assert usage_from_tail(sse(usage, *deltas[:7], b"[DONE]"), sse=True, complete=True) == (4, 5)
    assert usage_from_tail(sse(usage, *deltas, b"[DONE]"), sse=True, complete=True) is None
    crlf = sse(usage, *deltas[:7], b"[DONE]").replace(b"\n", b"\r\n")
    assert usage_from_tail(crlf, sse=True, complete=True) == (4, 5)


def test_a_body_without_counts_is_not_decoded() -> None:
    assert usage_from_tail(b'{"ok": true, "data": [1, 2, 3]}', sse=False, complete=True) is None
    assert usage_from_tail(b'{"timings": {"prompt_n": 1, "predicted_n": 2}}', sse=False, complete=True) == (1, 2)


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_cached_metric_children_count_like_labels_did() -> None:
    metrics = Metrics(make_config({"m": {"cmd": "x --port ${PORT}"}}))
    for _ in range(3):
        metrics.observe_request("m", "/v1/chat/completions", 200, 0.002)
    metrics.observe_request("m", "/v1/chat/completions", 404, 0.001)
    metrics.observe_request("nope", "/v1/chat/completions", 200, 0.001)  # not configured: model ""
    tap = TokenTap()
    tap(json.dumps({"usage": {"prompt_tokens": 0, "completion_tokens": 6}}).encode())
    counts = tail_counts(tap.tail, sse=False, complete=True)
    metrics.observe_response("m", "/v1/chat/completions", tap, tap.first_at or 0.0, counts)
    metrics.observe_response("m", "/v1/chat/completions", tap, tap.first_at or 0.0, counts)
    got = samples(metrics)
    route = ("route", "/v1/chat/completions")
    assert got[("swapproxy_requests_total", (("model", "m"), route, ("status", "200")))] == 3
    assert got[("swapproxy_requests_total", (("model", "m"), route, ("status", "404")))] == 1
    assert got[("swapproxy_requests_total", (("model", ""), route, ("status", "200")))] == 1
    assert got[("swapproxy_request_duration_seconds_count", (("model", "m"), route))] == 4
    assert got[("swapproxy_time_to_first_byte_seconds_count", (("model", "m"), route))] == 2
    assert got[("swapproxy_tokens_total", (("kind", "completion"), ("model", "m")))] == 12
    # a kind never counted still has no series at all
    assert not any(name == "swapproxy_tokens_total" and ("kind", "prompt") in labels for name, labels in got)


def test_loop_factory_is_uvloop_only_when_it_is_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop raises ImportError
    assert server.loop_factory() is None
    monkeypatch.undo()
    try:
        import uvloop
    except ImportError:
        pytest.skip("uvloop is not installed (pip install swapproxy[fast])")
    assert server.loop_factory() is uvloop.new_event_loop


def test_tune_gc_freezes_the_start_up_and_raises_the_young_threshold() -> None:
    before = gc.get_threshold()
    try:
        server._tune_gc()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (server._GC_THRESHOLD0, *before[1:])
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
