"""Browser-facing safety (issue 14, items 1, 2, 2b, 9, 12, 13): what a web page the operator opens can do.

A page of another site may not change state or start work through the operator's browser
(``Sec-Fetch-Site`` / ``Origin`` decide, by route kind, keys or not); a rebinding name in
``Host`` is refused; OPTIONS never reaches a model and answers CORS preflights the way
llama-server does (llama.cpp's own ``test_security.py`` cases, reproduced below); an
absolute-form target starts nothing; HEAD of a GET that acts does nothing; and ``100
Continue`` comes only after the request's key was checked. Non-browser clients (no
``Sec-Fetch-Site``, no ``Origin``) work as before.
"""

from __future__ import annotations

import asyncio
import json
import base64
import re
import socket
from typing import Any

import pytest

from support import Proxy, fake, make_config, models, wait_until
from swapproxy.states import ProcessState
from swapproxy.web.runtime import Kind

EVIL = "http://evil.example"
CHAT = {"model": "a", "messages": [{"role": "user", "content": "hi"}]}
#: What Chromium sends with a cross-site <img src>, <a href> or auto-submitted form.
CROSS_NO_ORIGIN = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "image"}
CROSS_FORM = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate", "Origin": EVIL,
              "Content-Type": "text/plain"}
SAME_ORIGIN = {"Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "cors"}


def port_of(proxy: Proxy) -> int:
    return int(proxy.url.rsplit(":", 1)[1])


async def call(proxy: Proxy, method: str, path: str, headers: dict[str, str] | None = None,
               data: Any = None) -> tuple[int, Any, Any]:
    """(status, headers, JSON body or raw bytes) of one request."""
    async with proxy.http.request(method, proxy.url + path, headers=headers or {}, data=data) as resp:
        raw = await resp.read()
        try:
            body = await resp.json(content_type=None) if raw else None
        except ValueError:
            body = raw
        return resp.status, resp.headers, body


def state(proxy: Proxy, model: str = "a") -> ProcessState:
    return proxy.swapper.slot(model).process.state


async def load(proxy: Proxy, model: str = "a") -> None:
    status, _, body = await call(proxy, "GET", f"/upstream/{model}/load")
    assert status == 200, body


def raw_exchange(port: int, data: bytes, first_only: bool = False) -> bytes:
    """Send ``data`` on a fresh connection; what comes back until the server closes it (or one read)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
            if first_only and b"\r\n\r\n" in received:
                break
        return received


# -- item 1: cross-site requests to routes that act -------------------------------------------------
async def test_cross_site_img_cannot_unload_and_same_origin_can(proxy_factory: Any) -> None:
    proxy = await proxy_factory(make_config(models("a")))
    await load(proxy)
    # <img src=http://127.0.0.1:8080/unload> on another site's page
    status, _, body = await call(proxy, "GET", "/unload", CROSS_NO_ORIGIN)
    assert status == 403 and body["error"]["code"] == "cross_site_request", body
    status, _, body = await call(proxy, "POST", "/api/models/unload", {**CROSS_NO_ORIGIN, "Origin": EVIL})
    assert status == 403, body
    assert state(proxy) is ProcessState.READY
    # the UI (same origin), and a typed address (Sec-Fetch-Site: none), may
    assert (await call(proxy, "GET", "/unload", {"Sec-Fetch-Site": "none"}))[0] == 200
    await wait_until(lambda: state(proxy) is ProcessState.STOPPED, 10, "a stopped")
    await load(proxy)
    status, _, body = await call(proxy, "POST", "/models/unload", {**SAME_ORIGIN, "Origin": proxy.url,
                                                                    "Content-Type": "application/json"},
                                 data=b'{"model": "a"}')
    assert status == 200, body


async def test_cross_site_load_and_options_start_nothing(proxy_factory: Any) -> None:
    proxy = await proxy_factory(make_config(models("a")))
    status, _, body = await call(proxy, "GET", "/upstream/a/load", CROSS_NO_ORIGIN)
    assert status == 403, body
    status, _, body = await call(proxy, "POST", "/models/load", {**CROSS_FORM}, data=b'{"model": "a"}')
    assert status == 403, body
    # a CORS preflight from another site, and a plain OPTIONS, are answered here: nothing starts
    preflight = {"Origin": EVIL, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "content-type"}
    for path in ("/upstream/a/v1/chat/completions", "/upstream/a/", "/v1/chat/completions", "/unload"):
        status, headers, _ = await call(proxy, "OPTIONS", path, preflight)
        assert status == 200 and "Access-Control-Allow-Origin" not in headers, (path, headers)
        status, _, _ = await call(proxy, "OPTIONS", path)
        assert status == 200, path
    assert state(proxy) is ProcessState.STOPPED
    assert proxy.pid("a") is None


async def test_cross_site_text_plain_form_cannot_run_inference_keys_or_not(proxy_factory: Any) -> None:
    key = "sk-browser-1234"
    for top in ({}, {"apiKeys": [key]}):
        proxy = await proxy_factory(make_config(models("a"), **top))
        # an auto-submitted <form enctype=text/plain> whose body is JSON; with keys, the browser
        # replays the Basic credentials it cached for this server
        basic = {"Authorization": "Basic " + base64.b64encode(f"x:{key}".encode()).decode()} if top else {}
        body = json.dumps(CHAT).encode()
        status, _, answer = await call(proxy, "POST", "/v1/chat/completions", {**CROSS_FORM, **basic}, data=body)
        assert status == 403 and answer["error"]["code"] == "cross_site_request", answer
        status, _, answer = await call(proxy, "POST", "/completion", {**CROSS_FORM, **basic}, data=body)
        assert status == 403, answer
        assert proxy.pid("a") is None
        # curl -d and the SDKs (no Sec-Fetch-Site, no Origin) work as before, whatever the content type
        status, _, answer = await call(proxy, "POST", "/v1/chat/completions",
                                       {"Content-Type": "application/x-www-form-urlencoded", **basic}, data=body)
        assert status == 200, answer


async def test_allowed_origins_may_and_send_json(proxy_factory: Any) -> None:
    proxy = await proxy_factory(make_config(models("a"), corsOrigins=["localhost", "https://chat.example.com"]))
    import json
    body = json.dumps(CHAT).encode()
    for origin, site in (("http://localhost:3000", "same-site"), ("https://chat.example.com", "cross-site"),
                         ("http://127.0.0.1:5173", "cross-site")):
        headers = {"Origin": origin, "Sec-Fetch-Site": site, "Sec-Fetch-Mode": "cors"}
        status, answer_headers, answer = await call(proxy, "POST", "/v1/chat/completions",
                                                    {**headers, "Content-Type": "application/json"}, data=body)
        assert status == 200, answer
        assert answer_headers["Access-Control-Allow-Origin"] == origin
        assert answer_headers["Access-Control-Allow-Credentials"] == "true"
        # the same JSON as a form body, even from an allowed origin: refused outright
        status, _, answer = await call(proxy, "POST", "/v1/chat/completions",
                                       {**headers, "Content-Type": "text/plain"}, data=body)
        assert status == 415 and answer["error"]["code"] == "unsupported_media_type", answer
    # an origin not listed gets no CORS header on what it may read, and is refused where it acts
    status, headers, _ = await call(proxy, "GET", "/v1/models", {"Origin": EVIL, "Sec-Fetch-Site": "cross-site"})
    assert status == 200 and "Access-Control-Allow-Origin" not in headers


async def test_every_route_that_acts_refuses_cross_site(proxy_factory: Any) -> None:
    """By route kind, so a route added later is covered as soon as it says what it does."""
    proxy = await proxy_factory(make_config(models("a")))
    acting = sorted({(route.method, route.resource.canonical)
                     for route, tag in proxy.runtime.tags.items() if tag.kind.acts and route.resource is not None})
    assert len(acting) >= 10, acting
    for method, pattern in acting:
        path = re.sub(r"\{(model|tail)[^}]*\}", lambda m: "a" if m[1] == "model" else "v1/chat/completions",
                      pattern)
        for verb in (["GET", "POST", "DELETE", "PUT"] if method == "*" else [method]):
            for headers in (CROSS_NO_ORIGIN, CROSS_FORM, {"Origin": "null"}, {"Origin": EVIL}):
                status, _, body = await call(proxy, verb, path, headers, data=b"{}" if verb != "GET" else None)
                assert status == 403, (verb, path, headers, status, body)
    # a cross-site WebSocket upgrade is refused whatever its route
    status, _, body = await call(proxy, "GET", "/api/events", {"Origin": EVIL, "Connection": "Upgrade",
                                                               "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
                                                               "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
    assert status == 403, body
    assert proxy.pid("a") is None
    assert Kind.WEBSOCKET.acts and not Kind.READ.acts


# -- item 2: DNS rebinding ---------------------------------------------------------------------------
async def test_rebinding_names_are_refused_ip_and_local_names_accepted(proxy_factory: Any) -> None:
    proxy = await proxy_factory(make_config(models("a"), allowedHosts=["llm.example.com", ".lan"]))
    port = port_of(proxy)
    for path, method in (("/logs", "GET"), ("/api/events", "GET"), ("/v1/chat/completions", "POST"),
                         ("/running", "GET")):
        headers = {"Host": f"rebind.evil.example:{port}", **SAME_ORIGIN}
        status, _, body = await call(proxy, method, path, headers, data=b'{"model": "a"}' if method == "POST" else None)
        assert status == 421 and body["error"]["code"] == "host_not_allowed", (path, body)
    assert proxy.pid("a") is None
    hostname = socket.gethostname()
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "192.168.1.20:8080", "10.0.0.1",
                 "host.docker.internal:8080", f"{hostname}:{port}", "app.localhost", f"LLM.example.com:{port}",
                 "box.lan", "llm.example.com."):
        status, _, body = await call(proxy, "GET", "/running", {"Host": host})
        assert status == 200, (host, body)
    for host in ("example.com", "lan", "llm.example.com.evil", "localhost.evil.example"):
        status, _, _ = await call(proxy, "GET", "/health", {"Host": host})
        assert status == 421, host


# -- item 2b: llama.cpp's test_security.py CORS cases, through swapproxy --------------------------------
_PREFLIGHT = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "Authorization"}
KEY = "sk-this-is-the-secret-key"


@pytest.mark.parametrize("origin,header,value", [
    # llama-server's default (--cors-origins '*', credentials): the origin is reflected, whatever it is
    ("localhost", "Access-Control-Allow-Origin", "localhost"),
    ("web.mydomain.fr", "Access-Control-Allow-Origin", "web.mydomain.fr"),
    ("origin", "Access-Control-Allow-Credentials", "true"),
    ("web.mydomain.fr", "Access-Control-Allow-Methods", "GET, POST, DELETE, OPTIONS"),
    ("web.mydomain.fr", "Access-Control-Allow-Headers", "*"),
])
async def test_llama_cpp_cors_options(proxy_factory: Any, origin: str, header: str, value: str) -> None:
    # llama.cpp runs these with an API key configured: a preflight needs none
    proxy = await proxy_factory(make_config(models("a"), apiKeys=[KEY], corsOrigins="*"))
    status, headers, _ = await call(proxy, "OPTIONS", "/completions", {"Origin": origin, **_PREFLIGHT})
    assert status == 200
    assert headers.get(header) == value
    assert proxy.pid("a") is None


@pytest.mark.parametrize("origin", ["http://localhost", "http://localhost:8080", "http://127.0.0.1",
                                    "http://127.0.0.1:3000", "http://[::1]", "http://[::1]:3000",
                                    "https://localhost:3000", "http://app.localhost:5173"])
async def test_llama_cpp_cors_localhost_reflects(proxy_factory: Any, origin: str) -> None:
    proxy = await proxy_factory(make_config(models("a"), corsOrigins="localhost"))
    status, headers, _ = await call(proxy, "OPTIONS", "/completions", {"Origin": origin, **_PREFLIGHT})
    assert status == 200
    assert headers["Access-Control-Allow-Origin"] == origin


@pytest.mark.parametrize("origin", ["http://web.mydomain.fr", "http://evil.com", "http://notlocalhost",
                                    "http://localhost.evil.com", "http://127.0.0.1.evil.com"])
async def test_llama_cpp_cors_localhost_rejects(proxy_factory: Any, origin: str) -> None:
    proxy = await proxy_factory(make_config(models("a"), corsOrigins="localhost"))
    status, headers, _ = await call(proxy, "OPTIONS", "/completions", {"Origin": origin, **_PREFLIGHT})
    assert status == 200
    assert "Access-Control-Allow-Origin" not in headers


async def test_llama_cpp_cors_defaults_to_localhost(proxy_factory: Any) -> None:
    proxy = await proxy_factory(make_config(models("a")))  # no corsOrigins: llama-server's localhost mode
    status, headers, _ = await call(proxy, "OPTIONS", "/completions", {"Origin": "http://localhost:8080",
                                                                        **_PREFLIGHT})
    assert status == 200 and headers["Access-Control-Allow-Origin"] == "http://localhost:8080"
    status, headers, _ = await call(proxy, "OPTIONS", "/completions", {"Origin": "http://evil.com", **_PREFLIGHT})
    assert status == 200 and "Access-Control-Allow-Origin" not in headers
    # the request itself, from the allowed origin, reaches the model and carries the header back
    status, headers, body = await call(proxy, "POST", "/completion", {"Origin": "http://localhost:8080",
                                                                       "Content-Type": "application/json"},
                                      data=b'{"model": "a", "prompt": "I believe the meaning of life is"}')
    assert status == 200 and "content" in body, body
    assert headers["Access-Control-Allow-Origin"] == "http://localhost:8080"


# -- item 9: absolute-form request targets ----------------------------------------------------------
async def test_absolute_form_target_is_400_and_starts_nothing(proxy_factory: Any) -> None:
    proxy = await proxy_factory(make_config(models("a")))
    body = b'{"model": "a", "messages": []}'
    request = (f"POST http://x:1/v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port_of(proxy)}\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
               ).encode() + body
    answer = await asyncio.to_thread(raw_exchange, port_of(proxy), request)
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:300]
    assert b'"invalid_request"' in answer and answer.count(b"\n") < 20, answer
    assert proxy.pid("a") is None and state(proxy) is ProcessState.STOPPED


# -- item 12: HEAD of a GET that acts ---------------------------------------------------------------
async def test_head_never_acts(proxy_factory: Any) -> None:
    proxy = await proxy_factory(make_config({"a": fake("a"), "b": fake("b")}))
    for path in ("/upstream/b/load", "/props?model=b", "/slots?model=b"):
        status, headers, _ = await call(proxy, "HEAD", path)
        assert status == 405 and headers["Allow"] == "GET", path
    assert proxy.pid("b") is None
    await load(proxy)
    status, headers, _ = await call(proxy, "HEAD", "/unload")
    assert status == 405 and headers["Allow"] == "GET"
    assert state(proxy) is ProcessState.READY
    # HEAD of a GET that only reads still answers
    assert (await call(proxy, "HEAD", "/running"))[0] == 200
    assert (await call(proxy, "HEAD", "/health"))[0] == 200


# -- item 13: authenticate before 100 Continue ------------------------------------------------------
async def test_expect_100_continue_comes_after_the_key_check(proxy_factory: Any) -> None:
    proxy = await proxy_factory(make_config(models("a"), apiKeys=[KEY]))
    port = port_of(proxy)
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: 100000\r\nExpect: 100-continue\r\n")
    # no key: the refusal comes instead of 100 Continue, and no body is invited
    answer = await asyncio.to_thread(raw_exchange, port, (head + "\r\n").encode(), True)
    assert answer.startswith(b"HTTP/1.1 401 "), answer[:200]
    # a refused browser request: likewise
    answer = await asyncio.to_thread(raw_exchange, port, (head + f"Authorization: Bearer {KEY}\r\n"
                                                          f"Origin: {EVIL}\r\n\r\n").encode(), True)
    assert answer.startswith(b"HTTP/1.1 403 "), answer[:200]
    # the right key: 100 Continue, then the answer
    async with proxy.http.post(proxy.url + "/v1/chat/completions", json=CHAT, expect100=True,
                               headers={"Authorization": f"Bearer {KEY}"}) as resp:
        assert resp.status == 200
    assert proxy.pid("a") is not None
