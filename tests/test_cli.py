"""The command line, run as a real process: check, version, serve and signals."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import psutil

from support import fake_cmd, free_port_block, start_cli, wait_gone

ROOT = Path(__file__).resolve().parents[1]


def swapproxy(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "swapproxy", *args], capture_output=True, text=True, cwd=ROOT, timeout=60, **kw)


def test_version() -> None:
    out = swapproxy("--version")
    assert out.returncode == 0
    assert out.stdout.startswith("swapproxy ")


def test_schema_is_json_schema_of_the_config() -> None:
    import json

    out = swapproxy("schema")
    assert out.returncode == 0, out.stderr
    schema = json.loads(out.stdout)
    assert schema["type"] == "object"
    for key in ("models", "healthCheckTimeout", "groups", "macros", "apiKeys", "defaultModel"):
        assert key in schema["properties"], key


def test_check_example_config() -> None:
    out = swapproxy("check", "-c", "config.example.yaml")
    assert out.returncode == 0, out.stderr
    assert "OK" in out.stdout


def test_check_reports_typo_with_file_line_and_suggestion(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("models:\n  m:\n    cmd: llama-server --port ${PORT}\n    tll: 5\n")
    out = swapproxy("check", "-c", str(cfg))
    assert out.returncode == 2
    assert f"{cfg}:4: models.m.tll:" in out.stderr
    assert "did you mean 'ttl'" in out.stderr
    assert "Traceback" not in out.stderr


def test_invalid_config_refuses_to_serve(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("models: [1, 2]\n")
    out = swapproxy("-c", str(cfg))
    assert out.returncode == 2
    assert str(cfg) in out.stderr and "Traceback" not in out.stderr


async def test_serve_then_sigterm_stops_upstreams_and_exits_0(tmp_path: Path) -> None:
    start = free_port_block(3)
    listen = start + 2
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"startPort: {start}\nmodels:\n  a:\n    cmd: {fake_cmd('--fork-grandchild')}\n"
    )
    proc = await start_cli(cfg, listen)
    try:
        async with aiohttp.ClientSession() as http:
            body = {"model": "a", "messages": [{"role": "user", "content": "x"}]}
            async with http.post(f"http://127.0.0.1:{listen}/v1/chat/completions", json=body) as r:
                assert r.status == 200
            async with http.get(f"http://127.0.0.1:{listen}/health") as r:
                upstream_pid = (await r.json())["models"]["a"]["pid"]
        family = [upstream_pid] + [c.pid for c in psutil.Process(upstream_pid).children(recursive=True)]
        assert len(family) == 2  # the fake and its grandchild
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 15)
        assert code == 0
        for pid in family:
            await wait_gone(pid, 2)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
