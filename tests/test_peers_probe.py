"""What a peer's probe reads: each kind of server's answers, and where the selectors see it.

The parsers are pure; the probe itself runs against a small server on loopback that answers as
llama-swap does (``/v1/models`` with statuses, aliases under ``meta.llamaswap``; ``/running`` as
objects with a state), and as an older server whose model list has no status at all.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from swapproxy.config import PeerConfig, PeerRoute, SelectorConfig
from swapproxy.peers import PeerMonitor, loaded_from_models, loaded_from_running
from swapproxy.selectors import TargetStatus, choose
from swapproxy.states import ProcessState

MODELS = ("a", "b", "c", "alias-of-d")


def test_a_model_list_with_statuses_says_what_is_loaded_by_id_or_alias() -> None:
    swapproxy = {"data": [{"id": "a", "aliases": [], "status": {"value": "loaded"}},
                          {"id": "b", "aliases": ["b2"], "status": {"value": "loading"}},
                          {"id": "d", "aliases": ["alias-of-d"], "status": {"value": "loaded"}},
                          {"id": "c", "status": {"value": "unloaded"}}]}
    assert loaded_from_models(swapproxy, MODELS) == (frozenset({"a", "alias-of-d"}), frozenset({"b"}))
    llama_swap = {"data": [{"id": "d", "status": {"value": "loaded"}, "meta": {"llamaswap": {"aliases": ["alias-of-d"]}}},
                           {"id": "a", "status": {"value": "unloaded"}}]}
    assert loaded_from_models(llama_swap, MODELS) == (frozenset({"alias-of-d"}), frozenset())
    # no status anywhere (a plain llama-server, a hosted API): it cannot say
    assert loaded_from_models({"data": [{"id": "a"}]}, MODELS) is None
    assert loaded_from_models({"error": "nope"}, MODELS) is None and loaded_from_models([1], MODELS) is None


def test_running_lists_in_swapproxys_and_llama_swaps_shapes() -> None:
    assert loaded_from_running({"running": ["a", "zzz"]}, MODELS) == (frozenset({"a"}), frozenset())
    llama_swap = {"running": [{"model": "a", "state": "ready"}, {"model": "b", "state": "starting"}]}
    assert loaded_from_running(llama_swap, MODELS) == (frozenset({"a"}), frozenset({"b"}))
    assert loaded_from_running({"models": []}, MODELS) is None


@pytest.fixture
async def llama_swap_like() -> AsyncIterator[Callable[[bool], Any]]:
    """Start a server answering as a llama-swap (``with_status``) or as one whose list has no status."""
    runners: list[web.AppRunner] = []
    seen: list[tuple[str, str | None]] = []

    async def start(with_status: bool) -> tuple[str, list[tuple[str, str | None]]]:
        async def models(request: web.Request) -> web.Response:
            seen.append((request.path, request.headers.get("Authorization")))
            entry: dict[str, Any] = {"id": "a"}
            if with_status:
                entry["status"] = {"value": "loaded"}
            return web.json_response({"data": [entry]})

        async def running(request: web.Request) -> web.Response:
            seen.append((request.path, request.headers.get("Authorization")))
            return web.json_response({"running": [{"model": "b", "state": "starting"}]})

        async def health(request: web.Request) -> web.Response:
            seen.append((request.path, request.headers.get("Authorization")))
            return web.Response(text="OK")

        app = web.Application()
        app.router.add_get("/v1/models", models)
        app.router.add_get("/running", running)
        app.router.add_get("/health", health)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        return f"http://127.0.0.1:{port}", seen

    yield start
    for runner in runners:
        await runner.cleanup()


async def test_the_probe_learns_where_to_read_the_state_and_keeps_to_it(llama_swap_like) -> None:
    url, seen = await llama_swap_like(False)  # /v1/models without statuses: /running says it
    peer = PeerConfig(id="p", proxy=url, models=("a", "b"), api_key="sk-probe")
    monitor = PeerMonitor()
    async with aiohttp.ClientSession() as session:
        health = await monitor.probe(peer, session)
        assert (health.up, health.source, health.loaded, health.loading) == (True, "running", frozenset(),
                                                                            frozenset({"b"}))
        assert seen == [("/v1/models", "Bearer sk-probe"), ("/running", "Bearer sk-probe")]
        monitor._set("p", health)
        seen.clear()
        await monitor.probe(peer, session)
        assert seen == [("/running", "Bearer sk-probe")]  # learnt: one request a probe

        url, seen = await llama_swap_like(True)
        peer = PeerConfig(id="q", proxy=url, models=("a",))
        health = await monitor.probe(peer, session)
        assert (health.source, health.loaded) == ("models", frozenset({"a"}))
        assert monitor.target(PeerRoute("q", "a")) == TargetStatus(ProcessState.STOPPED)  # not recorded yet
        monitor._set("q", health)
        assert monitor.target(PeerRoute("q", "a")) == TargetStatus(ProcessState.READY)
        monitor.mark_down("q", "cannot connect")
        assert monitor.target(PeerRoute("q", "a")).available is False and monitor.is_down("q")


def test_warm_and_spillover_pass_over_an_unreachable_target_and_pin_keeps_its_first() -> None:
    down = TargetStatus(ProcessState.READY, available=False)
    cold = TargetStatus(ProcessState.STOPPED)
    status = {"down/m": down, "x": cold, "y": cold}.__getitem__

    def selector(strategy: str) -> SelectorConfig:
        return SelectorConfig(id="s", strategy=strategy, targets=("down/m", "x", "y"),  # type: ignore[arg-type]
                              target_ids=("down/m", "x", "y"))

    assert choose(selector("warm"), status) == 1  # loaded but unreachable: the first reachable instead
    assert choose(selector("spillover"), status) == 1
    assert choose(selector("pin"), status) == 0
