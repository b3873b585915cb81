"""Bad input, explicit and generated: swapproxy answers a clear 4xx, never a 500 or a traceback.

Two halves:

* **Explicit cases** (``proxy_factory``, swapproxy in this process): malformed
  and non-object JSON, ``model`` of the wrong type, invalid UTF-8, wrong or
  missing Content-Type (curl ``-d`` sends ``application/x-www-form-urlencoded``
  with a JSON body: that must still work), multipart without a boundary,
  bodies over ``maxRequestBodyMB``, header floods, ``..`` and encoded tricks in
  ``/upstream/{model}/{path}``, unknown routes and methods. Cases that share a
  proxy are checked in one test that lists every case that went wrong, so each
  test pays for one proxy (and at most one model start).

* **A property test** (hypothesis): method, path (known routes, random
  segments, percent-encoded bytes, dot segments), query, headers and body
  (random bytes, random JSON, JSON objects whose ``model`` is a known id, an
  alias, an unknown string or another type) are generated; swapproxy must never
  answer 500, a 5xx must carry swapproxy's envelope with one of its own codes,
  no body may hold a traceback, and afterwards the proxy still answers a normal
  chat request with 200 and its log holds no traceback.

Design of the property test: hypothesis and function-scoped async fixtures do
not mix (each example would need its own event loop, or one proxy would be
shared behind hypothesis's back). So swapproxy runs as a real subprocess
(``python -m swapproxy``), started once per module by a plain module-scoped
fixture, and the test is synchronous: a ``@given`` function, defined inside
the test so the liveness check can run after all examples, sends each example
over a raw socket. The raw client (:func:`send`) writes the request bytes
exactly as generated (http.client and aiohttp would normalise paths or refuse
odd headers) and parses the answer with :class:`http.client.HTTPResponse`. The
explicit cases use the same client from a worker thread
(``asyncio.to_thread``) while the in-process proxy keeps serving on the loop.

``SWAPPROXY_FUZZ_EXAMPLES`` sets the number of generated examples (default
300, which keeps this file well under 15 s); e.g.
``SWAPPROXY_FUZZ_EXAMPLES=5000 pytest tests/test_fuzz.py -k property``.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import http.client
import json
import os
import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support import CliProxy, Proxy, fake_cmd, free_port_block, make_config, running_cli

MAX_MB = 0.0625  # maxRequestBodyMB in these configs: 64 KiB
MAX_BYTES = int(MAX_MB * 1024 * 1024)
EXAMPLES = int(os.environ.get("SWAPPROXY_FUZZ_EXAMPLES", "300"))

MODELS = ("alpha", "beta")
ALIASES = ("a1", "gpt-fuzz", "b1")
MODEL_SPECS: dict[str, dict[str, Any]] = {
    "alpha": {"cmd": fake_cmd("--model-name", "alpha"), "aliases": ["a1", "gpt-fuzz"]},
    "beta": {"cmd": fake_cmd("--model-name", "beta"), "aliases": ["b1"]},
}
# Both may run at once: the fuzz never waits on a swap.
GROUPS = {"all": {"swap": False, "exclusive": False, "members": list(MODELS)}}
#: swapproxy's own 5xx codes (errors.py); a 5xx without one of these is not swapproxy's
SWAPPROXY_5XX = frozenset(
    {"upstream_unreachable", "model_start_failed", "health_check_timeout", "shutting_down", "upstream_timeout",
     "upstream_disconnected", "not_implemented", "no_target_available", "request_cancelled"}
)
ENVELOPE_KEYS = {"message", "type", "code", "param"}
CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def fuzz_config(**top: Any) -> Any:
    return make_config(MODEL_SPECS, groups=GROUPS, maxRequestBodyMB=MAX_MB, **top)


# --------------------------------------------------------------------------- #
# A raw HTTP/1.1 client: the request goes out byte for byte as given
# --------------------------------------------------------------------------- #


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes
    live_stream: bool = False  # an endless 200 event stream, cut by the client

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def error(self) -> dict[str, Any] | None:
        """The ``error`` object when the body is an OpenAI-style error, else None."""
        try:
            obj = json.loads(self.body)
        except ValueError:
            return None
        err = obj.get("error") if isinstance(obj, dict) else None
        return err if isinstance(err, dict) else None

    def __repr__(self) -> str:
        return f"Reply({self.status}, {dict(self.headers)!r}, {self.body[:300]!r})"


def encode_request(
    method: str,
    path: str,
    port: int,
    headers: Sequence[tuple[str, str]] = (),
    body: bytes | None = None,
    *,
    chunked: bool = False,
    length: bool = True,
) -> bytes:
    """The request's bytes. ``Host`` and ``Connection: close`` always; the body framed as asked."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers]
    payload = b""
    if body is not None:
        if chunked:
            lines.append("Transfer-Encoding: chunked")
            for i in range(0, len(body), 4096):
                piece = body[i : i + 4096]
                payload += f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
            payload += b"0\r\n\r\n"
        else:
            if length:
                lines.append(f"Content-Length: {len(body)}")
            payload = body
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload


def send_raw(port: int, data: bytes, method: str = "GET", timeout: float = 15.0) -> Reply:
    """Send ``data`` on a fresh connection and read one response."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered early (e.g. 413) and closed; its answer may still be readable
        resp = http.client.HTTPResponse(sock, method=method)
        resp.begin()
        try:
            body = resp.read()
        except (TimeoutError, socket.timeout):
            if resp.status == 200 and resp.getheader("Content-Type", "").startswith("text/event-stream"):
                return Reply(resp.status, resp.headers, b"", live_stream=True)
            raise
        return Reply(resp.status, resp.headers, body)


def send(
    port: int,
    method: str,
    path: str,
    headers: Sequence[tuple[str, str]] = (),
    body: bytes | None = None,
    *,
    chunked: bool = False,
    length: bool = True,
    timeout: float = 15.0,
) -> Reply:
    data = encode_request(method, path, port, headers, body, chunked=chunked, length=length)
    return send_raw(port, data, method, timeout)


def port_of(proxy: Proxy) -> int:
    return int(proxy.url.rsplit(":", 1)[1])


async def asend(proxy: Proxy, method: str, path: str, *args: Any, **kw: Any) -> Reply:
    return await asyncio.to_thread(send, port_of(proxy), method, path, *args, **kw)


def jbody(obj: Any) -> bytes:
    return json.dumps(obj).encode()


# --------------------------------------------------------------------------- #
# Checks
# --------------------------------------------------------------------------- #


def problems_with(reply: Reply, status: int | tuple[int, ...], code: str | None = None) -> list[str]:
    """What is wrong with ``reply`` if it should be swapproxy's envelope with ``status`` (and ``code``)."""
    wanted = (status,) if isinstance(status, int) else status
    out = []
    if reply.status not in wanted:
        out.append(f"status {reply.status}, wanted {wanted}")
    out += traceback_problems(reply)
    if not reply.headers.get("Content-Type", "").startswith("application/json"):
        out.append(f"Content-Type {reply.headers.get('Content-Type')!r}")
    err = reply.error
    if err is None:
        out.append("no JSON error envelope")
        return out
    if set(err) != ENVELOPE_KEYS:
        out.append(f"envelope keys {sorted(err)}")
    if not isinstance(err.get("message"), str) or not err.get("message"):
        out.append("empty message")
    if not isinstance(err.get("code"), str) or not isinstance(err.get("type"), str):
        out.append(f"code/type not strings: {err.get('code')!r} {err.get('type')!r}")
    if code is not None and err.get("code") != code:
        out.append(f"code {err.get('code')!r}, wanted {code!r}")
    return out


def traceback_problems(reply: Reply) -> list[str]:
    lowered = reply.body.lower()
    if b"traceback" in lowered or b'file "' in lowered or b".py\", line" in lowered:
        return ["a Python traceback in the body"]
    return []


def assert_envelope(reply: Reply, status: int | tuple[int, ...], code: str | None = None) -> None:
    problems = problems_with(reply, status, code)
    assert not problems, f"{problems}: {reply!r}"


def assert_all(results: list[tuple[str, list[str], Reply]]) -> None:
    """Fail once, listing every case that went wrong."""
    bad = [f"{name}: {problems} -> {reply!r}" for name, problems, reply in results if problems]
    assert not bad, "\n".join(bad)


# --------------------------------------------------------------------------- #
# Explicit cases
# --------------------------------------------------------------------------- #

BAD_BODIES: list[tuple[str, bytes, str | None]] = [
    # (name, body, param the envelope names)
    ("empty", b"", None),
    ("truncated", b'{"model": "alpha"', None),
    ("trailing comma", b'{"model": "alpha",}', None),
    ("single quotes", b"{'model': 'alpha'}", None),
    ("not JSON at all", b"model=alpha&messages=hi", None),
    ("JSON list", b'[{"model": "alpha"}]', None),
    ("JSON string", b'"alpha"', None),
    ("JSON number", b"42", None),
    ("JSON null", b"null", None),
    ("JSON true", b"true", None),
    ("model number", jbody({"model": 42, **CHAT}), "model"),
    ("model float", jbody({"model": 1.5, **CHAT}), "model"),
    ("model bool", jbody({"model": True, **CHAT}), "model"),
    ("model list", jbody({"model": ["alpha"], **CHAT}), "model"),
    ("model object", jbody({"model": {"id": "alpha"}, **CHAT}), "model"),
    ("model null", jbody({"model": None, **CHAT}), "model"),
    ("model empty", jbody({"model": "", **CHAT}), "model"),
    ("no model", jbody(CHAT), "model"),
    ("invalid UTF-8 in model", b'{"model": "alph\xff", "messages": []}', None),
    ("invalid UTF-8 sequence", b'{"model": "alpha", "x": "\xc3\x28"}', None),
    ("NUL bytes", b"\x00\x00\x00\x00", None),
    ("integer over the digit limit", b'{"model": "alpha", "n": 1' + b"0" * 5000 + b"}", None),
]


async def test_bad_json_bodies_get_400_envelopes(proxy_factory: Any) -> None:
    proxy = await proxy_factory(fuzz_config())
    results = []
    for name, body, param in BAD_BODIES:
        reply = await asend(proxy, "POST", "/v1/chat/completions", [("Content-Type", "application/json")], body)
        problems = problems_with(reply, 400, "invalid_request")
        if param is not None and reply.error is not None and reply.error.get("param") != param:
            problems.append(f"param {reply.error.get('param')!r}, wanted {param!r}")
        results.append((name, problems, reply))
    # the same refusals on the other inference routes
    for path in ("/v1/embeddings", "/completion", "/v1/anything/else", "/tokenize"):
        reply = await asend(proxy, "POST", path, [("Content-Type", "application/json")], b"[1, 2")
        results.append((f"bad JSON on {path}", problems_with(reply, 400, "invalid_request"), reply))
    assert_all(results)
    assert proxy.swapper.running() == []  # nothing was started for a refused request


async def test_unknown_models_get_404(proxy_factory: Any) -> None:
    proxy = await proxy_factory(fuzz_config())
    results = []
    for model in ("nope", "ALPHA", "alpha ", "a" * 5000, "\u00e9\u4e2d\U0001f600", "../alpha", "alpha\x00"):
        reply = await asend(proxy, "POST", "/v1/chat/completions", [], jbody({"model": model, **CHAT}))
        problems = problems_with(reply, 404, "model_not_found")
        if reply.error is not None and reply.error.get("param") != "model":
            problems.append("param is not 'model'")
        results.append((f"model {model[:20]!r}", problems, reply))
    reply = await asend(proxy, "GET", "/props?model=nope")
    results.append(("GET /props?model=nope", problems_with(reply, 404, "model_not_found"), reply))
    reply = await asend(proxy, "GET", "/slots")  # no ?model=, nothing running, no defaultModel
    results.append(("GET /slots without a model", problems_with(reply, 400), reply))
    assert_all(results)


async def test_deeply_nested_json_gets_400(proxy_factory: Any) -> None:
    # 50,000 '[' (under maxRequestBodyMB); '{"model": "alpha", "messages": [[[...' fails the same way.
    proxy = await proxy_factory(fuzz_config())
    reply = await asend(proxy, "POST", "/v1/chat/completions", [("Content-Type", "application/json")], b"[" * 50_000)
    assert_envelope(reply, 400, "invalid_request")


async def test_content_type_does_not_matter_for_json_bodies(proxy_factory: Any) -> None:
    """Routing reads the body whatever its label: curl -d's form type, text/plain, none at all."""
    proxy = await proxy_factory(fuzz_config())
    body = jbody({"model": "alpha", **CHAT})
    results = []
    for content_type in (
        None,
        "application/x-www-form-urlencoded",  # curl -d
        "text/plain",
        "application/json; charset=utf-8",
        "application/xml",
        "",
        "garbage;;;=",
    ):
        headers = [] if content_type is None else [("Content-Type", content_type)]
        reply = await asend(proxy, "POST", "/v1/chat/completions", headers, body)
        problems = [] if reply.status == 200 else [f"status {reply.status}"]
        if reply.status == 200 and reply.json()["choices"][0]["message"]["content"] != "tok0 tok1 ":
            problems.append("unexpected completion")
        results.append((f"Content-Type {content_type!r}", problems, reply))
    reply = await asend(proxy, "POST", "/v1/chat/completions", [("Content-Type", "text/plain")], body, chunked=True)
    results.append(("chunked body", [] if reply.status == 200 else [f"status {reply.status}"], reply))
    # Content-Encodings aiohttp does not decode are passed along with the body, untouched.
    for encoding in ("x-unknown", "identity"):
        reply = await asend(proxy, "POST", "/v1/chat/completions", [("Content-Encoding", encoding)], body)
        results.append((f"Content-Encoding {encoding}", [] if reply.status < 500 else [f"status {reply.status}"], reply))
    # A wrong label does not rescue a bad body either.
    reply = await asend(proxy, "POST", "/v1/chat/completions", [("Content-Type", "application/x-www-form-urlencoded")],
                        b"model=alpha&messages=hi")
    results.append(("real form body", problems_with(reply, 400, "invalid_request"), reply))
    assert_all(results)


async def test_multipart_edge_cases(proxy_factory: Any) -> None:
    proxy = await proxy_factory(fuzz_config())
    path = "/v1/audio/transcriptions"
    part = b'--XyZ\r\nContent-Disposition: form-data; name="%s"\r\n\r\n%s\r\n--XyZ--\r\n'
    cases = [
        ("no boundary", "multipart/form-data", part % (b"model", b"alpha"), 400, "invalid_request"),
        ("empty boundary", "multipart/form-data; boundary=", part % (b"model", b"alpha"), 400, "invalid_request"),
        ("no model field", "multipart/form-data; boundary=XyZ", part % (b"file", b"abc"), 400, "invalid_request"),
        ("invalid UTF-8 model", "multipart/form-data; boundary=XyZ", part % (b"model", b"alph\xff"), 400,
         "invalid_request"),
        ("unknown model", "multipart/form-data; boundary=XyZ", part % (b"model", b"nope"), 404, "model_not_found"),
        ("not multipart at all", "multipart/form-data; boundary=XyZ", b'{"model": "alpha"}', 400, "invalid_request"),
        ("mixed", "multipart/mixed; boundary=XyZ", part % (b"model", b"\xc3("), 400, "invalid_request"),
    ]
    results = []
    for name, ctype, body, status, code in cases:
        reply = await asend(proxy, "POST", path, [("Content-Type", ctype)], body)
        results.append((name, problems_with(reply, status, code), reply))
    assert_all(results)
    assert proxy.swapper.running() == []


async def test_bodies_over_max_request_body_get_413(proxy_factory: Any) -> None:
    proxy = await proxy_factory(fuzz_config())
    big = jbody({"model": "alpha", "messages": [{"role": "user", "content": "x" * (MAX_BYTES + 4096)}]})
    multipart = (
        b'--XyZ\r\nContent-Disposition: form-data; name="model"\r\n\r\nalpha\r\n'
        b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
        + b"\x00" * (MAX_BYTES + 4096)
        + b"\r\n--XyZ--\r\n"
    )
    results = []
    for name, path, ctype, body, chunked in (
        ("JSON, Content-Length", "/v1/chat/completions", "application/json", big, False),
        ("JSON, chunked", "/v1/chat/completions", "application/json", big, True),
        ("native route", "/completion", "application/json", big, False),
        ("multipart", "/v1/audio/transcriptions", "multipart/form-data; boundary=XyZ", multipart, False),
        ("multipart, chunked", "/v1/audio/transcriptions", "multipart/form-data; boundary=XyZ", multipart, True),
    ):
        reply = await asend(proxy, "POST", path, [("Content-Type", ctype)], body, chunked=chunked)
        results.append((name, problems_with(reply, 413, "request_too_large"), reply))
    # Just under the limit is fine.
    small = jbody({"model": "alpha", **CHAT, "pad": "x" * (MAX_BYTES - 1024)})
    reply = await asend(proxy, "POST", "/v1/chat/completions", [("Content-Type", "application/json")], small)
    results.append(("just under the limit", [] if reply.status == 200 else [f"status {reply.status}"], reply))
    assert_all(results)


async def test_upstream_passthrough_honours_max_request_body(proxy_factory: Any) -> None:
    proxy = await proxy_factory(fuzz_config())
    big = b"x" * (MAX_BYTES + 4096)
    reply = await asend(proxy, "POST", "/upstream/alpha/debug/echo", [("Content-Type", "text/plain")], big)
    assert_envelope(reply, 413, "request_too_large")


async def test_header_floods_get_4xx(proxy_factory: Any) -> None:
    """Oversized headers are refused by aiohttp's own HTTP parser before swapproxy runs.

    That parser answers a plain-text 400 (no envelope: swapproxy never sees the
    request), so these cases assert a 4xx that is not a 5xx and carries no traceback.
    """
    proxy = await proxy_factory(fuzz_config())
    port = port_of(proxy)
    results = []
    cases: list[tuple[str, str, list[tuple[str, str]]]] = [
        ("one 100 KB header", "/health", [("X-Big", "v" * 100_000)]),
        ("one 9 KB header name", "/health", [("X-" + "n" * 9000, "v")]),
        ("2,000 headers of 60 bytes", "/health", [(f"X-Flood-{i}", "v" * 50) for i in range(2000)]),
        ("10 KB request line", "/v1/models?" + "q" * 10_000, []),
    ]
    for name, path, headers in cases:
        reply = await asyncio.to_thread(send, port, "GET", path, headers)
        problems = [] if 400 <= reply.status < 500 else [f"status {reply.status}, wanted 4xx"]
        results.append((name, problems + traceback_problems(reply), reply))
    # Many ordinary headers are fine, and are forwarded to the model.
    many = [(f"X-Many-{i}", f"value {i}") for i in range(100)]
    reply = await asend(proxy, "POST", "/v1/chat/completions", many, jbody({"model": "alpha", **CHAT}))
    results.append(("100 small headers", [] if reply.status == 200 else [f"status {reply.status}"], reply))
    # Header bytes that are not UTF-8 (latin-1 is what HTTP allows).
    raw = encode_request("GET", "/health", port, [("X-Latin", "caf\xe9")])
    reply = await asyncio.to_thread(send_raw, port, raw)
    results.append(("latin-1 header value", [] if reply.status == 200 else [f"status {reply.status}"], reply))
    assert_all(results)
    assert (await asend(proxy, "GET", "/health")).status == 200


async def test_garbage_credentials_get_401(proxy_factory: Any) -> None:
    proxy = await proxy_factory(fuzz_config(apiKeys=["sk-fuzz"]))
    results = []
    for name, headers in (
        ("none", []),
        ("empty Bearer", [("Authorization", "Bearer ")]),
        ("wrong Bearer", [("Authorization", "Bearer sk-nope")]),
        ("Basic, not base64", [("Authorization", "Basic !!!not-base64!!!")]),
        ("Basic, not UTF-8", [("Authorization", "Basic /w==")]),
        ("Basic, no colon", [("Authorization", "Basic c2stZnV6eg==")]),  # "sk-fuzz" without "user:"
        ("unknown scheme", [("Authorization", "Digest sk-fuzz")]),
        ("x-api-key wrong", [("x-api-key", "sk-fuzzz")]),
        ("two Authorization headers", [("Authorization", "Bearer nope"), ("Authorization", "Bearer nope2")]),
    ):
        reply = await asend(proxy, "POST", "/v1/chat/completions", headers, jbody({"model": "alpha", **CHAT}))
        results.append((name, problems_with(reply, 401, "invalid_api_key"), reply))
    reply = await asend(proxy, "GET", "/health", [("Authorization", "Basic !!!")])
    results.append(("open /health", [] if reply.status == 200 else [f"status {reply.status}"], reply))
    assert_all(results)
    assert proxy.swapper.running() == []


async def test_non_utf8_api_key_gets_401(proxy_factory: Any) -> None:
    proxy = await proxy_factory(fuzz_config(apiKeys=["sk-fuzz"]))
    # encode_request writes headers as latin-1: this is the single byte 0xFC, not UTF-8.
    reply = await asend(proxy, "POST", "/v1/chat/completions", [("Authorization", "Bearer sk-f\xfczz")],
                        jbody({"model": "alpha", **CHAT}))
    assert_envelope(reply, 401, "invalid_api_key")


async def test_non_utf8_header_is_forwarded_intact_or_refused(proxy_factory: Any) -> None:
    proxy = await proxy_factory(fuzz_config())
    reply = await asend(proxy, "GET", "/upstream/alpha/debug/echo", [("X-Latin", "caf\xe9")])  # one byte 0xE9
    if reply.status == 200:
        # what the fake sees when the same bytes are sent to it directly
        assert reply.json()["headers"].get("x-latin") == "caf\udce9", reply
    else:
        assert_envelope(reply, 400)


async def test_upstream_path_tricks(proxy_factory: Any) -> None:
    """Dot segments, raw or encoded, never reach the model; encoded slashes pass through as sent."""
    proxy = await proxy_factory(fuzz_config())
    results = []
    refused = [
        "/upstream/alpha/debug/echo/../../../etc/passwd",
        "/upstream/alpha/../../etc/passwd",
        "/upstream/alpha/debug/echo/%2e%2e/%2e%2e/x",
        "/upstream/alpha/debug/echo/%2E%2E",
        "/upstream/alpha/debug/echo/..%2F..%2Fetc",
        "/upstream/alpha/debug/echo/%2e%2e%2f%2e%2e%2fx",
        "/upstream/alpha/debug/echo/.%2e/x",
        "/upstream/alpha/./debug/echo",
        "/upstream/alpha/%2e/debug/echo",
        "/upstream/a1/debug/echo/%2e%2e",
    ]
    for path in refused:
        for method in ("GET", "POST"):
            reply = await asend(proxy, method, path, [], b"{}" if method == "POST" else None)
            results.append((f"{method} {path}", problems_with(reply, (400, 404)), reply))
    for path, status, code in (
        ("/upstream/nope/health", 404, None),
        ("/upstream/%2e%2e/health", 404, None),
        ("/upstream/..%2Fetc/passwd", 404, None),
        ("/upstream/", 404, None),
    ):
        reply = await asend(proxy, "GET", path)
        results.append((f"GET {path}", problems_with(reply, status, code), reply))
    # Encodings that are not dot segments are forwarded exactly as sent.
    for tail in ("a%2Fb", "%252e%252e", "a%20b", "%2e%2e%2e", "...", "a..b"):
        reply = await asend(proxy, "GET", f"/upstream/alpha/debug/echo/{tail}?q=%2e%2e")
        problems = [] if reply.status == 200 else [f"status {reply.status}"]
        if reply.status == 200 and reply.json()["path"] != f"/debug/echo/{tail}?q=%2e%2e":
            problems.append(f"upstream saw {reply.json()['path']!r}")
        results.append((f"forward {tail}", problems, reply))
    assert_all(results)


async def test_unknown_routes_and_methods(proxy_factory: Any) -> None:
    proxy = await proxy_factory(fuzz_config())
    results = []
    for method, path in (
        ("GET", "/nope"),
        ("GET", "/v1/nope"),
        ("GET", "/v1/chat/completions"),
        ("PUT", "/v1/chat/completions"),
        ("PUT", "/v1/models"),
        ("DELETE", "/health"),
        ("PATCH", "/running"),
        ("TRACE", "/"),
        ("POST", "/upstream/nope/v1/chat/completions"),
        ("GET", "/upstream/nope/load"),
        ("DELETE", "/upstream/nope"),
        ("POST", "/api/models/unload/nope"),
        ("GET", "/%00"),
        ("GET", "/%ff%fe"),
        ("GET", "/" + "%2e%2e/" * 10),
    ):
        reply = await asend(proxy, method, path, [], b"{}" if method in ("POST", "PUT", "PATCH") else None)
        problems = problems_with(reply, (400, 404, 405))
        results.append((f"{method} {path}", problems, reply))
    # Methods llhttp does not know are refused by aiohttp's parser (plain-text 400) before swapproxy runs.
    for method, path in (("FOO", "/health"), ("BREW", "/v1/models"), ("get", "/health")):
        reply = await asend(proxy, method, path)
        problems = [] if 400 <= reply.status < 500 else [f"status {reply.status}, wanted 4xx"]
        results.append((f"{method} {path} (parser)", problems + traceback_problems(reply), reply))
    # Management routes that stream or take a body refuse bad input before anything starts.
    for method, path, body, status in (
        ("GET", "/logs/stream/nope", None, 400),
        ("GET", "/api/events?logs=lots", None, 400),
        ("POST", "/models/load", b"{", 400),
        ("POST", "/models/load", jbody({"model": 5}), 400),
        ("POST", "/models/load", jbody({"model": "nope"}), 404),
        ("POST", "/models/unload", b"[]", 400),
    ):
        reply = await asend(proxy, method, path, [], body)
        results.append((f"{method} {path} {body!r}", problems_with(reply, status), reply))
    reply = await asend(proxy, "HEAD", "/nope")
    results.append(("HEAD /nope", [] if 400 <= reply.status < 500 else [f"status {reply.status}"], reply))
    # OPTIONS is swapproxy's own CORS answer (as llama-server gives it), for any path: 200, nothing starts.
    reply = await asend(proxy, "OPTIONS", "/v1/chat/completions")
    results.append(("OPTIONS", [] if reply.status == 200 else [f"status {reply.status}"], reply))
    # A POST /v1/... the model does not know: the upstream's own 404 comes back as it sent it.
    reply = await asend(proxy, "POST", "/v1/not-a-route", [], jbody({"model": "alpha"}))
    results.append(("upstream 404", [] if reply.status == 404 else [f"status {reply.status}"], reply))
    assert_all(results)


async def test_bad_gzip_request_body_gets_400(proxy_factory: Any) -> None:
    # POST /upstream/alpha/debug/echo with the same body answers 502 upstream_unreachable.
    proxy = await proxy_factory(fuzz_config())
    reply = await asend(proxy, "POST", "/v1/chat/completions", [("Content-Encoding", "gzip")], b'{"model": "alpha"} not gzip')
    assert_envelope(reply, 400)


async def test_gzip_request_body_reaches_the_model_intact(proxy_factory: Any) -> None:
    # The same happens through /upstream/alpha/debug/echo.
    proxy = await proxy_factory(fuzz_config())
    body = jbody({"model": "alpha", **CHAT})
    reply = await asend(proxy, "POST", "/v1/debug/echo", [("Content-Encoding", "gzip")], gzip.compress(body))
    assert reply.status == 200, reply
    seen = reply.json()
    got = base64.b64decode(seen["body_b64"])
    if got[:2] == b"\x1f\x8b":  # forwarded still compressed (the fake's aiohttp may have decoded it already)
        got = gzip.decompress(got)
    assert got == body


# --------------------------------------------------------------------------- #
# The property test: one swapproxy subprocess, many generated requests
# --------------------------------------------------------------------------- #


def fuzz_doc(state: Path) -> dict[str, Any]:
    """The fuzz config for a swapproxy child process (its ports below the ephemeral range)."""
    return {
        "startPort": free_port_block(len(MODELS) + 1),
        "healthCheckTimeout": 15,
        "stateDir": str(state),
        "maxRequestBodyMB": MAX_MB,
        "logToStdout": "proxy",
        "groups": GROUPS,
        "models": MODEL_SPECS,
    }


# Routes that stream forever (they would only time out) or that stop models (every
# later example would pay for a restart): the generator leaves them out.
_ENDLESS = ("/logs/stream", "/api/events", "/models/sse")
_UNLOADS = ("/unload", "/api/models/unload", "/models/unload")
KNOWN_PATHS = (
    "/", "/health", "/health/liveness", "/running", "/running?details=1", "/v1/models", "/models", "/logs",
    "/metrics", "/info", "/api/version", "/openapi.json", "/ui", "/ui/app.js", "/ui/nope", "/swagger",
    "/models/load", "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses", "/v1/rerank",
    "/v1/messages", "/v1/audio/speech", "/v1/audio/transcriptions", "/v1/images/generations", "/v1/images/edits",
    "/completion", "/completions", "/chat/completions", "/infill", "/rerank", "/embedding", "/embeddings",
    "/tokenize", "/detokenize", "/apply-template", "/props", "/slots", "/lora-adapters",
    "/upstream/alpha/health", "/upstream/beta/slots", "/upstream/a1/debug/echo", "/upstream/alpha/load",
    "/upstream/nope/health", "/v1/unknown", "/nope",
    "/responses", "/chat/completions/input_tokens", "/v/chat/completions", "/audioapi/v1/tasks/run",
    "/slots/0?action=save", "/v1/audio/voices", "/sdapi/v1/loras", "/comfyui", "/comfyui/x", "/api/profiles",
    "/api/profiles/active", "/api/inflight", "/api/inflight/1/cancel", "/v1/health", "/wol-health", "/upstream",
)
MODEL_NAMES = (*MODELS, *ALIASES)
_SEG_ALPHABET = "abcxyzABC019-._~!$&'()*+,;=:@"

_hex_byte = st.integers(0, 255).map(lambda b: f"%{b:02X}" if b % 2 else f"%{b:02x}")
_segment = st.one_of(
    st.text(_SEG_ALPHABET, min_size=0, max_size=12),
    st.sampled_from(["..", ".", "%2e%2e", "%2E%2e", ".%2e", "%2f", "%2F", "..%2f", "%00", "%zz", "%", "%2",
                     "%c0%ae", "%25", "%252e%252e", "alpha", "a1", "v1", "debug", "echo", "load", "health"]),
    st.lists(_hex_byte, min_size=1, max_size=6).map("".join),
)
_random_path = st.lists(_segment, min_size=0, max_size=6).map(lambda segs: "/" + "/".join(segs))
_upstream_path = st.tuples(st.sampled_from([*MODEL_NAMES, "nope", "%61lpha", "alpha%2F..", ""]),
                           st.lists(_segment, max_size=4)).map(lambda t: "/upstream/" + "/".join([t[0], *t[1]]))
_path = st.one_of(st.sampled_from(KNOWN_PATHS), _random_path, _upstream_path,
                  st.tuples(st.sampled_from(KNOWN_PATHS), _random_path).map(lambda t: t[0].split("?")[0] + t[1]))
_query_value = st.one_of(st.sampled_from([*MODEL_NAMES, "nope", "", "%zz", "%00", "1"]),
                         st.text("abc01%=&+", max_size=8))
_query = st.one_of(
    st.just(""),
    st.lists(st.tuples(st.sampled_from(["model", "details", "n", "x", ""]), _query_value), min_size=1, max_size=3)
    .map(lambda kv: "?" + "&".join(f"{k}={v}" for k, v in kv)),
)
# Printable latin-1: bytes above 0x7F are not UTF-8 and must get a clean 400, never a 500.
_header_value = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=40)
_headers = st.lists(
    st.one_of(
        st.tuples(st.just("Content-Type"), st.sampled_from([
            "application/json", "application/x-www-form-urlencoded", "text/plain", "multipart/form-data",
            "multipart/form-data; boundary=XyZ", "multipart/form-data; boundary=", "application/json; charset=latin-1",
            ";;", "*/*"])),
        st.tuples(st.just("Content-Encoding"), st.sampled_from(["identity", "zz", "gzip", "deflate", "br"])),
        st.tuples(st.sampled_from(["Accept", "Authorization", "X-Api-Key", "Connection", "Upgrade", "TE", "Expect",
                                   "Accept-Encoding", "Cookie", "X-Fuzz", "Range", "Keep-Alive", "Trailer"]),
                  _header_value),
    ),
    max_size=5,
)
_json_scalar = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63), st.floats(allow_nan=False),
                         st.text(max_size=20))
_json = st.recursive(_json_scalar, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=12)
_model_value = st.one_of(st.sampled_from(MODEL_NAMES), st.sampled_from(["nope", "", "ALPHA", "alpha/x"]),
                         st.text(max_size=12), _json)
_request_object = st.fixed_dictionaries(
    {"model": _model_value},
    optional={
        "stream": st.one_of(st.booleans(), _json_scalar),
        "messages": st.one_of(st.just(CHAT["messages"]), _json),
        "input": st.one_of(st.just("hello"), _json),
        "prompt": st.one_of(st.just("hello"), _json),
        "max_tokens": st.one_of(st.integers(-5, 5), _json_scalar),
        "stream_options": st.one_of(st.just({"include_usage": True}), _json),
        "extra": _json,
    },
)
_body = st.one_of(
    st.none(),
    st.binary(max_size=600),
    _json.map(lambda v: json.dumps(v).encode()),
    _request_object.map(lambda v: json.dumps(v).encode()),
    _request_object.map(lambda v: json.dumps(v).encode()[: max(1, len(json.dumps(v)) // 2)]),  # truncated
)


@dataclass
class Example:
    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes | None
    chunked: bool


@st.composite
def examples(draw: st.DrawFn) -> Example:
    method = draw(st.sampled_from(["GET", "POST", "POST", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS",
                                   "FOO", "get"]))
    path = draw(_path) + draw(_query)
    body = draw(_body)
    chunked = body is not None and draw(st.booleans())
    return Example(method, path, draw(_headers), body, chunked)


def _skipped(ex: Example) -> bool:
    plain = unquote(ex.path.split("?")[0])
    return (
        plain.startswith(_ENDLESS)
        or plain.rstrip("/").startswith(_UNLOADS)
        or (ex.method.upper() == "DELETE" and plain.startswith("/upstream/"))
    )


def check_reply(ex: Example, reply: Reply) -> None:
    assert reply.status != 500, f"swapproxy answered 500 to {ex}: {reply!r}"
    assert 100 <= reply.status < 600, reply
    assert not traceback_problems(reply), f"{ex}: {reply!r}"
    if reply.status >= 500 and ex.method.upper() != "HEAD":  # a HEAD answer has no body to check
        # swapproxy's own 5xx all carry its envelope; the fakes answer no 5xx once loaded.
        problems = problems_with(reply, reply.status)
        assert not problems, f"{ex}: {problems}: {reply!r}"
        assert reply.error is not None and reply.error["code"] in SWAPPROXY_5XX, f"{ex}: {reply!r}"
    err = reply.error
    if err is not None and isinstance(err.get("code"), str) and ex.method.upper() != "HEAD":
        # A string code is swapproxy's envelope (the fake llama-server's codes are numbers): complete it must be.
        assert set(err) == ENVELOPE_KEYS and isinstance(err["message"], str), f"{ex}: {reply!r}"


def test_property_no_500_and_still_serving(tmp_path: Path) -> None:
    with running_cli(fuzz_doc(tmp_path / "state"), tmp_path, "--log-level", "warn") as live:
        for model in MODELS:  # warm both: examples then never wait on a start
            reply = send(live.port, "POST", "/v1/chat/completions", [], jbody({"model": model, **CHAT}), timeout=30)
            assert reply.status == 200, reply
        run_examples(live)


def run_examples(live_proxy: CliProxy) -> None:
    """The property, then: swapproxy still serves as before and logged no error of its own."""
    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(ex=examples())
    def one(ex: Example) -> None:
        if _skipped(ex):
            return
        reply = send(live_proxy.port, ex.method, ex.path, ex.headers, ex.body, chunked=ex.chunked, timeout=10)
        check_reply(ex, reply)

    one()
    # It stays up, and serves a normal request as before.
    reply = send(live_proxy.port, "POST", "/v1/chat/completions", [("Content-Type", "application/json")],
                 jbody({"model": "alpha", **CHAT}), timeout=30)
    assert reply.status == 200, reply
    assert reply.json()["choices"][0]["message"]["content"] == "tok0 tok1 "
    # swapproxy's own loggers stayed quiet: no unhandled error in a handler, nothing escaped the
    # error middleware. (aiohttp.server logs each request its parser refuses at ERROR with a
    # traceback; that is aiohttp's logging, not a swapproxy failure, so it is not counted here.)
    log = live_proxy.log.read_text(errors="replace")
    own = [line for line in log.splitlines() if re.search(r" (ERROR|CRITICAL) swapproxy[\w.]*: ", line)]
    assert not own, "\n".join(own[:20])
    assert "Unhandled exception" not in log, log[-4000:]


async def test_expect_header_values(proxy_factory: Any) -> None:
    """100-continue works; any other Expect value, even undecodable bytes, is a 417 envelope."""
    proxy = await proxy_factory(fuzz_config())
    reply = await asend(proxy, "GET", "/health", [("Expect", "\x80")])
    assert_envelope(reply, 417, "expectation_failed")
    reply = await asend(proxy, "GET", "/health", [("Expect", "something-else")])
    assert_envelope(reply, 417, "expectation_failed")
    async with proxy.http.post(proxy.url + "/v1/chat/completions", json={"model": "alpha", **CHAT},
                               expect100=True) as resp:
        assert resp.status == 200
