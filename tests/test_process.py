"""ManagedProcess against real child processes (the fake llama-server)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from support import fake_cmd, make_config, pid_gone, wait_gone
from swapproxy.errors import HealthCheckTimeout, ModelStartFailed
from swapproxy.process import ManagedProcess
from swapproxy.states import IllegalTransition, ProcessState


def managed(*flags: str, **model: object) -> ManagedProcess:
    config = make_config({"m": {"cmd": fake_cmd(*flags), **model}})
    return ManagedProcess(config.models["m"])


async def test_start_ready_then_stop() -> None:
    proc = managed()
    states: list[ProcessState] = []
    proc.add_listener(lambda p, old, new: states.append(new))
    await proc.start()
    assert proc.state is ProcessState.READY
    pid = proc.pid
    assert pid is not None and psutil.pid_exists(pid)
    await proc.stop()
    assert proc.state is ProcessState.STOPPED
    assert pid_gone(pid)
    assert states == [ProcessState.STARTING, ProcessState.READY, ProcessState.STOPPING, ProcessState.STOPPED]
    await proc.shutdown()
    assert proc.state is ProcessState.SHUTDOWN


async def test_early_exit_fails_fast_with_output() -> None:
    config = make_config({"m": {"cmd": fake_cmd("--exit-during-startup", "3")}}, healthCheckTimeout=60)
    proc = ManagedProcess(config.models["m"])
    began = time.monotonic()
    with pytest.raises(ModelStartFailed) as info:
        await proc.start()
    elapsed = time.monotonic() - began
    # The child's own start (a Python interpreter importing aiohttp) is most of this; on a loaded
    # machine that alone passed a second. What matters: nowhere near the 60 s health check.
    assert elapsed < 10.0, f"took {elapsed:.2f}s to notice the exit"
    assert proc.state is ProcessState.FAILED
    assert proc.exit_code == 3
    assert "code 3" in str(info.value)
    assert any("failed to load model" in line for line in info.value.log_tail), info.value.log_tail
    await proc.shutdown()


async def test_health_timeout_kills_child() -> None:
    config = make_config({"m": {"cmd": fake_cmd("--startup-delay", "30")}}, healthCheckTimeout=0.5)
    proc = ManagedProcess(config.models["m"])
    started = asyncio.ensure_future(proc.start())
    await asyncio.wait_for(_until_state(proc, ProcessState.STARTING), 5)
    await asyncio.sleep(0)  # let the spawn happen
    with pytest.raises(HealthCheckTimeout) as info:
        await started
    assert "upstream health check timed out after 0.5s" in str(info.value)
    assert proc.state is ProcessState.FAILED
    assert proc._proc is not None
    assert pid_gone(proc._proc.pid)
    await proc.shutdown()


async def _until_state(proc: ManagedProcess, state: ProcessState) -> None:
    event = asyncio.Event()
    proc.add_listener(lambda p, old, new: event.set() if new is state else None)
    if proc.state is not state:
        await event.wait()


async def test_sigterm_ignoring_child_is_killed_after_unload_timeout() -> None:
    proc = managed("--ignore-sigterm", unloadTimeout=0.4)
    await proc.start()
    pid = proc.pid
    assert pid is not None
    began = time.monotonic()
    await proc.stop()
    elapsed = time.monotonic() - began
    assert pid_gone(pid)
    assert 0.35 <= elapsed < 3.0, elapsed
    await proc.shutdown()


async def test_grandchild_dies_with_the_group() -> None:
    proc = managed("--fork-grandchild")
    await proc.start()
    grandchild = None
    for line in proc.log.tail():
        if line.startswith("grandchild pid "):
            grandchild = int(line.split()[-1])
    assert grandchild is not None, proc.log.tail()
    assert psutil.pid_exists(grandchild)
    pid = proc.pid
    await proc.stop()
    assert pid is not None
    await wait_gone(pid, 2)
    await wait_gone(grandchild, 2)
    await proc.shutdown()


async def test_concurrent_starts_spawn_one_process() -> None:
    proc = managed("--startup-delay", "0.2")
    starts: list[ProcessState] = []
    proc.add_listener(lambda p, old, new: starts.append(new) if new is ProcessState.STARTING else None)
    await asyncio.gather(*(proc.start() for _ in range(8)))
    assert starts == [ProcessState.STARTING]
    assert proc.state is ProcessState.READY
    await proc.shutdown()


async def test_stop_during_start_aborts_it() -> None:
    proc = managed("--startup-delay", "30")
    starting = asyncio.ensure_future(proc.start())
    await asyncio.wait_for(_until_state(proc, ProcessState.STARTING), 5)
    for _ in range(5):  # let the spawn complete
        await asyncio.sleep(0)
    await proc.stop()
    with pytest.raises(ModelStartFailed, match="aborted"):
        await starting
    assert proc.state is ProcessState.STOPPED
    await proc.shutdown()


async def test_start_after_failure_retries() -> None:
    proc = managed("--exit-during-startup", "1")
    with pytest.raises(ModelStartFailed):
        await proc.start()
    assert proc.state is ProcessState.FAILED
    with pytest.raises(ModelStartFailed):
        await proc.start()  # FAILED -> STARTING is allowed: a new attempt, a new failure
    await proc.shutdown()


async def test_illegal_transition_is_refused() -> None:
    proc = managed()
    with pytest.raises(IllegalTransition):
        proc.change_state(ProcessState.READY)
    assert proc.state is ProcessState.STOPPED


async def test_port_taken_by_a_stranger_is_named() -> None:
    config = make_config({"m": {"cmd": fake_cmd()}})
    spec = config.models["m"]
    assert spec.port is not None
    with socket.socket() as stranger:
        stranger.bind(("127.0.0.1", spec.port))
        stranger.listen()
        proc = ManagedProcess(spec)
        with pytest.raises(ModelStartFailed, match=f"port {spec.port}.*already in use"):
            await proc.start()
    await proc.shutdown()


async def test_missing_binary_is_a_clear_failure() -> None:
    config = make_config({"m": {"cmd": "/nonexistent/llama-server --port ${PORT}"}})
    proc = ManagedProcess(config.models["m"])
    with pytest.raises(ModelStartFailed, match="cannot run '/nonexistent/llama-server'"):
        await proc.start()
    await proc.shutdown()


async def test_cmd_stop_receives_pid() -> None:
    proc = managed(cmdStop="kill -TERM ${PID}")
    await proc.start()
    pid = proc.pid
    await proc.stop()
    assert pid is not None and pid_gone(pid)
    assert any("shutting down" in line for line in proc.log.tail())  # it got SIGTERM, not SIGKILL
    await proc.shutdown()


async def test_huge_output_line_is_captured() -> None:
    proc = managed("--big-line", str(200 * 1024))
    await proc.start()
    assert sum(len(line) for line in proc.log.tail() if set(line) == {"x"}) == 200 * 1024
    await proc.shutdown()


PARENT = """
import asyncio, json, sys
sys.path.insert(0, {root!r}); sys.path.insert(0, {tests!r})
from support import make_config, fake_cmd
from swapproxy.guardian import Guardian
from swapproxy.process import ManagedProcess

async def main():
    guardian = None
    if {with_guardian!r}:
        guardian = Guardian(); await guardian.start()
    config = make_config({{"m": {{"cmd": fake_cmd("--fork-grandchild")}}}})
    proc = ManagedProcess(config.models["m"], trackers=[guardian] if guardian else [])
    await proc.start()
    grand = [l for l in proc.log.tail() if l.startswith("grandchild pid ")][0].split()[-1]
    pids = {{"child": proc.pid, "grandchild": int(grand)}}
    if guardian:
        pids["guardian"] = guardian.pid
    print(json.dumps(pids), flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def _start_parent(with_guardian: bool) -> subprocess.Popen[str]:
    tests = Path(__file__).resolve().parent
    script = PARENT.format(root=str(tests.parent), tests=str(tests), with_guardian=with_guardian)
    return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)


async def _parent_pids(parent: subprocess.Popen[str]) -> dict[str, int]:
    assert parent.stdout is not None
    line = await asyncio.wait_for(asyncio.to_thread(parent.stdout.readline), 20)
    pids: dict[str, int] = json.loads(line)
    for pid in pids.values():
        assert psutil.pid_exists(pid)
    return pids


async def test_sigkilled_parent_leaves_no_orphan() -> None:
    parent = _start_parent(with_guardian=True)
    try:
        pids = await _parent_pids(parent)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(5)
        for pid in pids.values():  # child, grandchild and the guardian itself
            await wait_gone(pid, 15)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


async def test_parent_death_signal_alone_takes_the_child() -> None:
    """Without a guardian, PR_SET_PDEATHSIG (set in the preexec hook) still kills the direct child."""
    parent = _start_parent(with_guardian=False)
    pids: dict[str, int] = {}
    try:
        pids = await _parent_pids(parent)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(5)
        await wait_gone(pids["child"], 15)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        for pid in pids.values():  # whatever outlived the parent (the grandchild: no guardian here)
            if not pid_gone(pid):
                os.kill(pid, signal.SIGKILL)


async def test_upstream_env_is_parents_plus_models_without_our_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWAPPROXY_TEST_KEY", "sk-do-not-leak")
    monkeypatch.setenv("SWAPPROXY_TEST_OTHER", "visible")
    config = make_config(
        {"m": {"cmd": fake_cmd(), "env": ["MODEL_VAR=42"]}}, apiKeys=["${env.SWAPPROXY_TEST_KEY}"]
    )
    assert config.api_keys == ("sk-do-not-leak",)
    proc = ManagedProcess(config.models["m"], secrets=config.api_keys)
    await proc.start()
    assert proc.pid is not None
    env = psutil.Process(proc.pid).environ()
    assert env["MODEL_VAR"] == "42"
    assert env["SWAPPROXY_TEST_OTHER"] == "visible"
    assert "SWAPPROXY_TEST_KEY" not in env
    assert "sk-do-not-leak" not in env.values()
    await proc.shutdown()
