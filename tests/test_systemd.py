"""systemd notify protocol: a real datagram socket, a real swapproxy process."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
from pathlib import Path

from support import fake_cmd, free_port_block
from swapproxy.systemd import Notifier, watchdog_interval

ROOT = Path(__file__).resolve().parents[1]


def test_watchdog_interval_is_half_of_usec() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "2000000"}) == 1.0
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}) is None  # not ours


def test_notifier_without_socket_is_a_no_op() -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    notifier.ready("x")  # must not raise


async def test_notify_messages_from_a_real_swapproxy(tmp_path: Path) -> None:
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.setblocking(False)
    start = free_port_block(2)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"startPort: {start}\nstateDir: {tmp_path / 'state'}\n"
        f"models:\n  a:\n    cmd: {fake_cmd('--startup-delay', '0.3')}\n"
        "hooks:\n  on_startup:\n    preload: [a]\n"
    )
    env = {"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "200000", "PATH": "/usr/bin:/bin"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "swapproxy", "-c", str(cfg), "--listen", f"127.0.0.1:{start + 1}",
        cwd=ROOT, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )
    loop = asyncio.get_running_loop()
    messages: list[dict[str, str]] = []

    async def receive_until(pred) -> dict[str, str]:  # type: ignore[no-untyped-def]
        while True:
            data = await asyncio.wait_for(loop.sock_recv(sock, 4096), 20)
            fields = dict(line.split("=", 1) for line in data.decode().splitlines())
            messages.append(fields)
            if pred(fields):
                return fields

    try:
        ready = await receive_until(lambda f: f.get("READY") == "1")
        # READY=1 comes once the preload finished: the model is already running.
        assert ready["STATUS"] == "1 model(s) running: a"
        await receive_until(lambda f: f.get("WATCHDOG") == "1")
        await receive_until(lambda f: f.get("WATCHDOG") == "1")  # it keeps pinging
        proc.send_signal(signal.SIGHUP)  # a reload is announced, then READY again
        reloading = await receive_until(lambda f: f.get("RELOADING") == "1")
        assert int(reloading["MONOTONIC_USEC"]) > 0
        again = await receive_until(lambda f: f.get("READY") == "1")
        assert again["STATUS"] == "1 model(s) running: a"
        proc.send_signal(signal.SIGTERM)
        stopping = await receive_until(lambda f: f.get("STOPPING") == "1")
        assert "stopping" in stopping["STATUS"]
        assert await asyncio.wait_for(proc.wait(), 15) == 0
        assert not any(m.get("READY") for m in messages[: messages.index(ready)])
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        sock.close()
