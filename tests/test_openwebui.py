"""A real Open WebUI (0.12.4) in front of swapproxy, driven through Open WebUI's own HTTP API.

Marker ``openwebui``: left out of the README's test command; ``.ci/run`` installs Open
WebUI once (``scripts/install_openwebui.py``: a venv cached in ``~/.cache/swapproxy/``)
and runs these. A missing install fails them, never skips.

One Open WebUI and one swapproxy (a child process, on the fake llama-server) serve the
whole module: Open WebUI takes about 20 s to start. Its connection to swapproxy is of
type *llama.cpp*, as a user would set it up; it runs offline (no Ollama, no embedding
model, no telemetry, no update check) from a temporary data folder. Checked: the model
list with what the picker shows (parameters, quantisation, size) and the loaded state; a
streamed chat on model a, then b (a swap), then a; the picker's Eject (Open WebUI's
``POST /api/models/unload``), also while a model generates. One test opens Open WebUI's page
in headless chromium (as the UI test does) to see the picker itself.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from support import CACHE, POLL_INTERVAL, PY, FAKE, free_port_block, running_cli, wait_until, write_gguf

pytestmark = pytest.mark.openwebui

OPEN_WEBUI = CACHE / "openwebui" / "venv" / "bin" / "open-webui"
INSTALL = "python3 scripts/install_openwebui.py"
START_TIMEOUT = 240.0  # its first start runs its database migrations
TIMEOUT = 30.0
ADMIN = {"name": "admin", "email": "admin@example.com", "password": "swapproxy-e2e-Passw0rd"}


@dataclass
class Stack:
    webui: str  # Open WebUI's base URL
    proxy: str  # swapproxy's
    headers: dict[str, str]  # the admin's bearer token


def fake_model(name: str, *flags: str) -> dict[str, Any]:
    return {"cmd": " ".join([PY, str(FAKE), "--port", "${PORT}", "--model-name", name, *flags])}


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + START_TIMEOUT
    while True:
        assert proc.poll() is None, f"Open WebUI exited ({proc.returncode}):\n{log.read_text()[-4000:]}"
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as reply:
                if reply.status == 200:
                    return
        except (OSError, urllib.error.URLError):
            pass
        assert time.monotonic() < deadline, f"Open WebUI not up after {START_TIMEOUT:g}s:\n{log.read_text()[-4000:]}"
        time.sleep(POLL_INTERVAL * 40)  # a poll of /health under the deadline above


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if not OPEN_WEBUI.exists():
        pytest.fail(f"Open WebUI is not installed at {OPEN_WEBUI}; run: {INSTALL}")
    folder = tmp_path_factory.mktemp("openwebui")
    a_file = write_gguf(folder / "a-q4_k_m.gguf", context=4096, file_type=15, size_label="4K")
    b_file = write_gguf(folder / "b-q8_0.gguf", context=8192, file_type=7)
    doc = {
        "startPort": free_port_block(4), "healthCheckTimeout": 30, "stateDir": str(folder / "state"),
        "models": {
            "a": fake_model("a", "-m", str(a_file), "-c", "2048", "--tokens", "8"),
            "b": fake_model("b", "-m", str(b_file), "--tokens", "6"),
            "slow": fake_model("slow", "--tokens", "120", "--token-rate", "20"),  # 6 s of generation
        },
    }
    with running_cli(doc, folder) as proxy:
        proxy_url = f"http://127.0.0.1:{proxy.port}"
        port = free_port_block(1)
        env = {
            **os.environ,
            "DATA_DIR": str(folder / "data"),
            "WEBUI_SECRET_KEY": "swapproxy-e2e-secret-key-0123456789abcdef",
            "ENABLE_OLLAMA_API": "false",
            "OFFLINE_MODE": "true",  # no update check, no Hugging Face downloads
            "HF_HUB_OFFLINE": "1",
            "RAG_EMBEDDING_MODEL": "",
            "BYPASS_EMBEDDING_AND_RETRIEVAL": "true",
            "SCARF_NO_ANALYTICS": "true", "DO_NOT_TRACK": "true", "ANONYMIZED_TELEMETRY": "false",
            # the connection, as an admin would add it: swapproxy's /v1, type llama.cpp
            "OPENAI_API_BASE_URL": proxy_url + "/v1",
            "OPENAI_API_KEY": "sk-anything",
            "OPENAI_API_CONFIGS": json.dumps({"0": {"provider": "llama.cpp"}}),
        }
        log = folder / "open-webui.log"
        with open(log, "wb") as out:
            webui = subprocess.Popen([str(OPEN_WEBUI), "serve", "--host", "127.0.0.1", "--port", str(port)],
                                     cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_healthy(url, webui, log)
            import urllib.request

            signup = urllib.request.Request(url + "/api/v1/auths/signup", data=json.dumps(ADMIN).encode(),
                                            headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(signup, timeout=TIMEOUT) as reply:  # the first user is the admin
                answer = json.load(reply)
            assert answer["role"] == "admin", answer
            yield Stack(url, proxy_url, {"Authorization": f"Bearer {answer['token']}"})
        finally:
            os.killpg(webui.pid, signal.SIGTERM)  # its own session: the group is its and its children's
            try:
                webui.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(webui.pid, signal.SIGKILL)
                webui.wait()


async def models(http: aiohttp.ClientSession, stack: Stack) -> dict[str, Any]:
    """Open WebUI's model list (fresh, not its 1 s cache), by id."""
    async with http.get(stack.webui + "/api/models?refresh=true", headers=stack.headers) as resp:
        assert resp.status == 200, await resp.text()
        return {m["id"]: m for m in (await resp.json())["data"]}


async def running(http: aiohttp.ClientSession, stack: Stack) -> list[str]:
    async with http.get(stack.proxy + "/running") as resp:
        return (await resp.json())["running"]  # type: ignore[no-any-return]


async def chat(http: aiohttp.ClientSession, stack: Stack, model: str) -> str:
    """A streamed chat through Open WebUI; the text it streamed."""
    body = {"model": model, "messages": [{"role": "user", "content": "hello"}], "stream": True}
    async with http.post(stack.webui + "/api/chat/completions", json=body, headers=stack.headers) as resp:
        assert resp.status == 200, await resp.text()
        raw = (await asyncio.wait_for(resp.read(), TIMEOUT)).decode()
    assert raw.rstrip().endswith("data: [DONE]"), raw[-500:]
    events = [json.loads(line[6:]) for line in raw.split("\n") if line.startswith("data: {")]
    return "".join(c["delta"].get("content") or "" for e in events for c in e.get("choices", []))


async def unload(http: aiohttp.ClientSession, stack: Stack, model: str) -> tuple[int, Any, float]:
    """The picker's Eject: Open WebUI's POST /api/models/unload; status, body, seconds it took."""
    began = time.monotonic()
    async with http.post(stack.webui + "/api/models/unload", json={"model": model}, headers=stack.headers) as resp:
        return resp.status, await resp.json(content_type=None), time.monotonic() - began


async def test_the_model_list_carries_what_the_picker_shows(stack: Stack) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as http:
        async def described() -> bool:  # swapproxy reads the GGUF files in a helper process after start
            listed = await models(http, stack)
            return "params_string" in listed["a"] and "quantization" in listed["b"]

        await wait_until(described, TIMEOUT, "the GGUF facts in Open WebUI's model list")
        listed = await models(http, stack)
    assert set(listed) == {"a", "b", "slow"}
    a, b = listed["a"], listed["b"]
    assert a["provider"] == b["provider"] == "llama.cpp"
    # ModelItem.svelte: params_string ?? details.parameter_size; quantization.name ?? ...; size_bytes ?? size
    assert (a["params_string"], a["quantization"]["name"], a["size_bytes"]) == ("4K", "Q4_K_M", 16384)
    assert (b["params_string"], b["quantization"]["name"], b["size_bytes"]) == ("4K", "Q8_0", 16384)
    assert a["meta"]["n_ctx_train"] == 4096 and b["meta"]["n_ctx_train"] == 8192
    assert "params_string" not in listed["slow"]  # no -m: nothing known, nothing shown
    assert a["loaded"] is False and b["loaded"] is False


async def test_the_picker_shows_parameters_and_quantisation(stack: Stack, page: Any) -> None:
    """Open WebUI's own page, in headless chromium: its model picker, as a user opens it."""
    from playwright.async_api import Error as PlaywrightError, expect

    token = stack.headers["Authorization"].removeprefix("Bearer ")
    await page.goto(stack.webui + "/auth")
    await page.evaluate("token => localStorage.setItem('token', token)", token)  # signed in as the admin
    await page.goto(stack.webui + "/")
    try:  # the release notes Open WebUI shows once per version
        await page.get_by_text("Okay, Let's Go!").click(timeout=10_000)
    except PlaywrightError:
        pass
    await page.locator("[aria-label^='Selected model']").first.click(timeout=TIMEOUT * 1000)

    def option(model: str) -> Any:
        return page.locator(f"#model-selector-list [data-value='{model}']")

    await expect(option("a")).to_contain_text("4K", timeout=TIMEOUT * 1000)  # params_string
    await expect(option("b")).to_contain_text("4K")
    await expect(option("slow")).not_to_contain_text("4K")  # nothing known, nothing shown
    await option("a").get_by_text("4K").hover()  # its tooltip: quantization.name and size_bytes
    await expect(page.locator("[data-tippy-root]")).to_contain_text("Q4_K_M (0.0GB)")


async def test_a_streamed_chat_on_a_then_b_then_a(stack: Stack) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as http:
        assert await chat(http, stack, "a") == "tok0 tok1 tok2 tok3 tok4 tok5 tok6 tok7 "
        assert await running(http, stack) == ["a"]
        assert await chat(http, stack, "b") == "tok0 tok1 tok2 tok3 tok4 tok5 "  # a swap
        assert await running(http, stack) == ["b"]
        listed = await models(http, stack)
        assert listed["b"]["loaded"] is True and listed["a"]["loaded"] is False
        assert await chat(http, stack, "a") == "tok0 tok1 tok2 tok3 tok4 tok5 tok6 tok7 "  # and back
        assert await running(http, stack) == ["a"]

        async def context_shown() -> bool:  # from llama-server's /props, once loaded
            return (await models(http, stack))["a"]["meta"].get("n_ctx") == 2048

        await wait_until(context_shown, TIMEOUT, "a's context size in the list")
        listed = await models(http, stack)
    assert listed["a"]["loaded"] is True and listed["b"]["loaded"] is False


async def test_eject(stack: Stack) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as http:
        await chat(http, stack, "b")
        assert (await models(http, stack))["b"]["loaded"] is True
        status, body, _ = await unload(http, stack, "b")
        assert (status, body) == (200, {"success": True})

        async def unloaded() -> bool:
            return await running(http, stack) == [] and (await models(http, stack))["b"]["loaded"] is False

        await wait_until(unloaded, TIMEOUT, "b unloaded, and shown so")


async def test_eject_while_the_model_generates(stack: Stack) -> None:
    """Open WebUI's unload call gives up after 30 s: swapproxy answers at once, lets the generation
    finish, then unloads; Open WebUI's own proxy of /models/sse shows unloading, then unloaded."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
        async with http.get(stack.webui + "/openai/models/0/sse", headers=stack.headers) as sse:
            assert sse.status == 200
            body = {"model": "slow", "messages": [{"role": "user", "content": "hello"}], "stream": True}
            async with http.post(stack.webui + "/api/chat/completions", json=body, headers=stack.headers) as gen:
                assert gen.status == 200
                first = await asyncio.wait_for(gen.content.readuntil(b"\n\n"), TIMEOUT)
                assert b"tok0" in first
                status, answer, took = await unload(http, stack, "slow")
                assert (status, answer) == (200, {"success": True}) and took < 3  # not after the generation
                assert await running(http, stack) == ["slow"]  # still generating
                rest = (await asyncio.wait_for(gen.content.read(), TIMEOUT)).decode()
            text = first.decode() + rest
            assert "tok119 " in text and text.rstrip().endswith("data: [DONE]")  # finished, not cut

            statuses: list[str] = []

            async def until_unloaded() -> None:
                while "unloaded" not in statuses:
                    line = await sse.content.readline()
                    assert line, "the event stream ended"
                    if line.startswith(b"data: "):
                        event = json.loads(line[6:])
                        if event.get("model") == "slow":
                            statuses.append(event["data"]["status"])

            await asyncio.wait_for(until_unloaded(), TIMEOUT)
        assert statuses[-2:] == ["unloading", "unloaded"]
        assert await running(http, stack) == []
        assert (await models(http, stack))["slow"]["loaded"] is False
