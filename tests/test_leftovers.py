"""Upstreams left behind, and the records that find them (issue 14, items 5, 7, 8).

* the guardian is watched: killed, it is replaced, so a later SIGKILL of swapproxy still
  takes an upstream's grandchild (the wrapper-script case) along;
* a leftover group is reaped even when its leader is gone and only a grandchild is left;
* a leftover that exits between the signal and the look at it does not crash start-up;
* a record that is not this user's own (or that others may write), or a link, is ignored,
  and writing a record never follows a link planted in the state folder.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest

from support import fake_cmd, free_port_block, pid_gone, start_cli, wait_gone
from swapproxy import statefile
from swapproxy.statefile import RunRecord, reap_leftovers

SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]
#: A group leader that starts a child in its own group, prints the child's pid and sleeps.
LEADER = [sys.executable, "-c", "import subprocess, sys, time\n"
          f"p = subprocess.Popen({SLEEPER!r})\nprint(p.pid, flush=True)\ntime.sleep(600)"]


def _guardians(pid: int) -> list[int]:
    return [c.pid for c in psutil.Process(pid).children() if "swapproxy.guardian" in " ".join(c.cmdline())]


async def test_a_killed_guardian_is_replaced_and_still_reaps_grandchildren(tmp_path: Path) -> None:
    start = free_port_block(2)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"startPort: {start}\nstateDir: {tmp_path / 'state'}\nmodels:\n"
                   f"  m:\n    cmd: {fake_cmd('--fork-grandchild')}\n")
    proc = await start_cli(cfg, start + 1, output=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    family: list[int] = []
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{start + 1}/upstream/m/load") as r:
                assert r.status == 200
            async with http.get(f"http://127.0.0.1:{start + 1}/health") as r:
                leader = (await r.json())["models"]["m"]["pid"]
        family = [leader, *(c.pid for c in psutil.Process(leader).children(recursive=True))]
        assert len(family) == 2, family
        first = _guardians(proc.pid)
        assert len(first) == 1
        os.kill(first[0], signal.SIGKILL)
        # swapproxy says so once the new guardian was told every group it watches
        told = b""
        while b"watching 1 process group" not in told:
            told = await asyncio.wait_for(proc.stdout.readline(), 10)
            assert told, "swapproxy did not replace its guardian"
        assert len(_guardians(proc.pid)) == 1 and _guardians(proc.pid) != first
        # swapproxy dies hard: the new guardian takes the grandchild along
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        for pid in family:
            await wait_gone(pid, 15)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        for pid in family:
            if not pid_gone(pid):
                os.kill(pid, signal.SIGKILL)


def _plant(state: Path, upstreams: list[dict[str, Any]], mode: int = 0o600) -> Path:
    """A record of a run whose swapproxy is gone (its owner pid exited), listing ``upstreams``."""
    owner = subprocess.Popen(["true"])
    owner.wait()
    state.mkdir(mode=0o700, exist_ok=True)
    path = state / f"run-{owner.pid}-1.json"
    path.write_text(json.dumps({"owner": {"pid": owner.pid, "started": 1.0}, "upstreams": upstreams}))
    path.chmod(mode)
    return path


def _leader_with_child() -> tuple[subprocess.Popen[bytes], int]:
    leader = subprocess.Popen(LEADER, start_new_session=True, stdout=subprocess.PIPE)
    assert leader.stdout is not None
    return leader, int(leader.stdout.readline())


def test_a_group_whose_leader_is_gone_is_still_reaped(tmp_path: Path) -> None:
    leader, child = _leader_with_child()
    started = psutil.Process(leader.pid).create_time()
    try:
        leader.kill()  # the leader alone: its child stays, in the leader's group
        leader.wait()
        assert not pid_gone(child) and os.getpgid(child) == leader.pid
        _plant(tmp_path / "state", [{"pid": leader.pid, "started": started}])
        assert reap_leftovers(tmp_path / "state", grace=5) == [leader.pid]
        assert pid_gone(child)
    finally:
        if not pid_gone(child):
            os.kill(child, signal.SIGKILL)


def test_a_leftover_that_exits_meanwhile_does_not_crash_start_up(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    orphan = subprocess.Popen(SLEEPER, start_new_session=True)
    _plant(tmp_path / "state", [{"pid": orphan.pid, "started": psutil.Process(orphan.pid).create_time()}])
    real_killpg = os.killpg

    def killpg_and_reap(pgid: int, sig: int) -> None:
        real_killpg(pgid, sig)
        if pgid == orphan.pid:
            orphan.wait()  # it exits, and is reaped, before swapproxy looks at it again

    monkeypatch.setattr(statefile.os, "killpg", killpg_and_reap)
    try:
        reap_leftovers(tmp_path / "state", grace=5)
        assert orphan.poll() is not None
    finally:
        if orphan.poll() is None:
            orphan.kill()
            orphan.wait()


@pytest.mark.parametrize("planted", ["writable by others", "someone else's", "a link"])
def test_records_that_are_not_our_own_are_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  planted: str) -> None:
    victim = subprocess.Popen(SLEEPER, start_new_session=True)  # a process group someone wants signalled
    try:
        entry = {"pid": victim.pid, "started": psutil.Process(victim.pid).create_time()}
        state = tmp_path / "state"
        if planted == "writable by others":
            _plant(state, [entry], mode=0o666)
        elif planted == "someone else's":  # as if another user owned it: swapproxy runs as a uid it is not
            _plant(state, [entry])
            real = os.geteuid()
            monkeypatch.setattr(statefile.os, "geteuid", lambda: real + 1)
        else:
            target = _plant(tmp_path, [entry])
            state.mkdir(mode=0o700)
            (state / "run-1-1.json").symlink_to(target)
        reap_leftovers(state, grace=2)
        assert victim.poll() is None, f"a record {planted} made swapproxy signal a process group"
    finally:
        victim.kill()
        victim.wait()


def test_writing_a_record_never_follows_a_planted_link(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    record = RunRecord(state)
    for name in (record.path.with_suffix(".tmp").name, f".{record.path.stem}.tmp"):
        (state / name).symlink_to(victim)  # the temporary names a writer might use
    record.watch(os.getpid())
    assert victim.read_text() == "precious"
    assert not record.path.is_symlink() and json.loads(record.path.read_text())["upstreams"][0]["pid"] == os.getpid()
    assert record.path.stat().st_mode & 0o077 == 0
    record.close()
