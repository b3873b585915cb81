"""Selectors, profiles and setParamsByID as pure functions: choose(), route(), rewrite_body()."""

from __future__ import annotations

import json

import pytest

from support import make_config, models
from swapproxy.config import SelectorConfig
from swapproxy.errors import ModelDisabled, ModelNotFound, NoTargetAvailable
from swapproxy.routing import Route, rewrite_body, route
from swapproxy.selectors import SelectorState, TargetStatus, choose
from swapproxy.states import ProcessState

S = ProcessState


def selector(strategy: str, n: int = 3, spillover: int = 1) -> SelectorConfig:
    ids = tuple(f"m{i}" for i in range(n))
    return SelectorConfig("sel", strategy, ids, ids, spillover)  # type: ignore[arg-type]


def view(*targets: tuple[ProcessState, int]) -> dict[str, TargetStatus]:
    return {f"m{i}": TargetStatus(state, load) for i, (state, load) in enumerate(targets)}


def test_pin_always_takes_the_first_target() -> None:
    states = view((S.STOPPED, 0), (S.READY, 0), (S.READY, 0))
    assert choose(selector("pin"), states.__getitem__) == 0


@pytest.mark.parametrize(("targets", "expected"), [
    (((S.STOPPED, 0), (S.STARTING, 0), (S.READY, 0)), 2),  # the first ready one
    (((S.STOPPED, 0), (S.STARTING, 0), (S.STOPPED, 0)), 1),  # else the first starting one
    (((S.READY, 0), (S.READY, 0), (S.READY, 0)), 0),  # in configured order
    (((S.FAILED, 0), (S.STOPPED, 0), (S.STOPPING, 0)), 0),  # else start the first
])
def test_warm_prefers_ready_then_starting_then_the_first(targets, expected) -> None:  # type: ignore[no-untyped-def]
    assert choose(selector("warm"), view(*targets).__getitem__) == expected


@pytest.mark.parametrize(("targets", "spillover", "expected"), [
    (((S.STOPPED, 0), (S.STOPPED, 0), (S.STOPPED, 0)), 1, 0),  # nothing active: start the first
    (((S.READY, 0), (S.STOPPED, 0), (S.STOPPED, 0)), 1, 0),  # an idle active target takes it
    (((S.READY, 1), (S.STOPPED, 0), (S.STOPPED, 0)), 1, 1),  # full: start the next cold one
    (((S.READY, 1), (S.STOPPED, 0), (S.STOPPED, 0)), 2, 0),  # room for 2 each
    (((S.READY, 2), (S.READY, 1), (S.STOPPED, 0)), 2, 1),  # the least busy active one
    (((S.READY, 2), (S.STARTING, 2), (S.STOPPED, 0)), 2, 2),  # all full: the next cold one
    (((S.READY, 3), (S.READY, 2), (S.STOPPING, 0)), 2, 1),  # full, none cold: overload the least busy
    (((S.STOPPED, 1), (S.STOPPED, 0), (S.STOPPED, 0)), 1, 1),  # queued for a start counts as active
    (((S.STOPPING, 0), (S.FAILED, 0), (S.STOPPED, 0)), 1, 1),  # stopping is skipped; failed is cold
])
def test_spillover_fills_active_targets_then_starts_the_next(targets, spillover, expected) -> None:  # type: ignore[no-untyped-def]
    assert choose(selector("spillover", spillover=spillover), view(*targets).__getitem__) == expected


def test_spillover_ties_rotate_and_nothing_left_is_a_503() -> None:
    states = view((S.READY, 0), (S.READY, 0), (S.STOPPED, 0)).__getitem__
    assert [choose(selector("spillover"), states, turn) for turn in range(4)] == [0, 1, 0, 1]
    with pytest.raises(NoTargetAvailable):
        choose(selector("spillover"), view((S.STOPPING, 0), (S.SHUTDOWN, 0), (S.STOPPING, 0)).__getitem__)


def test_selector_state_counts_its_own_requests_until_released() -> None:
    state = SelectorState()
    sel = selector("spillover", n=2, spillover=2)
    idle = view((S.READY, 0), (S.READY, 0)).__getitem__  # the scheduler has not counted them yet
    picks = [state.pick(sel, idle) for _ in range(4)]
    assert sorted(index for index, _ in picks) == [0, 0, 1, 1]
    assert state.reserved("sel", "m0") == 2
    for _, reservation in picks:
        reservation.release()
        reservation.release()  # once only
    assert state.reserved("sel", "m0") == state.reserved("sel", "m1") == 0


CONFIG = dict(
    profiles={"coding": {"pins": {"llm-code": "big", "llm-any": "any", "small": "big", "image-gen": None}}},
    selectors={"any": {"strategy": "pin", "targets": ["big:fast", "small"]}},
)


def config():  # type: ignore[no-untyped-def]
    return make_config({
        **models("small"),
        "big": {"cmd": "x --port ${PORT}", "filters": {"setParams": {"temperature": 0.5, "top_k": 1},
                                                       "setParamsByID": {"big:fast": {"temperature": 0.1},
                                                                         "big": {"top_k": 2}}}},
    }, **CONFIG)


def test_route_follows_pins_then_selectors_then_aliases() -> None:
    cfg = config()
    assert route(cfg, "small") == Route("small", "small")
    assert route(cfg, "small", profile="coding") == Route("big", "big", renamed=True)  # a pin may shadow an id
    assert route(cfg, "llm-any", profile="coding") == Route("big", "big:fast", renamed=True, selector="any")
    assert route(cfg, "any", pick=lambda s: s.targets[1]) == Route("small", "small", renamed=True, selector="any")
    assert route(cfg, "big:fast") == Route("big", "big:fast")  # a setParamsByID name is an alias
    with pytest.raises(ModelDisabled, match="model 'image-gen' is disabled by the active profile 'coding'"):
        route(cfg, "image-gen", profile="coding")
    with pytest.raises(ModelNotFound):
        route(cfg, "llm-code")  # pins apply only while their profile is active
    assert route(cfg, "small", profile="gone") == Route("small", "small")


def test_set_params_by_id_overrides_set_params_for_the_name_used() -> None:
    big = config().models["big"]
    body = {"model": "big:fast", "temperature": 0.9, "top_k": 9}
    assert json.loads(rewrite_body(body, big, "big:fast") or b"") == {
        "model": "big:fast", "temperature": 0.1, "top_k": 1}
    assert json.loads(rewrite_body({"model": "big"}, big, "big") or b"") == {
        "model": "big", "temperature": 0.5, "top_k": 2}
    # a pin or a selector renamed the request: the body says the name it now uses
    small = config().models["small"]
    assert rewrite_body({"model": "small"}, small, "small") is None  # nothing to change: sent as is
    assert json.loads(rewrite_body({"model": "any", "x": 1}, small, "small", renamed=True) or b"") == {
        "model": "small", "x": 1}
