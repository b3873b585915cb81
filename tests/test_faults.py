"""Faults survived: start-failure circuit breaker, persistent restarts, hangs, crashes, kill -9."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import aiohttp
import psutil

from support import ROOT, fake, fake_cmd, free_port_block, make_config, start_cli, wait_gone, wait_http_ok, wait_until
from swapproxy.states import ProcessState


async def test_circuit_breaker_opens_after_repeated_failures(proxy_factory) -> None:
    config = make_config({"bad": fake("bad", "--exit-during-startup", "4")}, circuitBreaker={"failures": 2, "window": 30, "backoff": 0})
    proxy = await proxy_factory(config)
    starts: list[int] = []
    proxy.swapper.slot("bad").process.add_listener(
        lambda p, old, new: starts.append(1) if new is ProcessState.STARTING else None
    )
    for _ in range(2):
        status, data = await proxy.chat("bad")
        assert status == 503 and "code 4" in data["error"]["message"]
    assert len(starts) == 2
    status, data = await proxy.chat("bad")  # breaker open: refused at once, no new spawn
    assert status == 503
    assert "not retrying" in data["error"]["message"] and "failed to load model" in data["error"]["message"]
    assert len(starts) == 2
    try:
        await proxy.swapper.load("bad")  # an operator's explicit load tries again
    except Exception as exc:  # noqa: BLE001 - the model is still broken
        assert "code 4" in str(exc)
    assert len(starts) == 3


async def test_persistent_model_is_restarted_after_a_crash(proxy_factory) -> None:
    config = make_config(
        {"emb": fake("emb"), "chat": fake("chat")},
        groups={"keep": {"swap": False, "exclusive": False, "persistent": True, "members": ["emb"]}},
    )
    proxy = await proxy_factory(config)
    assert (await proxy.chat("emb"))[0] == 200
    first = proxy.pid("emb")
    assert first is not None
    os.kill(first, signal.SIGKILL)  # the upstream crashes
    await wait_until(lambda: proxy.swapper.slot("emb").process.state is ProcessState.FAILED, what="crash seen")
    await wait_until(
        lambda: proxy.swapper.slot("emb").process.state is ProcessState.READY, 10, "automatic restart"
    )
    assert proxy.pid("emb") not in (None, first)


async def test_hung_upstream_gives_504_and_others_keep_serving(proxy_factory) -> None:
    config = make_config(
        {"hung": fake("hung", "--hang", timeouts={"responseHeader": 0.5}), "ok": fake("ok")},
        groups={"side": {"swap": False, "exclusive": False, "members": ["hung", "ok"]}},
    )
    proxy = await proxy_factory(config)
    hung = asyncio.ensure_future(proxy.chat("hung"))
    status, data = await proxy.chat("ok")
    assert status == 200 and data["model"] == "ok"
    status, data = await asyncio.wait_for(hung, 10)
    assert status == 504
    assert data["error"]["code"] == "upstream_timeout"


async def _load_all(listen: int, models: list[str]) -> list[int]:
    async with aiohttp.ClientSession() as http:
        for model in models:
            body = {"model": model, "messages": []}
            async with http.post(f"http://127.0.0.1:{listen}/v1/chat/completions", json=body) as r:
                assert r.status == 200
        async with http.get(f"http://127.0.0.1:{listen}/health") as r:
            return [m["pid"] for m in (await r.json())["models"].values()]


def _family(pids: list[int]) -> list[int]:
    out = list(pids)
    for pid in pids:
        out += [c.pid for c in psutil.Process(pid).children(recursive=True)]
    return out


def _three_model_config(tmp_path: Path, *flags: str, unload: float = 10) -> tuple[Path, int]:
    start = free_port_block(4)
    cfg = tmp_path / "c.yaml"
    models = "".join(f"  m{i}:\n    cmd: {fake_cmd('--fork-grandchild', *flags)}\n" for i in range(3))
    cfg.write_text(
        f"startPort: {start}\nunloadTimeout: {unload}\nstateDir: {tmp_path / 'state'}\nmodels:\n{models}"
        "groups:\n  all:\n    swap: false\n    exclusive: false\n    members: [m0, m1, m2]\n"
    )
    return cfg, start + 3


async def test_sigkilled_swapproxy_leaves_no_upstream_or_grandchild(tmp_path: Path) -> None:
    cfg, listen = _three_model_config(tmp_path)
    proc = await start_cli(cfg, listen)
    try:
        family = _family(await _load_all(listen, ["m0", "m1", "m2"]))
        assert len(family) == 6  # three fakes, three grandchildren
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        for pid in family:  # generous: a loaded CI machine is slow, and a pass returns at once
            await wait_gone(pid, 15)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_sigint_stops_sigterm_ignoring_upstreams_within_unload_timeout(tmp_path: Path) -> None:
    cfg, listen = _three_model_config(tmp_path, "--ignore-sigterm", unload=1)
    proc = await start_cli(cfg, listen)
    try:
        family = _family(await _load_all(listen, ["m0", "m1", "m2"]))
        loop = asyncio.get_running_loop()
        began = loop.time()
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
        # unloadTimeout (1 s) plus slack for a loaded machine; not waiting for it would take 10 s+.
        assert loop.time() - began < 1 + 2.0
        for pid in family:
            await wait_gone(pid, 5)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_upstreams_left_by_a_dead_run_are_stopped_before_serving(proxy_factory, tmp_path: Path) -> None:
    import json
    import subprocess

    from swapproxy.statefile import RunRecord

    state = tmp_path / "state"
    config = make_config({"m": fake("m")}, stateDir=str(state))
    port = config.models["m"].port
    # An upstream from an earlier run, still holding m's port; its swapproxy is gone.
    orphan = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "fake_llama_server.py"), "--port", str(port)],
        start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        dead_owner = subprocess.Popen(["true"])
        dead_owner.wait()
        record = RunRecord(state)
        record.watch(orphan.pid)
        data = json.loads(record.path.read_text())
        data["owner"]["pid"] = dead_owner.pid
        (state / f"run-{dead_owner.pid}-1.json").write_text(json.dumps(data))
        record.path.unlink()
        await wait_http_ok(f"http://127.0.0.1:{port}/health", 15, "the orphan to listen")
        proxy = await proxy_factory(config)
        assert orphan.poll() is not None or await asyncio.to_thread(orphan.wait, 5) is not None
        status, data = await proxy.chat("m")  # its port is free again: m starts normally
        assert status == 200
    finally:
        if orphan.poll() is None:
            orphan.kill()
            orphan.wait()


async def test_live_runs_records_are_left_alone(proxy_factory, tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = await proxy_factory(make_config({"a": fake("a")}, stateDir=str(state)))
    assert (await first.chat("a"))[0] == 200
    pid = first.pid("a")
    second = await proxy_factory(make_config({"b": fake("b")}, stateDir=str(state)))
    assert (await second.chat("b"))[0] == 200
    assert pid is not None and psutil.pid_exists(pid) and first.pid("a") == pid
    assert len(list(state.glob("run-*.json"))) == 2  # one record per running app
