"""The swap policy as a pure function: plain values in, the models to stop out. No processes."""

from __future__ import annotations

import pytest

from fake_process import spec
from swapproxy.config import Config, GroupConfig
from swapproxy.policy import evictions


def config(*groups: GroupConfig, models: tuple[str, ...] = ()) -> Config:
    ids = models or tuple(m for g in groups for m in g.members)
    return Config(models={m: spec(m) for m in ids}, groups=groups)


def test_without_groups_one_model_runs_at_a_time() -> None:
    cfg = config(models=("a", "b", "c"))
    assert evictions(cfg, "b", ["a", "c"]) == ["a", "c"]
    assert evictions(cfg, "a", []) == []


def test_the_target_itself_is_never_evicted() -> None:
    cfg = config(models=("a", "b"))
    assert evictions(cfg, "a", ["a"]) == []
    assert evictions(cfg, "a", ["b", "a"]) == ["b"]


def test_swap_group_members_replace_each_other_and_spare_other_groups() -> None:
    cfg = config(GroupConfig("chat", swap=True, exclusive=False, members=("a", "b")),
                 GroupConfig("side", swap=False, exclusive=False, members=("x", "y")))
    assert evictions(cfg, "b", ["a", "x"]) == ["a"]
    assert evictions(cfg, "y", ["a", "x"]) == []  # swap: false lets members run together


def test_exclusive_group_stops_other_groups_but_not_persistent_ones() -> None:
    cfg = config(GroupConfig("big", swap=True, exclusive=True, members=("big",)),
                 GroupConfig("side", swap=False, exclusive=False, members=("a", "b")),
                 GroupConfig("keep", swap=False, exclusive=False, persistent=True, members=("emb",)))
    assert evictions(cfg, "big", ["a", "emb", "b"]) == ["a", "b"]


def test_a_non_exclusive_group_leaves_other_groups_alone() -> None:
    cfg = config(GroupConfig("g1", swap=True, exclusive=False, members=("a", "b")),
                 GroupConfig("g2", swap=True, exclusive=False, members=("c",)))
    assert evictions(cfg, "c", ["a"]) == []


def test_the_answer_keeps_the_order_it_was_given() -> None:
    cfg = config(models=("a", "b", "c", "d"))
    assert evictions(cfg, "a", ["d", "b", "c"]) == ["d", "b", "c"]


def test_an_unknown_model_is_a_key_error() -> None:
    with pytest.raises(KeyError):
        evictions(config(models=("a",)), "nope", ["a"])
