"""Timeline: the recent loads and stops the UI's activity page draws (pure book-keeping)."""

from __future__ import annotations

from swapproxy.slots import StopCause, StopEvent
from swapproxy.states import ProcessState as S
from swapproxy.timeline import Timeline


def test_a_load_runs_from_starting_to_its_outcome_and_stops_interleave_by_time() -> None:
    tl = Timeline()
    tl.on_state("a", S.STOPPED, S.STARTING, 10.0)
    tl.on_state("a", S.STARTING, S.READY, 12.5)
    tl.on_stop(StopEvent(StopCause.SWAP, "swap to b", ("a",), "b", at=20.0))
    tl.on_state("a", S.READY, S.STOPPING, 20.0)  # not a load: nothing changes
    tl.on_state("b", S.STOPPED, S.STARTING, 21.0)
    tl.on_state("c", S.FAILED, S.STARTING, 22.0)
    tl.on_state("c", S.STARTING, S.FAILED, 23.0)
    assert tl.as_json() == [
        {"kind": "load", "model": "a", "start": 10.0, "end": 12.5, "outcome": "ready"},
        {"kind": "stop", "at": 20.0, "cause": "swap", "reason": "swap to b", "stopped": ["a"], "target": "b"},
        {"kind": "load", "model": "b", "start": 21.0, "end": None, "outcome": None},  # still starting
        {"kind": "load", "model": "c", "start": 22.0, "end": 23.0, "outcome": "failed"},
    ]
    tl.on_state("b", S.STARTING, S.STOPPING, 24.0)  # unloaded while it started
    assert tl.as_json()[2]["outcome"] == "stopped" and tl.as_json()[2]["end"] == 24.0


def test_it_keeps_the_last_entries_of_each_kind() -> None:
    tl = Timeline(keep=3)
    for i in range(5):
        tl.on_state("a", S.STOPPED, S.STARTING, float(i))
        tl.on_stop(StopEvent(StopCause.TTL, "ttl expired", ("a",), at=i + 0.5))
    entries = tl.as_json()
    assert [e.get("start", e.get("at")) for e in entries] == [2.0, 2.5, 3.0, 3.5, 4.0, 4.5]
    assert [e["end"] for e in entries if e["kind"] == "load"] == [None, None, None]  # never ended: no outcome
