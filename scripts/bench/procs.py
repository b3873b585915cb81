"""The processes a benchmark runs: swapproxy, fake upstreams, nginx; waiting for them; stopping them by pid.

swapproxy always runs through its command line (``python -m swapproxy``); the
fake llama-server (tests/fake_llama_server.py) and this package's servers.py run
as files, never imported. Everything started here is stopped by its own pid (or,
for processes started in a session of their own, by that process group).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import aiohttp
import psutil  # type: ignore[import-untyped]

from .meters import tree

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable
FAKE = ROOT / "tests" / "fake_llama_server.py"
SERVERS = Path(__file__).resolve().with_name("servers.py")
NGINX_HINT = "apt-get install -y nginx-light   (or: apt-get install -y nginx)"


# -- command lines -------------------------------------------------------------------------------
def fake_cmd(*flags: str, port: int | str = "${PORT}") -> str:
    """A command running the fake llama-server on ``port`` (by default a model's ${PORT})."""
    return " ".join([PY, str(FAKE), "--port", str(port), *flags])


def server_cmd(*flags: str) -> list[str]:
    """The argv of one of servers.py's servers (``--serve-upstream --port P`` and so on)."""
    return [PY, str(SERVERS), *flags]


def swapproxy_argv(config: Path, port: int, *, profile: str | None = None, no_uvloop: bool = False,
                   log_level: str = "warn") -> list[str]:
    """``python -m swapproxy -c CONFIG --listen 127.0.0.1:PORT --log-level warn`` (optionally under cProfile,
    or with uvloop hidden: the fallback path, as without the [fast] extra)."""
    argv = [PY]
    if profile:
        argv += ["-m", "cProfile", "-o", profile]
    if no_uvloop:  # import uvloop fails
        argv += ["-c", "import sys; sys.modules['uvloop'] = None; sys.argv[0] = 'swapproxy'; "
                       "from swapproxy.cli import main; sys.exit(main())"]
    else:
        argv += ["-m", "swapproxy"]
    return argv + ["-c", str(config), "--listen", f"127.0.0.1:{port}", "--log-level", log_level]


# -- swapproxy -----------------------------------------------------------------------------------
def start_swapproxy(config: Path, port: int, log: Path, *, src: Path = ROOT, profile: str | None = None,
                    no_uvloop: bool = False, log_level: str = "warn",
                    extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """swapproxy from the package in ``src`` (first on PYTHONPATH), its output to ``log``; ``extra_env``
    is added to its environment."""
    env = {**os.environ, **(extra_env or {})}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src), env.get("PYTHONPATH")]))
    with log.open("wb") as out:
        return subprocess.Popen(swapproxy_argv(config, port, profile=profile, no_uvloop=no_uvloop,
                                                       log_level=log_level), cwd=src,
                                env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def log_tail(log: Path | None, chars: int = 3000) -> str:
    try:
        return log.read_text(errors="replace")[-chars:] if log else ""
    except OSError:
        return ""


async def wait_healthy(url: str, *, what: str = "server", proc: subprocess.Popen[bytes] | None = None,
                       log: Path | None = None, check: Callable[[Any], bool] | None = None,
                       interval: float = 0.05, timeout: float = 90.0,
                       session: aiohttp.ClientSession | None = None) -> Any:
    """Poll GET ``url`` every ``interval`` s until it answers 200 (and, with ``check``, a JSON body that
    passes it: that body is returned). Fails at once when ``proc`` exits, with the end of ``log``."""
    own = session is None
    s = aiohttp.ClientSession() if session is None else session
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"{what} exited with {proc.returncode}:\n{log_tail(log)}")
            try:
                async with s.get(url) as resp:
                    if resp.status == 200:
                        if check is None:
                            return None
                        body = await resp.json(content_type=None)
                        if check(body):
                            return body
            except (aiohttp.ClientError, OSError, ValueError):
                pass
            await asyncio.sleep(interval)
    finally:
        if own:
            await s.close()
    raise RuntimeError(f"{what} not up at {url} after {timeout}s:\n{log_tail(log)}")


async def wait_listening(port: int, tries: int = 200, interval: float = 0.05) -> None:
    """Until something accepts TCP connections on 127.0.0.1:``port`` (for servers without /health)."""
    for _ in range(tries):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(interval)


# -- stopping ------------------------------------------------------------------------------------
def terminate(proc: subprocess.Popen[bytes], grace: float, also_kill: Iterable[int] = ()) -> None:
    """SIGTERM ``proc`` by pid if it still runs; after ``grace`` seconds SIGKILL it (and the pids in
    ``also_kill``, e.g. its workers); always reaped."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        _sigkill(also_kill)
        proc.kill()
        proc.wait()


def _sigkill(pids: Iterable[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:  # gone already
            pass


def _alive(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def kill_leftovers(pids: Iterable[int], timeout: float = 5.0) -> list[int]:
    """Wait up to ``timeout`` s for ``pids`` to exit; SIGKILL those still alive and return them, sorted."""
    deadline = time.monotonic() + timeout
    alive = set(pids)
    while alive and time.monotonic() < deadline:
        alive = {pid for pid in alive if _alive(pid)}
        if alive:
            time.sleep(0.05)
    _sigkill(alive)
    return sorted(alive)


def stop_proxy(proc: subprocess.Popen[bytes], upstream_pids: Sequence[int]) -> None:
    """SIGTERM the proxy by pid (it stops its upstreams), SIGKILL what is left after a grace period."""
    terminate(proc, 20)
    for pid in kill_leftovers(upstream_pids):
        print(f"warning: upstream pid {pid} outlived swapproxy; killed it", file=sys.stderr)


async def spawn(*argv: str, log: Path) -> asyncio.subprocess.Process:
    """``argv`` in a session (process group) of its own, output appended to ``log``."""
    out = open(log, "ab")  # noqa: SIM115 - lives as long as the child
    return await asyncio.create_subprocess_exec(*argv, stdout=out, stderr=out, start_new_session=True)


async def stop_group(proc: asyncio.subprocess.Process, grace: float = 30) -> float:
    """SIGTERM a :func:`spawn`-ed process group, SIGKILL after ``grace``; seconds until it exited."""
    began = time.monotonic()
    if proc.returncode is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except asyncio.TimeoutError:
            os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
    return time.monotonic() - began


# -- this process ------------------------------------------------------------------------------
def sigterm_as_interrupt() -> None:
    """From now on SIGTERM raises KeyboardInterrupt, as Ctrl-C does: the finally blocks stop what was started."""
    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)


def run_interruptible(main: Callable[[list[str] | None], int], argv: list[str] | None, said: str) -> int:
    """``main(argv)``; on Ctrl-C or SIGTERM (main's finally blocks have stopped everything) ``said``, exit 130."""
    try:
        return main(argv)
    except KeyboardInterrupt:
        print(said, file=sys.stderr)
        return 130


# -- nginx ---------------------------------------------------------------------------------------
def nginx_binary() -> str | None:
    for candidate in (shutil.which("nginx"), "/usr/sbin/nginx"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def _nginx_common(tmp: Path, name: str, nginx: str) -> str:
    """Global settings and temp paths inside ``tmp`` (so nginx runs as any user)."""
    built = subprocess.run([nginx, "-V"], capture_output=True, text=True).stderr
    temps = ["client_body", "proxy"] + [m for m in ("fastcgi", "uwsgi", "scgi") if f"without-http_{m}" not in built]
    paths = "\n".join(f"    {t}_temp_path {tmp}/{name}-{t};" for t in temps)
    return f"""daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile 16384;
pid {tmp}/{name}.pid;
error_log {tmp}/{name}-error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
{paths}
    keepalive_requests 10000000;
    keepalive_timeout 300s;
"""


def write_static_conf(tmp: Path, nginx: str, port: int, body: str) -> Path:
    """nginx answering every request with ``body`` (JSON), one worker."""
    assert "'" not in body and "$" not in body
    conf = _nginx_common(tmp, "static", nginx) + f"""    server {{
        listen 127.0.0.1:{port} backlog=4096;
        default_type application/json;
        location / {{ return 200 '{body}'; }}
    }}
}}
"""
    path = tmp / "static.conf"
    path.write_text(conf)
    return path


def write_proxy_conf(tmp: Path, nginx: str, port: int, ports: dict[str, int]) -> Path:
    """nginx as a streaming reverse proxy, one worker: ``/m/<model>/...`` to that model's port."""
    ups = "".join(f"""    upstream m_{m.replace('-', '_')} {{
        server 127.0.0.1:{p};
        keepalive 1024;
        keepalive_requests 10000000;
        keepalive_timeout 300s;
    }}
""" for m, p in ports.items())
    locs = "".join(f"        location /m/{m}/ {{ proxy_pass http://m_{m.replace('-', '_')}/; }}\n" for m in ports)
    conf = _nginx_common(tmp, "proxy", nginx) + ups + f"""    server {{
        listen 127.0.0.1:{port} backlog=4096;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_buffering off;
        proxy_request_buffering off;
        proxy_read_timeout 3600s;
        proxy_send_timeout 3600s;
{locs}    }}
}}
"""
    path = tmp / "proxy.conf"
    path.write_text(conf)
    return path


def nginx_cmd(nginx: str, tmp: Path, conf: Path) -> list[str]:
    return [nginx, "-p", str(tmp), "-e", "stderr", "-c", str(conf)]


def start_nginx(nginx: str, tmp: Path, conf: Path) -> subprocess.Popen[bytes]:
    with (tmp / "proxy-stderr.log").open("wb") as err:
        return subprocess.Popen(nginx_cmd(nginx, tmp, conf), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=err)


def stop_nginx(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (fast shutdown) to the master by pid; SIGKILL it and its workers after a grace period."""
    if proc.poll() is None:
        terminate(proc, 10, also_kill=[p.pid for p in tree(proc.pid)[1:]])
