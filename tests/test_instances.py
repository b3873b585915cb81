"""llamactl's instance API on swapproxy's models, and config changes written back to the file.

The reference's "Complete Instance Lifecycle" (llamactl's API reference, Examples) runs here
verbatim: the curl commands below are copied from it, unchanged but for the base URL, and
run with curl itself when it is installed (else the same requests are sent with aiohttp).
The fake llama-server stands in for llama-server (``instances.llamaServer``).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from support import FAKE, PY, free_port_block, pid_gone, running_cli, wait_until
from swapproxy.config import load_config
from swapproxy.states import ProcessState

#: llamactl's API reference, "Complete Instance Lifecycle", verbatim.
LIFECYCLE = r"""
# Create and start instance
curl -X POST http://localhost:8080/api/v1/instances/my-model \
-H "Content-Type: application/json" \
-H "Authorization: Bearer your-api-key" \
-d '{
"model": "/models/llama-2-7b.gguf"
}'
# Check instance status
curl -H "Authorization: Bearer your-api-key" \
http://localhost:8080/api/v1/instances/my-model
# Get instance logs
curl -H "Authorization: Bearer your-api-key" \
"http://localhost:8080/api/v1/instances/my-model/logs?lines=50"
# Use OpenAI-compatible chat completions
curl -X POST http://localhost:8080/v1/chat/completions \
-H "Content-Type: application/json" \
-H "Authorization: Bearer your-inference-api-key" \
-d '{
"model": "my-model",
"messages": [
{"role": "user", "content": "Hello!"}
],
"max_tokens": 100
}'
# Stop instance
curl -X POST -H "Authorization: Bearer your-api-key" \
http://localhost:8080/api/v1/instances/my-model/stop
# Delete instance
curl -X DELETE -H "Authorization: Bearer your-api-key" \
http://localhost:8080/api/v1/instances/my-model
"""

#: The same reference, "Using the Proxy Endpoint", verbatim.
PROXY_EXAMPLE = r"""
# Direct proxy to instance (bypasses OpenAI compatibility layer)
curl -X POST http://localhost:8080/api/v1/instances/my-model/proxy/completion \
-H "Content-Type: application/json" \
-H "Authorization: Bearer your-api-key" \
-d '{
"prompt": "Hello, world!",
"n_predict": 50
}'
"""

KEYS = {"managementApiKeys": ["your-api-key"], "inferenceApiKeys": ["your-inference-api-key"]}
FAKE_SERVER = shlex.join([PY, str(FAKE)])
MGMT = {"Authorization": "Bearer your-api-key"}


def commands(script: str) -> list[tuple[str, list[str]]]:
    """Each curl command of a reference snippet (its comment, its argv), continuation lines joined."""
    out: list[tuple[str, list[str]]] = []
    comment = ""
    for chunk in re.split(r"\n(?=curl |# )", script.strip()):
        if chunk.startswith("#"):
            comment = chunk[1:].strip()
        else:
            out.append((comment, shlex.split(chunk.replace("\\\n", " "))))
    return out


async def run_curl(argv: list[str], base: str) -> tuple[int, str]:
    """Run one reference curl command against ``base`` (instead of localhost:8080): (status, body)."""
    argv = [a.replace("http://localhost:8080", base) for a in argv]
    if shutil.which("curl"):
        proc = await asyncio.create_subprocess_exec(*argv, "-s", "-w", "\n%{http_code}",
                                                    stdout=asyncio.subprocess.PIPE)
        out, _ = await proc.communicate()
        body, _, code = out.decode().rpartition("\n")
        return int(code), body
    # No curl here: send what the command says (-X, -H, -d, the URL) with aiohttp.
    method, headers, data, url = "GET", {}, None, ""
    it = iter(argv[1:])
    for arg in it:
        if arg == "-X":
            method = next(it)
        elif arg == "-H":
            name, _, value = next(it).partition(": ")
            headers[name] = value
        elif arg == "-d":
            data, method = next(it), method if method != "GET" else "POST"
        else:
            url = arg
    async with aiohttp.ClientSession() as http, http.request(method, url, headers=headers, data=data) as resp:
        return resp.status, await resp.text()


def write_config(folder: Path, body: str, **top: Any) -> Path:
    """A config file: ``top`` keys as JSON-style YAML lines, then ``body`` (YAML text) as written."""
    head = {"startPort": free_port_block(8), "healthCheckTimeout": 15, "stateDir": str(folder / "state"),
            "instances": {"llamaServer": FAKE_SERVER}, **top}
    path = folder / "config.yaml"
    path.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in head.items()) + body)
    return path


def fake_model(name: str, *flags: str) -> str:
    return f"{FAKE_SERVER} --model-name {name} --port ${{PORT}}" + "".join(f" {f}" for f in flags)


async def test_the_reference_lifecycle_runs_verbatim(proxy_factory: Any, tmp_path: Path) -> None:
    path = write_config(tmp_path, f"models:\n  other:\n    cmd: {fake_model('other')}\n", **KEYS)
    proxy = await proxy_factory(load_config(path))
    steps = commands(LIFECYCLE)
    assert [c for c, _ in steps] == ["Create and start instance", "Check instance status", "Get instance logs",
                                     "Use OpenAI-compatible chat completions", "Stop instance", "Delete instance"]
    answers = {}
    for comment, argv in steps:
        answers[comment] = await run_curl(argv, proxy.url)
        if comment == "Check instance status":  # give the start begun by the create its time
            await wait_until(lambda: proxy.swapper.slot("my-model").process.state is ProcessState.READY, 15)
    status, body = answers["Create and start instance"]
    created = json.loads(body)
    assert status == 201 and created["name"] == "my-model" and created["status"] in ("starting", "running")
    assert isinstance(created["created"], int) and created["saved"] is True
    status, body = answers["Check instance status"]
    assert status == 200 and json.loads(body)["name"] == "my-model"
    assert shlex.split(json.loads(body)["options"]["cmd"]) == [  # the entry as written to the file
        PY, str(FAKE), "--model", "/models/llama-2-7b.gguf", "--host", "127.0.0.1", "--port", "${PORT}"]
    status, body = answers["Use OpenAI-compatible chat completions"]
    assert status == 200 and json.loads(body)["model"] == "llama-2-7b.gguf"  # the fake names it after -m's file
    status, body = answers["Stop instance"]
    assert status == 200 and json.loads(body)["status"] == "stopped"
    assert answers["Delete instance"][0] == 204
    assert "my-model" not in proxy.runtime.config.models and "my-model" not in path.read_text()
    # the logs call came after the start: the fake's output, as plain text
    status, logs = answers["Get instance logs"]
    assert status == 200 and "fake-llama: starting" in logs
    # keys are llamactl's: management for the instance API, inference for /v1
    status, _ = await run_curl(["curl", "-H", "Authorization: Bearer your-inference-api-key",
                                "http://localhost:8080/api/v1/instances"], proxy.url)
    assert status == 401


async def test_the_reference_proxy_example_strips_the_prefix(proxy_factory: Any, tmp_path: Path) -> None:
    path = write_config(tmp_path, f"models:\n  my-model:\n    cmd: {fake_model('my-model')}\n", **KEYS)
    proxy = await proxy_factory(load_config(path))
    [(_, argv)] = commands(PROXY_EXAMPLE)
    status, body = await run_curl(argv, proxy.url)
    assert status == 503 and json.loads(body) == {"error": "instance 'my-model' is not running"}
    assert proxy.pid("my-model") is None  # the proxy never starts it
    async with proxy.http.post(proxy.url + "/api/v1/instances/my-model/start", headers=MGMT) as resp:
        assert resp.status == 200 and (await resp.json())["status"] == "starting"
    await wait_until(lambda: proxy.swapper.slot("my-model").process.state is ProcessState.READY, 15)
    status, body = await run_curl(argv, proxy.url)
    assert status == 200 and json.loads(body)["content"].startswith("tok0")
    async with proxy.http.get(proxy.url + "/api/v1/instances/my-model/proxy/debug/echo?x=1", headers=MGMT) as resp:
        assert (await resp.json())["path"] == "/debug/echo?x=1"  # the prefix stripped, the query kept


COMMENTED = """\
# operator's notes: this comment must survive API edits
models:
  # the running one
  keep:
    cmd: {keep}   # do not touch
    ttl: 0
  # a second one, changed through the API below
  change:
    cmd: {change}
    ttl: 300  # seconds

# the end of the file
"""


async def test_an_api_edit_keeps_the_comments_and_the_running_model(proxy_factory: Any, tmp_path: Path) -> None:
    path = write_config(tmp_path, COMMENTED.format(keep=fake_model("keep"), change=fake_model("change")),
                        groups={"all": {"members": ["keep", "change"], "swap": False}})
    original = path.read_text()
    proxy = await proxy_factory(load_config(path))
    assert (await proxy.chat("keep"))[0] == 200
    pid = proxy.pid("keep")
    async with proxy.http.put(proxy.url + "/api/v1/instances/change", json={"ttl": 60, "description": "via API"}) as r:
        body = await r.json()
        assert r.status == 200, body
        version = r.headers["ETag"].strip('"')
    assert body["config_version"] == version and body["file"] == str(path)
    text = path.read_text()
    assert text == original.replace("ttl: 300  # seconds", "ttl: 60  # seconds\n    description: via API")
    assert proxy.runtime.config.models["change"].ttl == 60
    assert proxy.pid("keep") == pid  # unchanged: the same process, never restarted
    assert proxy.runtime.reload.report["kept"] == ["keep", "change"]  # ttl and description need no restart
    # a new model, then its removal: each time only its own lines, the rest as written
    async with proxy.http.post(proxy.url + "/api/v1/instances/added?start=0",
                               json={"cmd": fake_model("added"), "aliases": ["plus"]}) as r:
        assert r.status == 201 and (await r.json())["status"] == "stopped"
    assert path.read_text().startswith(text.rsplit("\n# the end", 1)[0])
    assert proxy.runtime.config.resolve("plus") == "added"
    async with proxy.http.delete(proxy.url + "/api/v1/instances/added") as r:
        assert r.status == 204
    assert path.read_text() == text and proxy.pid("keep") == pid


async def test_a_write_against_a_stale_version_is_409(proxy_factory: Any, tmp_path: Path) -> None:
    path = write_config(tmp_path, COMMENTED.format(keep=fake_model("keep"), change=fake_model("change")))
    proxy = await proxy_factory(load_config(path))
    async with proxy.http.get(proxy.url + "/api/v1/instances/change") as r:
        version = r.headers["ETag"]
    async with proxy.http.get(proxy.url + "/api/config") as r:
        view = await r.json()
    assert view["version"] == version.strip('"') and view["files"][0]["text"] == path.read_text()
    edited_on_disk = path.read_text() + "# an edit made in an editor meanwhile\n"
    path.write_text(edited_on_disk)
    async with proxy.http.put(proxy.url + "/api/v1/instances/change", json={"ttl": 1},
                              headers={"If-Match": version}) as r:
        body = await r.json()
        assert r.status == 409 and "changed since version" in body["error"], body
    async with proxy.http.put(proxy.url + "/api/config", json={"path": str(path), "text": "models: {}\n",
                                                               "version": view["version"]}) as r:
        body = await r.json()
        assert r.status == 409 and body["error"]["code"] == "config_changed", body
    assert path.read_text() == edited_on_disk  # nothing written over it
    assert proxy.runtime.config.models["change"].ttl == 300
    # made against the file as it is now (no version named, as llamactl's clients send): applied on top of it
    async with proxy.http.put(proxy.url + "/api/v1/instances/change", json={"ttl": 1}) as r:
        assert r.status == 200
    assert path.read_text() == edited_on_disk.replace("ttl: 300", "ttl: 1")


async def test_an_invalid_change_is_refused_with_the_reload_message(proxy_factory: Any, tmp_path: Path) -> None:
    path = write_config(tmp_path, COMMENTED.format(keep=fake_model("keep"), change=fake_model("change")))
    original = path.read_text()
    proxy = await proxy_factory(load_config(path))
    async with proxy.http.put(proxy.url + "/api/v1/instances/change", json={"ttl": -5, "unloadTimeout": "x"}) as r:
        body = await r.json()
    assert r.status == 400, body
    problems = {p["key_path"]: p for p in body["problems"]}
    assert set(problems) == {"models.change.ttl", "models.change.unloadTimeout"}
    assert problems["models.change.ttl"]["message"] == "Input should be greater than or equal to -1 (got -5)"
    lines = path.read_text().splitlines()
    assert problems["models.change.ttl"]["file"] == str(path)
    assert problems["models.change.ttl"]["line"] == lines.index("    ttl: 300  # seconds") + 1
    assert f"{path}:" in body["error"]  # FILE:LINE: key: message, as a reload logs it
    async with proxy.http.put(proxy.url + "/api/v1/instances/change", json={"ttll": 1}) as r:
        body = await r.json()  # not taken for a llama-server option: a typo of a model key
    assert r.status == 400 and body["error"].startswith("unknown key 'ttll'; did you mean 'ttl'?"), body
    assert path.read_text() == original and proxy.runtime.config.models["change"].ttl == 300
    # the config view: the same messages, with their lines
    async with proxy.http.get(proxy.url + "/api/config") as r:
        version = (await r.json())["version"]
    bad = original.replace("ttl: 0", "ttl: 0\n    ttll: 5")
    async with proxy.http.put(proxy.url + "/api/config", json={"path": str(path), "text": bad,
                                                               "version": version}) as r:
        body = await r.json()
    assert r.status == 400 and body["error"]["problems"] == [
        {"file": str(path), "line": bad.splitlines().index("    ttll: 5") + 1, "key_path": "models.keep.ttll",
         "message": "unknown key 'ttll'; did you mean 'ttl'?"}]
    good = original.replace("ttl: 0", "ttl: 5")
    async with proxy.http.put(proxy.url + "/api/config", json={"path": str(path), "text": good,
                                                               "version": version}) as r:
        body = await r.json()
    assert r.status == 200 and body["saved"] and body["report"]["kept"] == ["keep", "change"], body
    assert path.read_text() == good and proxy.runtime.config.models["keep"].ttl == 5


async def test_a_read_only_file_refuses_or_keeps_the_change_in_memory(proxy_factory: Any, tmp_path: Path) -> None:
    path = write_config(tmp_path, f"models:\n  a:\n    cmd: {fake_model('a')}\n")
    original = path.read_text()
    path.chmod(0o444)
    proxy = await proxy_factory(load_config(path))
    async with proxy.http.post(proxy.url + "/api/v1/instances/b?start=0", json={"cmd": fake_model("b")}) as r:
        body = await r.json()
    assert r.status == 403 and "read-only" in body["error"] and "instances.onReadOnly: memory" in body["error"]
    assert "b" not in proxy.runtime.config.models
    async with proxy.http.get(proxy.url + "/api/config") as r:
        [view] = (await r.json())["files"]
    assert view["writable"] is False and "read-only" in view["read_only_reason"]
    # asked for: applied in memory only, and said so
    path.chmod(0o644)
    path.write_text(original.replace("instances: {", 'instances: {"onReadOnly": "memory", '))
    path.chmod(0o444)
    assert await proxy.runtime.reloader.reload()
    memory_only = path.read_text()
    async with proxy.http.post(proxy.url + "/api/v1/instances/b?start=0", json={"cmd": fake_model("b")}) as r:
        body = await r.json()
    assert r.status == 201 and body["saved"] is False and "kept in memory only" in body["warning"], body
    assert "b" in proxy.runtime.config.models and path.read_text() == memory_only
    assert (await proxy.chat("b"))[0] == 200
    async with proxy.http.get(proxy.url + "/api/config") as r:
        [view] = (await r.json())["files"]
    assert view["unsaved"] is True and "  b:" in view["text"]
    # the file is the truth: a reload from it drops what was kept in memory
    assert await proxy.runtime.reloader.reload()
    assert "b" not in proxy.runtime.config.models
    # and an operator may turn changes off altogether
    path.chmod(0o644)
    path.write_text(original.replace("instances: {", 'instances: {"edits": false, '))
    assert await proxy.runtime.reloader.reload()
    async with proxy.http.post(proxy.url + "/api/v1/instances/b", json={"cmd": fake_model("b")}) as r:
        assert r.status == 403 and "instances.edits: false" in (await r.json())["error"]
    async with proxy.http.get(proxy.url + "/api/v1/instances/a") as r:
        assert r.status == 200  # reading is still allowed


async def test_with_a_config_dir_changes_go_to_the_file_of_the_model(proxy_factory: Any, tmp_path: Path) -> None:
    conf = tmp_path / "conf.d"
    conf.mkdir()
    base = write_config(tmp_path, "")
    (conf / "10-base.yaml").write_text(base.read_text())
    base.unlink()
    (conf / "20-chat.yaml").write_text(f"models:\n  # chat\n  chat:\n    cmd: {fake_model('chat')}\n")
    proxy = await proxy_factory(load_config(None, config_dir=str(conf)))
    async with proxy.http.post(proxy.url + "/api/v1/instances/new?start=0", json={"cmd": fake_model("new")}) as r:
        body = await r.json()
    assert r.status == 201 and body["file"] == str(conf / "instances.yaml"), body
    assert (conf / "instances.yaml").read_text().startswith("models:\n  new:\n")
    async with proxy.http.put(proxy.url + "/api/v1/instances/chat", json={"ttl": 9}) as r:
        assert r.status == 200 and (await r.json())["file"] == str(conf / "20-chat.yaml")
    assert "ttl: 9" in (conf / "20-chat.yaml").read_text() and "# chat" in (conf / "20-chat.yaml").read_text()
    async with proxy.http.post(proxy.url + "/api/v1/instances/chat", json={"cmd": fake_model("chat")}) as r:
        assert r.status == 409 and (await r.json()) == {"error": "instance 'chat' already exists"}
    assert set(proxy.runtime.config.models) == {"chat", "new"}
    # instances.file: created models go to that file of the directory instead
    (conf / "10-base.yaml").write_text((conf / "10-base.yaml").read_text().replace(
        "instances: {", 'instances: {"file": "50-mine.yaml", '))
    assert await proxy.runtime.reloader.reload()
    async with proxy.http.post(proxy.url + "/api/v1/instances/mine?start=0", json={"cmd": fake_model("m")}) as r:
        assert r.status == 201 and (await r.json())["file"] == str(conf / "50-mine.yaml")
    assert set(proxy.runtime.config.models) == {"chat", "new", "mine"}


async def test_llamactl_routes_answer_in_its_shapes(proxy_factory: Any, tmp_path: Path) -> None:
    path = write_config(tmp_path, f"models:\n  a:\n    cmd: {fake_model('a', '--exit-during-startup', '3')}\n")
    proxy = await proxy_factory(load_config(path))
    url = proxy.url + "/api/v1"
    for method, route, status in [("GET", "/instances/nope", 404), ("POST", "/instances/nope/start", 404),
                                  ("DELETE", "/instances/nope", 404), ("GET", "/nothing", 404),
                                  ("POST", "/instances/a", 409), ("POST", "/instances/b%20c", 400),
                                  ("GET", "/instances/a/logs?lines=x", 400), ("PUT", "/instances/a", 400),
                                  ("POST", "/instances/z", 400)]:
        async with proxy.http.request(method, url + route, json=None if method != "POST" else {"x": 1}) as r:
            body = await r.json()
            assert r.status == status and isinstance(body["error"], str), (method, route, body)
    async with proxy.http.get(url + "/version") as r:
        assert r.status == 200 and (await r.text()).startswith("Version: ")
    async with proxy.http.post(url + "/instances/a/start") as r:
        assert (await r.json())["status"] == "starting"
    await wait_until(lambda: proxy.swapper.slot("a").process.state is ProcessState.FAILED, 15)
    async with proxy.http.get(url + "/instances") as r:
        [entry] = await r.json()
    assert entry["name"] == "a" and entry["status"] == "failed" and "exited with code 3" in entry["error"]
    async with proxy.http.get(url + "/instances/a/logs?lines=1") as r:
        assert len((await r.text()).splitlines()) == 1
    # a body in llamactl's newer shape; llama-server options become the command's flags
    async with proxy.http.post(url + "/instances/gpu?start=0", json={
            "backend_type": "llama_cpp", "backend_options": {"model": "/m.gguf", "ctx_size": 4096, "port": 1},
            "idle_timeout": 2}) as r:
        body = await r.json()
        assert r.status == 201 and body["notices"] == ["backend_options.port ignored: swapproxy runs each model "
                                                       "on 127.0.0.1 at its ${PORT}"], body
    spec = proxy.runtime.config.models["gpu"]
    assert spec.cmd[2:] == ("--model", "/m.gguf", "--ctx-size", "4096", "--host", "127.0.0.1", "--port",
                            str(spec.port)) and spec.ttl == 120
    async with proxy.http.put(url + "/instances/gpu", json={"ctx_size": 8192, "jinja": True}) as r:
        assert r.status == 200
    assert proxy.runtime.config.models["gpu"].cmd[4:7] == ("--ctx-size", "8192", "--jinja")
    # a page of another site may not create, change or delete
    async with proxy.http.post(url + "/instances/evil", json={"cmd": "x"},
                               headers={"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}) as r:
        assert r.status == 403 and "another site" in (await r.json())["error"]
    assert "evil" not in path.read_text()


async def test_server_routes_run_the_configured_binary(proxy_factory: Any, tmp_path: Path) -> None:
    path = write_config(tmp_path, f"models:\n  a:\n    cmd: {fake_model('a')}\n")
    proxy = await proxy_factory(load_config(path))
    for what, expected in (("help", "usage: fake_llama_server.py"), ("version", "version: 0 (fake-llama"),
                           ("devices", "Available devices:")):
        async with proxy.http.get(proxy.url + f"/api/v1/server/{what}") as r:
            assert r.status == 200 and r.content_type == "text/plain" and expected in await r.text(), what
    missing = write_config(tmp_path, f"models:\n  a:\n    cmd: {fake_model('a')}\n",
                           instances={"llamaServer": str(tmp_path / "no-such-llama-server")})
    proxy = await proxy_factory(load_config(missing))
    async with proxy.http.get(proxy.url + "/api/v1/server/version") as r:
        body = await r.json()
        assert r.status == 500 and "cannot run" in body["error"] and "instances.llamaServer" in body["error"]


async def test_delete_stops_the_model_after_its_requests(proxy_factory: Any, tmp_path: Path) -> None:
    path = write_config(tmp_path, f"models:\n  a:\n    cmd: {fake_model('a')}\n  b:\n    cmd: {fake_model('b')}\n")
    proxy = await proxy_factory(load_config(path))
    assert (await proxy.chat("b"))[0] == 200
    pid = proxy.pid("b")
    assert pid is not None
    async with proxy.http.delete(proxy.url + "/api/v1/instances/b") as r:
        assert r.status == 204 and r.headers["ETag"]
    assert pid_gone(pid)  # the DELETE answered once it had stopped
    assert list(proxy.runtime.config.models) == ["a"] and "  b:" not in path.read_text()
    async with proxy.http.delete(proxy.url + "/api/v1/instances/a") as r:  # the last model: the config needs one
        body = await r.json()
        assert r.status == 400 and any(p["message"] == "no models are defined" for p in body["problems"]), body
    assert os.path.exists(path) and "  a:" in path.read_text()


def test_the_cli_serves_the_api_and_edits_its_file(tmp_path: Path) -> None:
    """The real process: `swapproxy -c FILE`; a model created through the API lands in FILE, and
    each instance's ``created`` is the same after a restart (kept in stateDir)."""
    doc = {"healthCheckTimeout": 15, "stateDir": str(tmp_path / "state"), "startPort": free_port_block(4),
           "instances": {"llamaServer": FAKE_SERVER}, "models": {"a": {"cmd": fake_model("a")}}}

    def instances(port: int) -> dict[str, int]:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/instances", timeout=30) as reply:
            return {entry["name"]: entry["created"] for entry in json.loads(reply.read())}

    with running_cli(doc, tmp_path) as cli:
        request = urllib.request.Request(f"http://127.0.0.1:{cli.port}/api/v1/instances/b?start=0", method="POST",
                                         data=json.dumps({"cmd": fake_model("b")}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as reply:
            assert reply.status == 201 and json.loads(reply.read())["status"] == "stopped"
        created = instances(cli.port)
    assert list(load_config(tmp_path / "swapproxy.yaml").models) == ["a", "b"]  # a JSON file: still loads
    assert created["b"] >= created["a"] > 0
    # the times are in stateDir: made a day older there, the next run must report those
    times = tmp_path / "state" / "created.json"
    assert {k: int(v) for k, v in json.loads(times.read_text()).items()} == created
    times.write_text(json.dumps({"a": created["a"] - 86400, "b": created["b"] - 86400, "gone": 1}))
    with running_cli(yaml.safe_load((tmp_path / "swapproxy.yaml").read_text()), tmp_path) as cli:
        assert instances(cli.port) == {"a": created["a"] - 86400, "b": created["b"] - 86400}
    assert "gone" not in json.loads(times.read_text())  # a model no longer in the config is forgotten


async def test_a_running_model_whose_command_changed_is_restarted(proxy_factory: Any, tmp_path: Path) -> None:
    """As llamactl does on update; its requests in flight finish first (the scheduler's replacement)."""
    path = write_config(tmp_path, f"models:\n  a:\n    cmd: {fake_model('a')}\n")
    proxy = await proxy_factory(load_config(path))
    assert (await proxy.chat("a"))[0] == 200
    old = proxy.pid("a")
    async with proxy.http.put(proxy.url + "/api/v1/instances/a", json={"cmd": fake_model("a", "--tokens", "2")}) as r:
        body = await r.json()
    assert r.status == 200 and body["status"] == "restarting" and proxy.runtime.reload.report["changed"] == ["a"]
    await wait_until(lambda: proxy.pid("a") not in (None, old) and
                     proxy.swapper.slot("a").process.state is ProcessState.READY, 15, "the new process")
    assert pid_gone(old)
    status, answer = await proxy.chat("a")
    assert status == 200 and answer["choices"][0]["message"]["content"] == "tok0 tok1 "
