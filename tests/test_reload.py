"""Config reload as a diff: real processes, PIDs compared before and after."""

from __future__ import annotations

import asyncio
from typing import Any

import yaml

from support import NO_WAIT, STATE_DIR, Proxy, fake, free_port_block, open_gated_stream, release_all, start_cli, wait_until
from swapproxy.config import Config, parse_config
from swapproxy.states import ProcessState


def doc(models: dict[str, dict[str, Any]], start: int, **top: Any) -> dict[str, Any]:
    """A config document; its swaps close the models to stop at once (the drains are what is tested)."""
    return {"startPort": start, "stateDir": str(STATE_DIR), **NO_WAIT, "models": models, **top}


def load(d: dict[str, Any], previous: Config | None = None) -> Config:
    return parse_config(yaml.safe_dump(d, sort_keys=False), file="reload.yaml", previous=previous)


SIDE = {"all": {"swap": False, "exclusive": False, "members": ["a", "b"]}}


async def test_unchanged_model_keeps_its_process_and_new_settings_apply(proxy_factory) -> None:
    start = free_port_block(4)
    old = load(doc({"a": fake("a"), "b": fake("b")}, start, groups=SIDE))
    proxy: Proxy = await proxy_factory(old)
    assert (await proxy.chat("a"))[0] == 200
    pid = proxy.pid("a")
    stream = await open_gated_stream(proxy, "a")
    # Same command; new ttl and alias; b removed; c added (inserted first: ports must not shift).
    new = load(
        doc({"c": fake("c"), "a": fake("a", ttl=0.3, aliases=["alias-a"])}, start,
            groups={"all": {"swap": False, "exclusive": False, "members": ["c", "a"]}}),
        previous=old,
    )
    assert new.models["a"].port == old.models["a"].port
    report = await proxy.swapper.apply_config(new)
    assert report == {"kept": ["a"], "changed": [], "added": ["c"], "removed": ["b"]}
    assert proxy.pid("a") == pid  # the very same process, still serving the stream
    rest = await release_all(proxy, "a", stream)
    assert rest.endswith(b"data: [DONE]\n\n")
    status, data = await proxy.chat("alias-a")  # new alias works at once
    assert status == 200 and proxy.pid("a") == pid
    await wait_until(lambda: proxy.swapper.slot("a").process.state is ProcessState.STOPPED, 5, "new ttl")
    assert (await proxy.chat("c"))[0] == 200  # new model serves


async def test_changed_model_restarts_when_next_needed_after_in_flight_finish(proxy_factory) -> None:
    start = free_port_block(3)
    old = load(doc({"a": fake("a")}, start))
    proxy: Proxy = await proxy_factory(old)
    stream = await open_gated_stream(proxy, "a")
    pid = proxy.pid("a")
    new = load(doc({"a": fake("a", "--tokens", "3")}, start), previous=old)
    report = await proxy.swapper.apply_config(new)
    assert report["changed"] == ["a"]
    assert proxy.pid("a") == pid  # not restarted yet: nobody asked, and a stream is in flight
    request = asyncio.ensure_future(proxy.chat("a"))
    await wait_until(lambda: proxy.swapper.slot("a").evicting, what="old process draining")
    assert not request.done()
    await release_all(proxy, "a", stream)  # the in-flight stream finishes in full
    status, data = await asyncio.wait_for(request, 15)
    assert status == 200
    assert data["choices"][0]["message"]["content"] == "tok0 tok1 tok2 "  # the new definition
    assert proxy.pid("a") not in (None, pid)


async def test_forced_unload_does_not_queue_behind_a_reload_drain(proxy_factory) -> None:
    """A forced unload of a model whose reload drain waits on a stream that never ends
    answers at once (it is how an operator ends such a drain)."""
    start = free_port_block(3)
    old = load(doc({"a": fake("a")}, start))
    proxy: Proxy = await proxy_factory(old)
    stream = await open_gated_stream(proxy, "a")  # parked at the fake's gate: never ends by itself
    pid = proxy.pid("a")
    await proxy.swapper.apply_config(load(doc({"a": fake("a", "--tokens", "3")}, start), previous=old))
    request = asyncio.ensure_future(proxy.chat("a"))
    await wait_until(lambda: proxy.swapper.slot("a").evicting, what="old process draining")

    async def force_unload() -> int:
        async with proxy.http.post(proxy.url + "/api/models/unload/a?force=1") as resp:
            return resp.status

    assert await asyncio.wait_for(force_unload(), 10) == 200
    await wait_until(lambda: proxy.pid("a") != pid, 5, "the old process gone")
    stream.close()
    status, data = await asyncio.wait_for(request, 15)  # the waiting request gets the new definition
    assert status == 200 and data["choices"][0]["message"]["content"] == "tok0 tok1 tok2 "


async def test_a_reload_drain_holds_up_no_other_model(proxy_factory) -> None:
    """A request for a changed model waits for the old process's stream to finish; meanwhile
    the swap queue is not held: another model still unloads and starts again at once."""
    start = free_port_block(4)
    old = load(doc({"a": fake("a"), "b": fake("b")}, start, groups=SIDE))
    proxy: Proxy = await proxy_factory(old)
    assert (await proxy.chat("b"))[0] == 200
    stream = await open_gated_stream(proxy, "a")  # held open until released
    await proxy.swapper.apply_config(load(doc({"a": fake("a", "--tokens", "3"), "b": fake("b")}, start,
                                              groups=SIDE), previous=old))
    request = asyncio.ensure_future(proxy.chat("a"))
    await wait_until(lambda: proxy.swapper.slot("a").evicting, what="old process draining")

    async def unload_b() -> int:
        async with proxy.http.delete(proxy.url + "/upstream/b") as resp:
            return resp.status

    assert await asyncio.wait_for(unload_b(), 10) == 200  # not queued behind a's drain
    assert proxy.swapper.slot("b").process.state is ProcessState.STOPPED
    status, _ = await asyncio.wait_for(proxy.chat("b"), 10)  # a start needs the swap queue too
    assert status == 200
    assert not request.done() and proxy.swapper.slot("a").evicting  # a's drain still waits on its stream
    await release_all(proxy, "a", stream)
    status, data = await asyncio.wait_for(request, 15)
    assert status == 200 and data["choices"][0]["message"]["content"] == "tok0 tok1 tok2 "


async def test_removed_model_stops_after_its_in_flight_requests(proxy_factory) -> None:
    start = free_port_block(3)
    old = load(doc({"a": fake("a"), "b": fake("b")}, start))
    proxy: Proxy = await proxy_factory(old)
    stream = await open_gated_stream(proxy, "b")
    retired = proxy.swapper.slot("b").process
    report = await proxy.swapper.apply_config(load(doc({"a": fake("a")}, start), previous=old))
    assert report["removed"] == ["b"]
    assert retired.state is ProcessState.READY  # still finishing its stream
    status, data = await proxy.chat("b")
    assert status == 404  # but no longer routable
    port = old.models["b"].port
    async with proxy.http.post(f"http://127.0.0.1:{port}/debug/release?n=1000") as r:
        assert r.status == 200
    rest = await asyncio.wait_for(stream.content.read(), 10)
    assert rest.endswith(b"data: [DONE]\n\n")
    await wait_until(lambda: retired.state is ProcessState.SHUTDOWN, 5, "b stopped")


async def _wait_reload(http, url: str, count: int) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    info: dict[str, Any] = {}

    async def done() -> bool:
        nonlocal info
        async with http.get(url + "/info") as r:
            info = (await r.json())["reload"]
        return info["count"] >= count

    await wait_until(done, 15, f"reload #{count}")
    return info


async def test_sighup_and_watch_reload_a_running_swapproxy(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import signal

    import aiohttp

    start = free_port_block(5)
    listen = start + 4
    cfg = tmp_path / "c.yaml"

    def write(models: dict[str, Any]) -> None:
        cfg.write_text(yaml.safe_dump(doc(models, start, stateDir=str(tmp_path / "state")), sort_keys=False))

    write({"a": fake("a")})
    proc = await start_cli(cfg, listen, "--watch-config")
    url = f"http://127.0.0.1:{listen}"
    try:
        async with aiohttp.ClientSession() as http:
            body = {"model": "a", "messages": []}
            async with http.post(url + "/v1/chat/completions", json=body) as r:
                assert r.status == 200
            async with http.get(url + "/health") as r:
                pid_a = (await r.json())["models"]["a"]["pid"]

            # An invalid edit, picked up by --watch-config: refused, the old config keeps serving.
            cfg.write_text(cfg.read_text().replace("models:", "models:\n  b:\n    cmd: x\n    tll: 3"))
            info = await _wait_reload(http, url, 1)
            assert info["error"] and f"{cfg}:" in info["error"] and "tll" in info["error"], info
            async with http.post(url + "/v1/chat/completions", json=body) as r:
                assert r.status == 200

            # A valid edit, also picked up by the watch: a unchanged keeps its pid, c appears at once.
            write({"a": fake("a"), "c": fake("c")})
            info = await _wait_reload(http, url, 2)
            assert info["error"] is None and info["report"]["kept"] == ["a"] and info["report"]["added"] == ["c"], info
            async with http.get(url + "/v1/models") as r:
                assert [m["id"] for m in (await r.json())["data"]] == ["a", "c"]

            # SIGHUP reloads too (the file is unchanged now: everything is kept).
            proc.send_signal(signal.SIGHUP)
            info = await _wait_reload(http, url, 3)
            assert info["error"] is None and info["report"]["kept"] == ["a", "c"]
            async with http.get(url + "/health") as r:
                assert (await r.json())["models"]["a"]["pid"] == pid_a
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
