"""API keys in two tiers (inference / management), llama-swap's apiKeys for both, never leaked."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path


from support import Proxy, fake_cmd, free_port_block, make_config, start_cli

BOTH, INF, MGMT = "sk-both-1234", "sk-inference-5678", "sk-management-9012"


def keyed_config():  # type: ignore[no-untyped-def]
    return make_config(
        {"m": {"cmd": fake_cmd("--model-name", "m")}},
        apiKeys=[BOTH], inferenceApiKeys=[INF], managementApiKeys=[MGMT],
    )


async def status(proxy: Proxy, method: str, path: str, key: str | None = None, how: str = "bearer",
                 **kw: object) -> int:
    headers = {}
    if key is not None:
        if how == "bearer":
            headers["Authorization"] = f"Bearer {key}"
        elif how == "x-api-key":
            headers["x-api-key"] = key
        else:
            headers["Authorization"] = "Basic " + base64.b64encode(f"anyone:{key}".encode()).decode()
    async with proxy.http.request(method, proxy.url + path, headers=headers, **kw) as resp:
        body = await resp.read()
        if resp.status == 401:
            assert b'"invalid_api_key"' in body  # the envelope, not a bare 401
        return resp.status


async def test_tiers(proxy_factory) -> None:
    proxy = await proxy_factory(keyed_config())
    chat = {"json": {"model": "m", "messages": []}}
    # open without a key
    assert await status(proxy, "GET", "/health") == 200
    assert await status(proxy, "GET", "/health/liveness") == 200
    # inference routes: inference keys and apiKeys, not management keys
    assert await status(proxy, "POST", "/v1/chat/completions", None, **chat) == 401
    assert await status(proxy, "POST", "/v1/chat/completions", MGMT, **chat) == 401
    assert await status(proxy, "POST", "/v1/chat/completions", INF, **chat) == 200
    assert await status(proxy, "POST", "/v1/chat/completions", BOTH, "x-api-key", **chat) == 200
    assert await status(proxy, "GET", "/v1/models", INF, "basic") == 200
    assert await status(proxy, "GET", "/upstream/m/slots", INF) == 200  # native passthrough
    assert await status(proxy, "GET", "/upstream/m/slots", MGMT) == 401
    # management routes: management keys and apiKeys, not inference keys
    for method, path in (("GET", "/running"), ("GET", "/metrics"), ("GET", "/logs"), ("GET", "/info"),
                         ("GET", "/upstream/m/load"), ("DELETE", "/upstream/m"), ("GET", "/ui")):
        assert await status(proxy, method, path, INF) == 401, path
        assert await status(proxy, method, path, None) == 401, path
        assert await status(proxy, method, path, MGMT) == 200, path
    assert await status(proxy, "GET", "/running", BOTH, "basic") == 200
    assert await status(proxy, "POST", "/models/load", INF, json={"model": "m"}) == 401
    assert await status(proxy, "POST", "/models/load", MGMT, json={"model": "m"}) == 200


async def test_passthrough_below_a_model_takes_inference_keys(proxy_factory) -> None:
    """DELETE /upstream/m/<path> and GET /upstream/m/<path>/load are passthroughs: inference tier (item 6)."""
    proxy = await proxy_factory(keyed_config())
    for method, path in (("DELETE", "/upstream/m/debug/echo"), ("GET", "/upstream/m/debug/echo/load")):
        assert await status(proxy, method, path, INF) == 200, path  # reaches the upstream's own route
        assert await status(proxy, method, path, BOTH) == 200, path
        assert await status(proxy, method, path, MGMT) == 401, path
        assert await status(proxy, method, path, None) == 401, path
    async with proxy.http.delete(proxy.url + "/upstream/m/debug/echo", headers={"x-api-key": INF}) as resp:
        assert (await resp.json())["method"] == "DELETE"
    # the exact model's own load and unload stay in the management tier
    assert await status(proxy, "GET", "/upstream/m/load", INF) == 401
    assert await status(proxy, "DELETE", "/upstream/m", INF) == 401
    assert await status(proxy, "DELETE", "/upstream/m", MGMT) == 200


async def test_keys_are_never_shown(proxy_factory) -> None:
    proxy = await proxy_factory(keyed_config())
    await status(proxy, "POST", "/v1/chat/completions", INF, json={"model": "m", "messages": []})
    await status(proxy, "POST", "/v1/chat/completions", "sk-wrong-guess", json={"model": "m", "messages": []})
    headers = {"Authorization": f"Bearer {MGMT}"}
    for path in ("/info", "/running?details=1", "/logs", "/ui", "/metrics", "/openapi.json"):
        async with proxy.http.get(proxy.url + path, headers=headers) as resp:
            text = await resp.text()
        for key in (BOTH, INF, MGMT, "sk-wrong-guess"):
            assert key not in text, (path, key)


async def test_listening_beyond_loopback_without_keys_warns(tmp_path: Path) -> None:
    start = free_port_block(2)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"startPort: {start}\nmodels:\n  m:\n    cmd: {fake_cmd()}\n")
    proc = await start_cli(cfg, start + 1, "--listen", f"0.0.0.0:{start + 1}", output=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        lines = []
        while not any("without any apiKeys" in line for line in lines):
            line = await asyncio.wait_for(proc.stdout.readline(), 10)
            assert line, lines
            lines.append(line.decode())
        assert any("WARNING" in line and "0.0.0.0" in line for line in lines), lines
    finally:
        proc.terminate()
        await proc.wait()


async def test_info_says_whether_the_key_also_opens_the_inference_routes(proxy_factory) -> None:
    """The UI's playground asks before calling /v1/ with the browser's credentials (a 401 there
    would make the browser forget them, for the whole UI)."""
    proxy = await proxy_factory(keyed_config())

    async def opens(key: str, how: str = "bearer") -> bool:
        headers = {"Authorization": f"Bearer {key}" if how == "bearer"
                   else "Basic " + base64.b64encode(f"me:{key}".encode()).decode()}
        async with proxy.http.get(proxy.url + "/info", headers=headers) as resp:
            assert resp.status == 200
            return (await resp.json())["key_opens_inference"]

    assert await opens(MGMT) is False and await opens(MGMT, "basic") is False
    assert await opens(BOTH) is True and await opens(BOTH, "basic") is True
    open_proxy = await proxy_factory(make_config({"m": {"cmd": fake_cmd("--model-name", "m")}}))
    async with open_proxy.http.get(open_proxy.url + "/info") as resp:
        assert (await resp.json())["key_opens_inference"] is True  # no key configured: all is open
