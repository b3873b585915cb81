"""Serving as llama-server and llama-swap do: several --listen addresses, TLS, --config-dir."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import ssl
import subprocess
import textwrap
from pathlib import Path

import aiohttp
import pytest

from support import PY, ROOT, fake_cmd, free_port_block, start_cli, wait_until
from swapproxy.config import ConfigError, load_config
from swapproxy.listen import Address, parse_listen
from swapproxy.reload import Reloader, ReloadState


def test_listen_takes_several_addresses() -> None:
    assert parse_listen("127.0.0.1:9000") == [Address("127.0.0.1", 9000)]
    assert parse_listen(":9000") == [Address(None, 9000)]
    assert parse_listen("127.0.0.1,::1") == [Address("127.0.0.1", 8080), Address("::1", 8080)]
    assert parse_listen("127.0.0.1, [::1]:9000") == [Address("127.0.0.1", 9000), Address("::1", 9000)]
    assert parse_listen("localhost", default_port=8443) == [Address("localhost", 8443)]
    assert parse_listen("a:1,b:2,a:1") == [Address("a", 1), Address("b", 2)]
    assert str(Address("::1", 80)) == "[::1]:80" and str(Address(None, 80)) == "*:80"
    for bad, why in [("a:1,b:2,c", "give every address its port"), ("a:x", "is not a number"),
                     ("a,,b", "an empty address"), ("[::1", r"expected \[IPv6\]:PORT"), ("a:70000", "out of range")]:
        with pytest.raises(ValueError, match=why):
            parse_listen(bad)


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


async def test_server_multiple_addresses(tmp_path: Path) -> None:
    """llama.cpp's test_server_multiple_addresses, through swapproxy: one --listen with two
    addresses; on each, /health is open, a completion without the key is refused, with it streams."""
    if not ipv6_loopback():
        pytest.skip("IPv6 loopback is unavailable")  # as llama.cpp's own test does
    start = free_port_block(2)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps({"startPort": start, "apiKeys": ["test-multiple-addresses"],
                               "models": {"m": {"cmd": fake_cmd("--model-name", "m")}}}))
    proc = await start_cli(cfg, start + 1, "--listen", f"127.0.0.1,[::1]:{start + 1}")
    try:
        async def check_address(host: str) -> bool:
            base = f"http://{host}:{start + 1}"
            async with aiohttp.ClientSession() as http:
                async with http.get(base + "/health") as resp:
                    assert resp.status == 200
                async with http.post(base + "/v1/completions", json={}) as resp:
                    assert resp.status == 401
                body = {"model": "m", "prompt": "Once upon a time", "max_tokens": 8, "stream": True}
                headers = {"Authorization": "Bearer test-multiple-addresses"}
                async with http.post(base + "/v1/completions", json=body, headers=headers) as resp:
                    events = [line for line in (await resp.read()).split(b"\n\n") if line.startswith(b"data:")]
            assert len(events) > 1
            return True

        assert all(await asyncio.gather(*(check_address(h) for h in ("127.0.0.1", "[::1]"))))
    finally:
        proc.terminate()
        await proc.wait()


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 made by the openssl command (no shell, no Python dependency)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True, timeout=60)
    return cert, key


async def test_tls_with_a_certificate_the_test_makes(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    start = free_port_block(2)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps({"startPort": start, "models": {"m": {"cmd": fake_cmd("--model-name", "m")}}}))
    listen = start + 1
    proc = await asyncio.create_subprocess_exec(
        PY, "-m", "swapproxy", "-config", str(cfg), "-listen", f"127.0.0.1:{listen}", "-tls-cert-file", str(cert),
        "-tls-key-file", str(key), cwd=ROOT, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    trusted = ssl.create_default_context(cafile=str(cert))
    try:
        async with aiohttp.ClientSession() as http:
            async def up() -> bool:
                try:
                    async with http.get(f"https://127.0.0.1:{listen}/health", ssl=trusted) as resp:
                        return resp.status == 200
                except aiohttp.ClientConnectorError:
                    return False

            await wait_until(up, 15, "swapproxy listening over TLS")
            body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
            async with http.post(f"https://127.0.0.1:{listen}/v1/chat/completions", json=body, ssl=trusted) as resp:
                assert resp.status == 200 and (await resp.json())["model"] == "m"
            with pytest.raises(aiohttp.ClientConnectorCertificateError):  # no trust, no talk
                await http.get(f"https://127.0.0.1:{listen}/health")
            with pytest.raises(aiohttp.ClientError):  # and no plain HTTP on that port
                await http.get(f"http://127.0.0.1:{listen}/health")
    finally:
        proc.terminate()
        assert await proc.wait() == 0
    out = subprocess.run([PY, "-m", "swapproxy", "-c", str(cfg), "--tls-cert-file", str(cert), "--tls-key-file",
                          str(cfg)], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 2 and "Traceback" not in out.stderr and out.stderr.startswith("swapproxy: ")
    out = subprocess.run([PY, "-m", "swapproxy", "-c", str(cfg), "--tls-cert-file", str(cert)],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 2 and "go together" in out.stderr


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def test_config_dir_merges_files_in_name_order(tmp_path: Path) -> None:
    main = write(tmp_path / "main.yaml", """\
        apiKeys: [one]
        models:
          a: {cmd: "s --port ${PORT}"}
        """)
    conf = tmp_path / "conf.d"
    conf.mkdir()
    write(conf / "20-more.yml", """\
        apiKeys: [three]
        models:
          c: {cmd: "s --port ${PORT}"}
        """)
    write(conf / "10-models.yaml", """\
        apiKeys: [two]
        healthCheckTimeout: 30
        models:
          b: {cmd: "s --port ${PORT}", aliases: [bee]}
        selectors:
          any: {strategy: warm, targets: [bee, c]}
        """)
    write(conf / "05-empty.yaml", "# nothing here yet\n")
    write(conf / "notes.txt", "not: yaml: at all: [")
    (conf / "sub").mkdir()
    write(conf / "sub" / "ignored.yaml", "models: {z: {cmd: s}}\n")
    config = load_config(main, environ={}, config_dir=str(conf))
    assert list(config.models) == ["a", "b", "c"] and config.api_keys == ("one", "two", "three")
    assert config.health_check_timeout == 30 and config.selectors["any"].target_ids == ("b", "c")
    assert (config.file, config.config_dir, config.source_file) == (str(main), str(conf), str(main))
    alone = load_config(None, environ={}, config_dir=str(conf))  # the directory alone
    assert list(alone.models) == ["b", "c"] and alone.source_file is None and alone.file == str(conf)


def test_config_dir_problems_name_the_file_they_are_in(tmp_path: Path) -> None:
    main = write(tmp_path / "main.yaml", """\
        healthCheckTimeout: 60
        models:
          a: {cmd: "s --port ${PORT}"}
        """)
    conf = tmp_path / "conf.d"
    conf.mkdir()
    other = write(conf / "models.yaml", """\
        healthCheckTimeout: 30
        models:
          a: {cmd: "t --port ${PORT}"}
          b: {cmd: "s --port ${PORT}", tll: 5}
        groups: [x]
        """)
    with pytest.raises(ConfigError) as info:
        load_config(main, environ={}, config_dir=str(conf))
    assert [str(p) for p in info.value.problems] == [
        f"{other}:1: healthCheckTimeout: set to 30 here but to 60 in {main}:1; set it once",
        f"{other}:3: models.a: 'a' is already defined in {main}:3; define it in one file",
        f"{other}:4: models.b.tll: unknown key 'tll'; did you mean 'ttl'?",
        f"{other}:5: groups: expected a mapping (got ['x'])"]
    with pytest.raises(ConfigError, match="is also in --config-dir"):
        load_config(other, environ={}, config_dir=str(conf))
    with pytest.raises(ConfigError, match="cannot read the directory"):
        load_config(main, environ={}, config_dir=str(tmp_path / "missing"))


async def test_reload_reads_the_directory_again(proxy_factory, tmp_path: Path) -> None:
    main = write(tmp_path / "main.yaml", f"startPort: {free_port_block(3)}\nmodels:\n  a: {{cmd: '{fake_cmd()}'}}\n")
    conf = tmp_path / "conf.d"
    conf.mkdir()
    config = load_config(main, config_dir=str(conf))
    proxy = await proxy_factory(config)
    reloader = Reloader(config.source_file, proxy.swapper, ReloadState(), config_dir=config.config_dir)
    seen = reloader._stamp()
    write(conf / "b.yaml", f"models:\n  b: {{cmd: '{fake_cmd()}'}}\n")
    assert reloader._stamp() != seen  # --watch-config notices a new file in the directory
    assert await reloader.reload(), reloader.state.error  # SIGHUP reads the directory again
    assert list(proxy.swapper.config.models) == ["a", "b"]
    status, _ = await proxy.chat("b")
    assert status == 200
