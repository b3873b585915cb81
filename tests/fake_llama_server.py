#!/usr/bin/env python3
"""A fake ``llama-server`` for swapproxy's tests.

This script imitates the parts of llama.cpp's ``llama-server`` that a model-swap
proxy cares about: how it starts (slow loaders, failed loads, the "listening"
log line), how it answers OpenAI-style requests (plain and streamed), and how it
dies (SIGTERM, ignored SIGTERM, crashes mid-stream, stray grandchildren).  It
never loads a model: every completion is made of the tokens ``"tok0 "``,
``"tok1 "``, ... so tests can predict the exact output.

It is meant to be run as a real child process::

    python tests/fake_llama_server.py --port 0 --model-name llama-a \\
        --startup-delay 0.5 --tokens 8 --token-rate 50

Start-up sequence
-----------------
1. ``fake-llama: starting (pid N)`` on stdout.
2. ``--fork-grandchild``: spawn ``python -c "import time; time.sleep(3600)"``
   (same process group) and print ``grandchild pid <PID>`` on stdout.
3. ``--big-line N``: print one line of N ``x`` characters on stdout.
4. ``--exit-during-startup CODE``: print llama-like load errors on stderr and
   exit with CODE (never binds the socket).
5. ``--bind-delay S``: sleep S seconds (nothing is listening yet).
6. Bind the socket, then print on stderr::

       main: server is listening on http://HOST:PORT - starting the main loop

   where PORT is the real port (useful with ``--port 0``) and an IPv6 HOST is
   written in brackets.  ``fake-llama: loading model '<name>'`` follows on stdout, and
   llama-server's stage lines on stderr: ``load_model: loading model`` at once,
   ``load_tensors:`` at 40 % of the startup delay, ``llama_context:`` at 70 %.
7. For ``--startup-delay`` seconds, ``/health`` and the inference routes answer
   503 "Loading model"; then ``fake-llama: model loaded`` is printed on stdout
   and ``/health`` answers 200 ``{"status": "ok"}``.

SIGTERM prints ``fake-llama: shutting down`` on stdout and exits 0 (unless
``--ignore-sigterm``).  SIGINT always shuts down the same way.

Routes
------
llama-server-like: ``GET /health`` (and ``/v1/health``), ``/props``, ``/slots``, ``/lora-adapters``,
``/metrics`` (with ``--metrics``: prompt and predicted token counters, requests processing; else 501),
``/v1/models``, ``/models`` (with ``aliases`` and ``tags``: ``--alias a,b`` and ``--tags x,y``);
``POST /v1/chat/completions``, ``/chat/completions``, ``/v1/completions``, ``/completions``,
``/completion``, ``/infill``, ``/v1/embeddings``, ``/embeddings``, ``/embedding``, ``/v1/rerank``,
``/rerank``, ``/reranking``, ``/v1/reranking``, ``/v1/audio/transcriptions``,
``/audio/transcriptions``, ``/v1/responses`` and ``/responses`` (a minimal Responses API answer),
``[/v1]/chat/completions/input_tokens``, ``[/v1]/responses/input_tokens`` and
``/v1/messages/count_tokens`` (``{"input_tokens": N}``), ``/tokenize``, ``/detokenize``,
``/apply-template``, ``/props``, ``/lora-adapters``, ``/slots/{id}?action=save|restore|erase``.
With ``--slot-save-path DIR`` the slot actions work as llama-server's: slot 0 keeps the last
completion's prompt words and answer, the next completion's ``timings.cache_n`` counts the
prompt's prefix it held, ``save`` writes it to ``DIR/<filename>``, ``restore`` reads it back,
``erase`` empties it (``--slot-save-fail``, ``--slot-save-hang``, ``--slot-restore-fail`` and
``--slot-restore-delay S`` and ``--slot-file-bytes N`` for the failure, stage and disk
budget paths); without it they only echo.
Backends llama-swap routes to, as llama-swap forwards them: ``GET /v1/audio/voices``,
``POST /v1/audio/voices``, ``POST /sdapi/v1/txt2img``, ``/sdapi/v1/img2img``,
``GET /sdapi/v1/loras``, ``POST /v1/tasks/run`` (``/audioapi/v1/tasks/run`` upstream of llama-swap).
Each of these extra answers carries ``"served_path"`` (the path as received) and
``"served_by"`` (``--model-name``).

Streamed answers are ``text/event-stream``, one ``data: <json>\n\n`` event per
write.  Chat and text completions end with a finish chunk (carrying
``timings``), a usage chunk with ``choices: []`` when
``stream_options.include_usage`` is true, then ``data: [DONE]``; the native
``/completion`` stream ends with an event whose ``"stop"`` is true (no [DONE]).
With ``--ctx-size N`` (``-c``) a prompt of more than N words is refused as llama-server
refuses it: 400 ``{"error": {"code": 400, "message": "request (X tokens) exceeds the
available context size (N tokens), try increasing it", "type": "exceed_context_size_error",
"n_prompt_tokens": X, "n_ctx": N}}``, streamed or not. ``-m PATH`` names a model file
(shown as ``/props``' ``model_path``; never read).

Like llama-server, ``--help``, ``--version`` and ``--list-devices`` print their answer
and exit 0 (no ``--port`` needed), and ``-m``/``--model PATH`` names the model (the file is
never read; ``--model-name`` wins).

Test hooks (not in llama-server):

* ``* /debug/echo`` (also ``/debug/echo/<anything>``) and ``POST /v1/debug/echo``
  answer ``{"method", "path" (raw, percent-encoded, with the query string),
  "query" (raw), "headers" ({lower-case name: value}), "header_list" ([name,
  value] pairs as received), "body_b64", "pid"}``.
* A streamed completion whose JSON has ``"x_gate": true`` sends its first event,
  then waits for one ``POST /debug/release`` credit before each later event
  (``?n=K`` gives K credits; credits accumulate and are shared by all gated
  streams).
* ``GET /debug/stats``: ``requests`` (inference requests that passed auth,
  including 503s while loading), ``active_streams``, ``cancelled_streams``,
  ``completed_streams``, ``last_headers`` and a few more counters.
* ``GET /debug/pid``: ``{"pid": ...}``.
* ``GET /debug/ws`` (and ``/debug/ws/<anything>``): a WebSocket that echoes text and binary
  messages; its first message is ``{"hello": <model>, "protocol": <chosen subprotocol>, "path",
  "headers"}``; it accepts the subprotocols ``echo.v1`` and ``echo.v2``; the text ``close:<code>``
  makes it close with that code.
* ``POST /v1/debug/stall``: headers with ``Content-Length: 100``, the first 10
  bytes of the body, then nothing until the client goes away.

With ``--api-key`` every route needs ``Authorization: Bearer KEY`` except
``/health``, ``/v1/health`` and the control hooks ``/debug/stats``,
``/debug/pid`` and ``/debug/release`` (the echo hooks *are* protected, so a
test can watch a proxy add the key).
"""

from __future__ import annotations

import os

# This server never verifies a certificate, but importing aiohttp builds verified SSL contexts,
# reading the system's CA bundle: a third of its start-up CPU (about 0.1 s), and the suite
# starts it some 300 times. Point OpenSSL at no bundle before that import.
os.environ["SSL_CERT_FILE"] = os.devnull
os.environ["SSL_CERT_DIR"] = os.devnull

import argparse  # noqa: E402  (after the environment above, as the aiohttp import must be)
import asyncio
import base64
import hashlib
import json
import math
import random
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

from aiohttp import BodyPartReader, web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
JSONDict = dict[str, Any]

LOG_PREFIX = "fake-llama:"
N_CTX = 4096
# Large enough for the proxy's big-body tests; /debug/echo reads whole bodies.
CLIENT_MAX_SIZE = 512 * 1024 * 1024

# Routes that are reachable with --api-key set but no Authorization header.
AUTH_EXEMPT_PATHS = frozenset({"/health", "/v1/health", "/debug/stats", "/debug/pid", "/debug/release"})


def log(message: str) -> None:
    """An ordinary log line on stdout, flushed at once."""
    print(f"{LOG_PREFIX} {message}", flush=True)


def log_err(message: str) -> None:
    """A log line on stderr, flushed at once."""
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- #
# Configuration
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class Config:
    host: str
    port: int
    model_name: str
    startup_delay: float
    bind_delay: float
    exit_during_startup: int | None
    crash_after_tokens: int | None
    ignore_sigterm: bool
    fork_grandchild: bool
    tokens: int
    token_rate: float
    api_key: str | None
    embedding_dim: int
    hang: bool
    big_line: int | None
    big_line_count: int = 1
    aliases: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    slot_save_path: str | None = None
    slot_save_fail: bool = False
    slot_save_hang: bool = False
    slot_restore_fail: bool = False
    slot_file_bytes: int = 0
    slot_restore_delay: float = 0.0
    metrics: bool = False
    ctx_size: int | None = None
    model_path: str | None = None


#: What --version and --list-devices print (llama-server's shapes: it prints them on stderr).
FAKE_VERSION = "version: 0 (fake-llama, built for swapproxy's tests)"
FAKE_DEVICES = "Available devices:\n  FAKE0: fake-llama pretend GPU (16384 MiB, 16000 MiB free)"


class _PrintAndExit(argparse.Action):
    """Print ``text`` on stderr and exit 0 (as --version does), before the required options are checked."""

    def __init__(self, option_strings: list[str], dest: str, text: str = "", **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, **kwargs)
        self.text = text

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> None:
        print(self.text, file=sys.stderr)
        parser.exit(0)


def parse_args(argv: list[str] | None = None) -> Config:
    p = argparse.ArgumentParser(description="Fake llama-server for swapproxy tests.")
    p.add_argument("--version", action="version", version=FAKE_VERSION)
    p.add_argument("--list-devices", action=_PrintAndExit, text=FAKE_DEVICES, help="list the (pretend) devices")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True, help="0 picks a free port")
    p.add_argument("-m", "--model", default=None, help="a GGUF path (never read); names the model, and is "
                   "/props' model_path")
    p.add_argument("--model-name", default=None, help="the model's name in answers (default: --model's "
                   "file name, else fake-model)")
    p.add_argument("--startup-delay", type=float, default=0.0,
                   help="seconds after binding during which /health answers 503")
    p.add_argument("--bind-delay", type=float, default=0.0,
                   help="seconds to sleep before binding the socket")
    p.add_argument("--exit-during-startup", type=int, default=None, metavar="CODE",
                   help="print load errors and exit with CODE before binding")
    p.add_argument("--crash-after-tokens", type=int, default=None, metavar="N",
                   help="os._exit(1) after N token chunks of a streamed completion")
    p.add_argument("--ignore-sigterm", action="store_true")
    p.add_argument("--fork-grandchild", action="store_true")
    p.add_argument("--tokens", type=int, default=5, help="content tokens per completion")
    p.add_argument("--token-rate", type=float, default=0.0,
                   help="tokens per second; 0 means as fast as possible")
    p.add_argument("--api-key", default=None)
    p.add_argument("--embedding-dim", type=int, default=8)
    p.add_argument("--hang", action="store_true",
                   help="inference routes never answer")
    p.add_argument("--big-line", type=int, default=None, metavar="N",
                   help="print one stdout line of N 'x' characters at startup")
    p.add_argument("--alias", default="", help="comma-separated aliases listed in /models (as llama-server's)")
    p.add_argument("--tags", default="", help="comma-separated tags listed in /models (as llama-server's)")
    p.add_argument("--big-line-count", type=int, default=1, metavar="K",
                   help="print K such lines (each ends with its number)")
    p.add_argument("--slot-save-path", default=None, help="as llama-server's: where slot save/restore files go")
    p.add_argument("--slot-save-fail", action="store_true", help="a slot save answers 500")
    p.add_argument("--slot-save-hang", action="store_true", help="a slot save never answers")
    p.add_argument("--slot-restore-fail", action="store_true", help="a slot restore answers 500")
    p.add_argument("--metrics", action="store_true", help="as llama-server's: serve GET /metrics (else 501)")
    p.add_argument("--slot-restore-delay", type=float, default=0.0, metavar="S",
                   help="a slot restore waits S seconds, or until a POST /debug/release credit")
    p.add_argument("--slot-file-bytes", type=int, default=0, metavar="N",
                   help="pad each saved slot file with N bytes (for disk budget tests)")
    p.add_argument("-c", "--ctx-size", type=int, default=None, metavar="N",
                   help="context size: a prompt of more words gets llama-server's 400 exceed_context_size_error")
    a = p.parse_args(argv)
    if a.port < 0 or a.port > 65535:
        p.error("--port must be in 0..65535")
    if a.tokens < 0:
        p.error("--tokens must be >= 0")
    if a.embedding_dim < 1:
        p.error("--embedding-dim must be >= 1")
    return Config(
        host=a.host,
        port=a.port,
        model_name=a.model_name or (os.path.basename(a.model) if a.model else "fake-model"),
        startup_delay=max(0.0, a.startup_delay),
        bind_delay=max(0.0, a.bind_delay),
        exit_during_startup=a.exit_during_startup,
        crash_after_tokens=a.crash_after_tokens,
        ignore_sigterm=a.ignore_sigterm,
        fork_grandchild=a.fork_grandchild,
        tokens=a.tokens,
        token_rate=max(0.0, a.token_rate),
        api_key=a.api_key,
        embedding_dim=a.embedding_dim,
        hang=a.hang,
        big_line=a.big_line,
        aliases=tuple(x.strip() for x in a.alias.split(",") if x.strip()),
        tags=tuple(x.strip() for x in a.tags.split(",") if x.strip()),
        big_line_count=max(1, a.big_line_count),
        slot_save_path=a.slot_save_path,
        slot_save_fail=a.slot_save_fail,
        slot_save_hang=a.slot_save_hang,
        slot_restore_fail=a.slot_restore_fail,
        slot_file_bytes=max(0, a.slot_file_bytes),
        slot_restore_delay=max(0.0, a.slot_restore_delay),
        metrics=a.metrics,
        ctx_size=a.ctx_size,
        model_path=a.model,
    )


# --------------------------------------------------------------------------- #
# Small helpers
# --------------------------------------------------------------------------- #


class BadRequest(Exception):
    """Raised by handlers; turned into a 400 invalid_request_error."""


class ContextExceeded(Exception):
    """The prompt is longer than --ctx-size: llama-server's 400, in its exact shape."""

    def __init__(self, n_prompt: int, n_ctx: int) -> None:
        super().__init__(f"request ({n_prompt} tokens) exceeds the available context size ({n_ctx} tokens), "
                         f"try increasing it")
        self.n_prompt, self.n_ctx = n_prompt, n_ctx


def error_response(code: int, message: str, err_type: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message, "type": err_type}}, status=code)


def headers_dict(headers: Mapping[str, str]) -> dict[str, str]:
    """Headers as ``{lower-case name: value}``; repeated headers are joined with ", "."""
    out: dict[str, str] = {}
    for name, value in headers.items():
        key = name.lower()
        out[key] = f"{out[key]}, {value}" if key in out else value
    return out


def count_words(text: str) -> int:
    """A stand-in tokenizer: whitespace-separated words, at least 1."""
    return max(1, len(text.split()))


def token_text(i: int) -> str:
    return f"tok{i} "


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def fake_embedding(text: str, dim: int) -> list[float]:
    """A deterministic unit vector derived from a hash of ``text``."""
    seed = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")
    rng = random.Random(seed)
    vec = [rng.gauss(0.0, 1.0) for _ in range(dim)]
    norm = math.sqrt(sum(v * v for v in vec)) or 1.0
    return [v / norm for v in vec]


def message_text(messages: Any) -> str:
    """All the text in an OpenAI ``messages`` list (string or parts content)."""
    pieces: list[str] = []
    if isinstance(messages, list):
        for msg in messages:
            if not isinstance(msg, dict):
                continue
            content = msg.get("content")
            if isinstance(content, str):
                pieces.append(content)
            elif isinstance(content, list):
                for part in content:
                    if isinstance(part, dict) and isinstance(part.get("text"), str):
                        pieces.append(part["text"])
    return " ".join(pieces)


def prompt_text(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list):
        return " ".join(str(p) for p in prompt)
    return "" if prompt is None else str(prompt)


@dataclass
class Plan:
    """What one completion will produce."""

    n_tokens: int
    finish_reason: str  # "stop" or "length"
    prompt_tokens: int
    cache_n: int = 0  # of the prompt's tokens, how many the slot's cache already held

    def timings(self, predicted_ms: float) -> JSONDict:
        return timings(self.prompt_tokens - self.cache_n, self.n_tokens, predicted_ms, self.cache_n)

    @property
    def text(self) -> str:
        return "".join(token_text(i) for i in range(self.n_tokens))

    def usage(self) -> JSONDict:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.n_tokens,
            "total_tokens": self.prompt_tokens + self.n_tokens,
        }


def timings(prompt_n: int, predicted_n: int, predicted_ms: float, cache_n: int = 0) -> JSONDict:
    """A llama-server-style ``timings`` object (prompt time is made up)."""
    prompt_ms = 0.5 * prompt_n
    predicted_ms = max(predicted_ms, 0.001)
    return {
        "cache_n": cache_n,
        "prompt_n": prompt_n,
        "prompt_ms": prompt_ms,
        "prompt_per_token_ms": prompt_ms / prompt_n if prompt_n else 0.0,
        "prompt_per_second": 1000.0 * prompt_n / prompt_ms if prompt_ms else 0.0,
        "predicted_n": predicted_n,
        "predicted_ms": predicted_ms,
        "predicted_per_token_ms": predicted_ms / predicted_n if predicted_n else 0.0,
        "predicted_per_second": 1000.0 * predicted_n / predicted_ms if predicted_n else 0.0,
    }


def sse(payload: JSONDict | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


# --------------------------------------------------------------------------- #
# Test-hook state
# --------------------------------------------------------------------------- #


@dataclass
class Stats:
    requests: int = 0  # inference requests that passed auth (any outcome)
    rejected_loading: int = 0  # of those, answered 503 while loading
    unauthorized: int = 0  # 401s on any route
    active_streams: int = 0
    cancelled_streams: int = 0
    completed_streams: int = 0
    last_headers: dict[str, str] = field(default_factory=dict)
    last_path: str | None = None
    prompt_tokens: int = 0  # processed (not taken from the cache), as llama-server's /metrics counts
    predicted_tokens: int = 0


class Gate:
    """Credits for gated streams: each ``release`` lets exactly one event go.

    Credits accumulate, so a release that arrives before a stream blocks is
    not lost.  All gated streams of the process share the credits.
    """

    def __init__(self) -> None:
        self._credits = 0
        self.waiting = 0
        self._cond = asyncio.Condition()

    @property
    def credits(self) -> int:
        return self._credits

    async def release(self, n: int = 1) -> None:
        async with self._cond:
            self._credits += n
            self._cond.notify_all()

    async def wait(self) -> None:
        async with self._cond:
            self.waiting += 1
            try:
                await self._cond.wait_for(lambda: self._credits > 0)
                self._credits -= 1
            finally:
                self.waiting -= 1


# --------------------------------------------------------------------------- #
# The server
# --------------------------------------------------------------------------- #


class FakeLlamaServer:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.stats = Stats()
        self.gate = Gate()
        self.ready_at = math.inf  # monotonic time at which loading ends
        self.started = int(time.time())
        self.cache_words: list[str] = []  # slot 0's cache: the last prompt's words and the tokens made

    def reuse(self, plan: Plan, prompt: str) -> Plan:
        """As llama-server's slot does: the prompt's prefix the cache holds is not processed again
        (at least one token always is); the cache then holds this prompt and its answer."""
        words = prompt.split()
        common = 0
        for cached, word in zip(self.cache_words, words):
            if cached != word:
                break
            common += 1
        plan.cache_n = max(0, min(common, plan.prompt_tokens - 1))
        self.stats.prompt_tokens += plan.prompt_tokens - plan.cache_n
        self.stats.predicted_tokens += plan.n_tokens
        self.cache_words = words + [token_text(i).strip() for i in range(plan.n_tokens)]
        return plan

    # -- app -------------------------------------------------------------- #

    def make_app(self) -> web.Application:
        app = web.Application(
            middlewares=[self.log_middleware, self.error_middleware, self.auth_middleware],
            client_max_size=CLIENT_MAX_SIZE,
        )
        r = app.router
        r.add_get("/health", self.health)
        r.add_get("/v1/health", self.health)
        r.add_get("/props", self.props)
        r.add_get("/slots", self.slots)
        r.add_get("/metrics", self.metrics)
        r.add_get("/v1/models", self.models)
        r.add_get("/models", self.models)
        r.add_get("/lora-adapters", self.extra("lora_adapters"))
        r.add_get("/v1/audio/voices", self.extra("voices"))
        r.add_get("/sdapi/v1/loras", self.extra("loras"))
        r.add_get("/debug/ws", self.websocket)
        r.add_get("/debug/ws/{tail:.*}", self.websocket)

        inference: dict[str, Handler] = {
            "/v1/chat/completions": self.chat_completions,
            "/chat/completions": self.chat_completions,
            "/v1/completions": self.text_completions,
            "/completions": self.text_completions,
            "/completion": self.native_completion,
            "/v1/embeddings": self.embeddings,
            "/embeddings": self.embeddings,
            "/v1/rerank": self.rerank,
            "/rerank": self.rerank,
            "/v1/audio/transcriptions": self.transcriptions,
            "/audio/transcriptions": self.transcriptions,
            "/infill": self.native_completion,
            "/embedding": self.embeddings,
            "/reranking": self.rerank,
            "/v1/reranking": self.rerank,
            "/v1/responses": self.extra("response"),
            "/responses": self.extra("response"),
            **{path: self.extra("input_tokens") for path in (
                "/chat/completions/input_tokens", "/v1/chat/completions/input_tokens", "/responses/input_tokens",
                "/v1/responses/input_tokens", "/v1/messages/count_tokens")},
            "/tokenize": self.extra("tokenize"),
            "/detokenize": self.extra("detokenize"),
            "/apply-template": self.extra("apply_template"),
            "/props": self.extra("set_props"),
            "/lora-adapters": self.extra("lora_adapters"),
            "/slots/{id_slot}": (self.slot_action if self.cfg.slot_save_path is not None
                                 else self.extra("slot_action")),
            "/v1/audio/voices": self.extra("voices"),
            "/sdapi/v1/txt2img": self.extra("image"),
            "/sdapi/v1/img2img": self.extra("image"),
            "/v1/tasks/run": self.extra("task"),
        }
        for path, handler in inference.items():
            r.add_post(path, self.inference_route(handler))

        r.add_route("*", "/debug/echo", self.echo)
        r.add_route("*", "/debug/echo/{tail:.*}", self.echo)
        r.add_post("/v1/debug/echo", self.echo)
        r.add_post("/v1/debug/stall", self.stall)
        r.add_post("/debug/release", self.release)
        r.add_get("/debug/stats", self.debug_stats)
        r.add_get("/debug/pid", self.debug_pid)
        return app

    @property
    def loading(self) -> bool:
        return time.monotonic() < self.ready_at

    # -- middlewares ------------------------------------------------------ #

    @web.middleware
    async def error_middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Every error leaves as a llama-server-style JSON body."""
        try:
            return await handler(request)
        except BadRequest as exc:
            return error_response(400, str(exc), "invalid_request_error")
        except ContextExceeded as exc:
            return web.json_response({"error": {
                "code": 400, "message": str(exc), "type": "exceed_context_size_error",
                "n_prompt_tokens": exc.n_prompt, "n_ctx": exc.n_ctx}}, status=400)
        except web.HTTPNotFound:
            return error_response(404, "File Not Found", "not_found_error")
        except web.HTTPMethodNotAllowed as exc:
            return error_response(405, f"Method {exc.method} not allowed", "invalid_request_error")
        except web.HTTPRequestEntityTooLarge as exc:
            return error_response(413, exc.text or "Request body too large", "invalid_request_error")
        except web.HTTPException as exc:
            if exc.status >= 400:
                return error_response(exc.status, exc.reason, "server_error")
            raise

    @web.middleware
    async def log_middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        resp = await handler(request)
        if request.path not in ("/health", "/v1/health"):
            log(f"request: {request.method} {request.raw_path} {resp.status}")
        return resp

    @web.middleware
    async def auth_middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        key = self.cfg.api_key
        if key is not None and request.path not in AUTH_EXEMPT_PATHS:
            if request.headers.get("Authorization", "") != f"Bearer {key}":
                self.stats.unauthorized += 1
                return error_response(401, "Invalid API Key", "authentication_error")
        return await handler(request)

    def inference_route(self, handler: Handler) -> Handler:
        """Wrap an inference handler: bookkeeping, the loading 503 and --hang."""

        async def wrapped(request: web.Request) -> web.StreamResponse:
            self.stats.requests += 1
            self.stats.last_headers = headers_dict(request.headers)
            self.stats.last_path = request.raw_path
            if self.loading:
                self.stats.rejected_loading += 1
                return error_response(503, "Loading model", "unavailable_error")
            if self.cfg.hang:
                await request.read()
                await asyncio.Event().wait()  # forever (until the client leaves)
            return await handler(request)

        return wrapped

    # -- request parsing -------------------------------------------------- #

    @staticmethod
    async def json_body(request: web.Request) -> JSONDict:
        raw = await request.read()
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BadRequest(f"Invalid JSON in request body: {exc}") from None
        if not isinstance(body, dict):
            raise BadRequest("Request body must be a JSON object")
        return body

    def plan(self, body: JSONDict, prompt: str) -> Plan:
        """How many tokens to produce: --tokens, capped by max_tokens/n_predict."""
        n = self.cfg.tokens
        finish = "stop"
        for key in ("max_tokens", "max_completion_tokens", "n_predict"):
            cap = body.get(key)
            if isinstance(cap, int) and not isinstance(cap, bool) and cap >= 0 and cap < n:
                n, finish = cap, "length"
        prompt_tokens = count_words(prompt)
        if self.cfg.ctx_size is not None and prompt_tokens > self.cfg.ctx_size:
            raise ContextExceeded(prompt_tokens, self.cfg.ctx_size)
        return Plan(n_tokens=n, finish_reason=finish, prompt_tokens=prompt_tokens)

    @staticmethod
    def include_usage(body: JSONDict) -> bool:
        opts = body.get("stream_options")
        return isinstance(opts, dict) and opts.get("include_usage") is True

    # -- streaming -------------------------------------------------------- #

    async def pace(self, start: float, i: int) -> None:
        """Sleep until token ``i`` (0-based) is due under --token-rate."""
        if self.cfg.token_rate > 0:
            due = start + (i + 1) / self.cfg.token_rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)

    async def stream_events(
        self,
        request: web.Request,
        events: Iterator[tuple[bool, bytes]],
        gated: bool,
    ) -> web.StreamResponse:
        """Send SSE events one write each.

        ``events`` yields ``(is_token, data)``: token events are paced by
        --token-rate and counted for --crash-after-tokens.  With ``gated``
        every event after the first waits for one ``/debug/release`` credit.
        """
        resp = web.StreamResponse(
            status=200,
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"},
        )
        self.stats.active_streams += 1
        try:
            await resp.prepare(request)
            crash_after = self.cfg.crash_after_tokens
            if crash_after is not None and crash_after <= 0:
                self.crash(0)
            start = time.monotonic()
            sent_tokens = 0
            for index, (is_token, data) in enumerate(events):
                if gated and index > 0:
                    await self.gate.wait()
                if is_token:
                    await self.pace(start, sent_tokens)
                await resp.write(data)
                if is_token:
                    sent_tokens += 1
                    if crash_after is not None and sent_tokens >= crash_after:
                        self.crash(sent_tokens)
            await resp.write_eof()
        except asyncio.CancelledError:
            # The client went away and aiohttp cancelled the handler.
            self.stats.cancelled_streams += 1
            raise
        except ConnectionResetError:
            # The client went away and a write noticed first.
            self.stats.cancelled_streams += 1
        else:
            self.stats.completed_streams += 1
        finally:
            self.stats.active_streams -= 1
        return resp

    @staticmethod
    def crash(sent: int) -> NoReturn:
        log_err(f"fake-llama: crashing after {sent} token chunks (--crash-after-tokens)")
        os._exit(1)

    async def paced_sleep(self, n_tokens: int) -> None:
        """Non-streamed answers take as long as their streamed version would."""
        if self.cfg.token_rate > 0 and n_tokens > 0:
            await asyncio.sleep(n_tokens / self.cfg.token_rate)

    # -- informational routes -------------------------------------------- #

    async def health(self, request: web.Request) -> web.Response:
        if self.loading:
            return error_response(503, "Loading model", "unavailable_error")
        return web.json_response({"status": "ok"})

    def generation_settings(self) -> JSONDict:
        return {
            "n_predict": -1,
            "temperature": 0.8,
            "top_k": 40,
            "top_p": 0.95,
            "min_p": 0.05,
            "seed": 4294967295,
            "stream": False,
        }

    def slot(self) -> JSONDict:
        return {
            "id": 0,
            "id_task": -1,
            "n_ctx": self.cfg.ctx_size or N_CTX,
            "speculative": False,
            "is_processing": self.stats.active_streams > 0,
            "params": self.generation_settings(),
        }

    async def props(self, request: web.Request) -> web.Response:
        return web.json_response({
            "default_generation_settings": {**self.slot(), "is_processing": False},
            "total_slots": 1,
            "model_path": self.cfg.model_path or f"/models/{self.cfg.model_name}.gguf",
            "model_alias": self.cfg.model_name,
            "chat_template": "{% for m in messages %}{{ m.content }}{% endfor %}",
            "build_info": "fake-llama-server",
        })

    async def metrics(self, request: web.Request) -> web.Response:
        """llama-server's Prometheus text with --metrics (a few of its families), else its 501."""
        if not self.cfg.metrics:
            return error_response(501, "This server does not support metrics endpoint. Start it with `--metrics`",
                                  "not_supported_error")
        lines = []
        for name, kind, value in (("llamacpp:prompt_tokens_total", "counter", self.stats.prompt_tokens),
                                  ("llamacpp:tokens_predicted_total", "counter", self.stats.predicted_tokens),
                                  ("llamacpp:requests_processing", "gauge", self.stats.active_streams)):
            lines += [f"# HELP {name} {name} (fake)", f"# TYPE {name} {kind}", f"{name} {value}"]
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")

    async def slots(self, request: web.Request) -> web.Response:
        return web.json_response([self.slot()])

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({
            "object": "list",
            "data": [{
                "id": self.cfg.model_name,
                "aliases": list(self.cfg.aliases),
                "tags": list(self.cfg.tags),
                "object": "model",
                "created": self.started,
                "owned_by": "llamacpp",
                "meta": {"n_ctx_train": N_CTX, "n_embd": self.cfg.embedding_dim},
            }],
        })

    # -- chat completions ------------------------------------------------- #

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        body = await self.json_body(request)
        messages = body.get("messages")
        if not isinstance(messages, list):
            raise BadRequest("'messages' is required and must be a list")
        plan = self.reuse(self.plan(body, message_text(messages)), message_text(messages))
        tool_name = self.first_tool_name(body)
        cid, created = new_id("chatcmpl"), int(time.time())

        def chunk(delta: JSONDict, finish: str | None, **extra: Any) -> JSONDict:
            return {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": self.cfg.model_name,
                "system_fingerprint": "fake",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                **extra,
            }

        if body.get("stream") is True:
            started = time.monotonic()

            def events() -> Iterator[tuple[bool, bytes]]:
                finish = plan.finish_reason
                if tool_name is not None:
                    call = self.tool_call(tool_name, index=0)
                    yield False, sse(chunk({"role": "assistant", "content": None, "tool_calls": [call]}, None))
                    finish = "tool_calls"
                else:
                    for i in range(plan.n_tokens):
                        delta: JSONDict = {"content": token_text(i)}
                        if i == 0:
                            delta = {"role": "assistant", **delta}
                        yield True, sse(chunk(delta, None))
                elapsed = 1000 * (time.monotonic() - started)
                yield False, sse(chunk({}, finish, timings=plan.timings(elapsed)))
                if self.include_usage(body):
                    usage_chunk = chunk({}, None, usage=plan.usage())
                    usage_chunk["choices"] = []
                    yield False, sse(usage_chunk)
                yield False, sse("[DONE]")

            return await self.stream_events(request, events(), gated=body.get("x_gate") is True)

        started = time.monotonic()
        await self.paced_sleep(plan.n_tokens)
        message: JSONDict
        if tool_name is not None:
            message = {"role": "assistant", "content": None, "tool_calls": [self.tool_call(tool_name)]}
            finish = "tool_calls"
        else:
            message = {"role": "assistant", "content": plan.text}
            finish = plan.finish_reason
        return web.json_response({
            "id": cid,
            "object": "chat.completion",
            "created": created,
            "model": self.cfg.model_name,
            "system_fingerprint": "fake",
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": plan.usage(),
            "timings": plan.timings(1000 * (time.monotonic() - started)),
        })

    @staticmethod
    def first_tool_name(body: JSONDict) -> str | None:
        tools = body.get("tools")
        if not isinstance(tools, list) or not tools:
            return None
        first = tools[0]
        fn = first.get("function") if isinstance(first, dict) else None
        name = fn.get("name") if isinstance(fn, dict) else None
        return name if isinstance(name, str) else "tool"

    @staticmethod
    def tool_call(name: str, index: int | None = None) -> JSONDict:
        call: JSONDict = {
            "id": f"call_{uuid.uuid4().hex[:24]}",
            "type": "function",
            "function": {"name": name, "arguments": "{}"},
        }
        if index is not None:
            call["index"] = index
        return call

    # -- text completions ------------------------------------------------- #

    async def text_completions(self, request: web.Request) -> web.StreamResponse:
        body = await self.json_body(request)
        if "prompt" not in body:
            raise BadRequest("'prompt' is required")
        plan = self.reuse(self.plan(body, prompt_text(body["prompt"])), prompt_text(body["prompt"]))
        cid, created = new_id("cmpl"), int(time.time())

        def completion(text: str, finish: str | None, **extra: Any) -> JSONDict:
            return {
                "id": cid,
                "object": "text_completion",
                "created": created,
                "model": self.cfg.model_name,
                "system_fingerprint": "fake",
                "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
                **extra,
            }

        if body.get("stream") is True:
            started = time.monotonic()

            def events() -> Iterator[tuple[bool, bytes]]:
                for i in range(plan.n_tokens):
                    yield True, sse(completion(token_text(i), None))
                elapsed = 1000 * (time.monotonic() - started)
                yield False, sse(completion("", plan.finish_reason,
                                            timings=plan.timings(elapsed)))
                if self.include_usage(body):
                    usage_chunk = completion("", None, usage=plan.usage())
                    usage_chunk["choices"] = []
                    yield False, sse(usage_chunk)
                yield False, sse("[DONE]")

            return await self.stream_events(request, events(), gated=body.get("x_gate") is True)

        started = time.monotonic()
        await self.paced_sleep(plan.n_tokens)
        elapsed = 1000 * (time.monotonic() - started)
        return web.json_response(completion(
            plan.text, plan.finish_reason,
            usage=plan.usage(), timings=plan.timings(elapsed),
        ))

    # -- native /completion ----------------------------------------------- #

    async def native_completion(self, request: web.Request) -> web.StreamResponse:
        body = await self.json_body(request)
        prompt = prompt_text(body.get("prompt", ""))
        plan = self.reuse(self.plan(body, prompt), prompt)
        stop_type = "limit" if plan.finish_reason == "length" else "eos"

        def final(content: str, elapsed_ms: float) -> JSONDict:
            return {
                "index": 0,
                "content": content,
                "tokens": [],
                "id_slot": 0,
                "stop": True,
                "model": self.cfg.model_name,
                "tokens_predicted": plan.n_tokens,
                "tokens_evaluated": plan.prompt_tokens,
                "generation_settings": self.generation_settings(),
                "prompt": prompt,
                "has_new_line": False,
                "truncated": False,
                "stop_type": stop_type,
                "stopping_word": "",
                "tokens_cached": 0,
                "timings": plan.timings(elapsed_ms),
            }

        if body.get("stream") is True:
            started = time.monotonic()

            def events() -> Iterator[tuple[bool, bytes]]:
                for i in range(plan.n_tokens):
                    yield True, sse({"index": 0, "content": token_text(i), "tokens": [i],
                                     "stop": False, "id_slot": -1, "tokens_predicted": i + 1,
                                     "tokens_evaluated": plan.prompt_tokens})
                yield False, sse(final("", 1000 * (time.monotonic() - started)))

            return await self.stream_events(request, events(), gated=body.get("x_gate") is True)

        started = time.monotonic()
        await self.paced_sleep(plan.n_tokens)
        return web.json_response(final(plan.text, 1000 * (time.monotonic() - started)))

    # -- embeddings and rerank ------------------------------------------- #

    async def embeddings(self, request: web.Request) -> web.Response:
        body = await self.json_body(request)
        raw = body.get("input", body.get("content"))
        if isinstance(raw, str):
            inputs = [raw]
        elif isinstance(raw, list) and raw and all(isinstance(x, int) for x in raw):
            inputs = [" ".join(map(str, raw))]  # one pre-tokenized input
        elif isinstance(raw, list):
            inputs = [x if isinstance(x, str) else json.dumps(x) for x in raw]
        else:
            raise BadRequest("'input' must be a string or a list")
        dim = self.cfg.embedding_dim
        prompt_tokens = sum(count_words(text) for text in inputs)
        return web.json_response({
            "object": "list",
            "model": self.cfg.model_name,
            "data": [
                {"object": "embedding", "index": i, "embedding": fake_embedding(text, dim)}
                for i, text in enumerate(inputs)
            ],
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
        })

    async def rerank(self, request: web.Request) -> web.Response:
        body = await self.json_body(request)
        query, documents = body.get("query"), body.get("documents")
        if not isinstance(query, str) or not isinstance(documents, list):
            raise BadRequest("'query' (string) and 'documents' (list) are required")
        query_words = set(query.lower().split())
        results = []
        for i, doc in enumerate(documents):
            text = doc if isinstance(doc, str) else json.dumps(doc)
            words = set(text.lower().split())
            score = len(query_words & words) / len(query_words) if query_words else 0.0
            results.append({"index": i, "relevance_score": score})
        results.sort(key=lambda r: (-r["relevance_score"], r["index"]))
        top_n = body.get("top_n")
        if isinstance(top_n, int) and top_n >= 0:
            results = results[:top_n]
        tokens = count_words(query) + sum(count_words(str(d)) for d in documents)
        return web.json_response({
            "model": self.cfg.model_name,
            "object": "list",
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            "results": results,
        })

    # -- audio ------------------------------------------------------------ #

    async def transcriptions(self, request: web.Request) -> web.Response:
        if not request.content_type.startswith("multipart/"):
            raise BadRequest("expected a multipart/form-data body")
        reader = await request.multipart()
        fields: dict[str, str] = {}
        file_bytes = 0
        digest = hashlib.sha256()
        filename: str | None = None
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                continue  # a nested multipart: not something a form upload sends
            if part.name == "file":
                filename = part.filename
                while chunk := await part.read_chunk():
                    file_bytes += len(chunk)
                    digest.update(chunk)
            elif part.name is not None:
                fields[part.name] = await part.text()
        return web.json_response({
            "text": f"fake transcription of {file_bytes} bytes",
            "model": fields.get("model"),
            "file_bytes": file_bytes,
            "file_sha256": digest.hexdigest(),
            "filename": filename,
            "fields": fields,
        })

    # -- the rest of llama-server's routes, and the backends llama-swap routes to -- #

    def extra(self, kind: str) -> Handler:
        """A small llama-server-like answer of ``kind``, with ``served_path`` and ``served_by``."""

        async def handler(request: web.Request) -> web.Response:
            raw = await request.read()
            try:
                body: Any = json.loads(raw) if raw else {}
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise BadRequest(f"Invalid JSON in request body: {exc}") from None
            obj = body if isinstance(body, dict) else {}
            text = json.dumps(obj.get("messages", obj.get("input", obj.get("content", obj.get("prompt", "")))))
            answer: JSONDict
            if kind == "response":
                answer = {"object": "response", "status": "completed", "model": obj.get("model"),
                          "output": [{"type": "message", "role": "assistant",
                                      "content": [{"type": "output_text", "text": self.plan(obj, "").text}]}]}
            elif kind == "input_tokens":
                answer = {"input_tokens": count_words(text)}
            elif kind == "tokenize":
                answer = {"tokens": list(range(count_words(text)))}
            elif kind == "detokenize":
                answer = {"content": " ".join(map(str, obj.get("tokens", [])))}
            elif kind == "apply_template":
                answer = {"prompt": text}
            elif kind == "slot_action":
                action = request.query.get("action")
                if action not in ("save", "restore", "erase"):
                    raise BadRequest("Invalid action")
                answer = {"id_slot": int(request.match_info["id_slot"]), "action": action,
                          "filename": obj.get("filename")}
            elif kind == "lora_adapters":
                answer = {"adapters": body if isinstance(body, list) else []}
            else:  # set_props, voices, loras, image, task
                answer = {"kind": kind, "model": obj.get("model", request.query.get("model"))}
            return web.json_response({**answer, "served_path": request.raw_path, "served_by": self.cfg.model_name})

        return handler

    async def slot_action(self, request: web.Request) -> web.Response:
        """With --slot-save-path, as llama-server: save, restore or erase slot 0's cache (a file)."""
        body = await self.json_body(request) if request.can_read_body else {}
        action = request.query.get("action")
        if request.match_info["id_slot"] != "0":
            raise BadRequest("Invalid slot ID")
        if action == "erase":
            n_erased, self.cache_words = len(self.cache_words), []
            return web.json_response({"id_slot": 0, "n_erased": n_erased})
        if action not in ("save", "restore"):
            raise BadRequest("Invalid action")
        filename = body.get("filename")
        if not isinstance(filename, str) or not filename or "/" in filename or filename.startswith("."):
            raise BadRequest("Invalid filename")
        path = os.path.join(str(self.cfg.slot_save_path), filename)
        log(f"slot {action}: {filename}")
        if action == "save":
            if self.cfg.slot_save_hang:
                await asyncio.Event().wait()  # forever (until the client leaves)
            if self.cfg.slot_save_fail:
                return error_response(500, "failed to save slot (--slot-save-fail)", "server_error")
            data = json.dumps({"model": self.cfg.model_name, "words": self.cache_words}).encode()
            data += b"\n" + b"\0" * self.cfg.slot_file_bytes
            with open(path, "wb") as f:
                f.write(data)
            return web.json_response({"id_slot": 0, "filename": filename, "n_saved": len(self.cache_words),
                                      "n_written": len(data), "timings": {"save_ms": 0.1}})
        if self.cfg.slot_restore_delay > 0:
            try:
                await asyncio.wait_for(self.gate.wait(), self.cfg.slot_restore_delay)
            except asyncio.TimeoutError:
                pass
        if self.cfg.slot_restore_fail:
            return error_response(500, "failed to restore slot (--slot-restore-fail)", "server_error")
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            raise BadRequest("failed to restore slot state from file") from None
        self.cache_words = list(json.loads(data.split(b"\n", 1)[0])["words"])
        return web.json_response({"id_slot": 0, "filename": filename, "n_restored": len(self.cache_words),
                                  "n_read": len(data), "timings": {"restore_ms": 0.1}})

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=("echo.v1", "echo.v2"))
        await ws.prepare(request)
        await ws.send_json({"hello": self.cfg.model_name, "protocol": ws.ws_protocol, "path": request.raw_path,
                            "headers": headers_dict(request.headers)})
        async for msg in ws:
            if msg.type.name == "TEXT" and msg.data.startswith("close:"):
                await ws.close(code=int(msg.data.split(":", 1)[1]))
            elif msg.type.name == "TEXT":
                await ws.send_str(msg.data)
            elif msg.type.name == "BINARY":
                await ws.send_bytes(msg.data)
        return ws

    # -- test hooks ------------------------------------------------------- #

    async def echo(self, request: web.Request) -> web.Response:
        """Everything the request carried, exactly as received."""
        body = await request.read()
        return web.json_response({
            "method": request.method,
            "path": request.raw_path,
            "query": request.rel_url.raw_query_string,  # as sent, still percent-encoded
            "headers": headers_dict(request.headers),
            "header_list": [[k, v] for k, v in request.headers.items()],
            "body_b64": base64.b64encode(body).decode("ascii"),
            "pid": os.getpid(),
        })

    async def stall(self, request: web.Request) -> web.StreamResponse:
        """A small known-length body that stops after its first bytes (and never ends)."""
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.content_length = 100
        await resp.prepare(request)
        await resp.write(b'{"partial"')
        await asyncio.Event().wait()  # until the client goes away (the handler is cancelled)
        return resp

    async def release(self, request: web.Request) -> web.Response:
        """Give gated streams ``n`` (default 1) more events."""
        try:
            n = int(request.query.get("n", "1"))
        except ValueError:
            raise BadRequest("'n' must be an integer") from None
        await self.gate.release(max(0, n))
        return web.json_response({"released": n, "credits": self.gate.credits, "waiting": self.gate.waiting})

    async def debug_stats(self, request: web.Request) -> web.Response:
        s = self.stats
        return web.json_response({
            "requests": s.requests,
            "rejected_loading": s.rejected_loading,
            "unauthorized": s.unauthorized,
            "active_streams": s.active_streams,
            "cancelled_streams": s.cancelled_streams,
            "completed_streams": s.completed_streams,
            "gate_waiting": self.gate.waiting,
            "gate_credits": self.gate.credits,
            "loading": self.loading,
            # CLOCK_MONOTONIC is system-wide on Linux: a parent can compare it with its own.
            "ready_at_monotonic": self.ready_at,
            "last_headers": s.last_headers,
            "last_path": s.last_path,
        })

    async def debug_pid(self, request: web.Request) -> web.Response:
        return web.json_response({"pid": os.getpid()})


# --------------------------------------------------------------------------- #
# Process life cycle
# --------------------------------------------------------------------------- #


def bind_socket(host: str, port: int) -> socket.socket:
    """One listening-ready socket (a single address, so port 0 means one port)."""
    family, type_, proto, _, addr = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, type_, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(addr)
    sock.setblocking(False)
    return sock


def url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def exit_during_startup(cfg: Config, code: int) -> NoReturn:
    path = f"/models/{cfg.model_name}.gguf"
    log_err(f"llama_model_load: error loading model: failed to open {path}")
    log_err("llama_model_load_from_file_impl: failed to load model")
    log_err(f"error: failed to load model '{path}'")
    log_err("main: exiting due to model loading failure")
    sys.exit(code)


def sigterm_during_startup(signum: int, frame: object) -> None:
    log("shutting down")
    sys.exit(0)


async def serve(cfg: Config, sock: socket.socket) -> int:
    server = FakeLlamaServer(cfg)
    runner = web.AppRunner(
        server.make_app(),
        handler_cancellation=True,
        access_log=None,
        shutdown_timeout=0.2,  # in-flight requests get this long on SIGTERM
    )
    await runner.setup()
    site = web.SockSite(runner, sock)
    await site.start()

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    if not cfg.ignore_sigterm:
        loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)

    port = sock.getsockname()[1]
    server.ready_at = time.monotonic() + cfg.startup_delay
    log_err(f"main: server is listening on http://{url_host(cfg.host)}:{port} - starting the main loop")
    log(f"loading model '{cfg.model_name}'")
    # the stage lines a real llama-server logs while it loads (swapproxy.progress reads them)
    log_err(f"srv    load_model: loading model '{cfg.model_name}'")
    loop.call_later(cfg.startup_delay * 0.4, log_err, "load_tensors: loading model tensors, this can take a while...")
    loop.call_later(cfg.startup_delay * 0.7, log_err, "llama_context: constructing llama_context")
    loop.call_later(cfg.startup_delay, log, "model loaded")

    await stop.wait()
    log("shutting down")
    try:
        await asyncio.wait_for(runner.cleanup(), timeout=2.0)
    except (asyncio.TimeoutError, Exception):  # never let cleanup stall the exit
        pass
    return 0


def main(argv: list[str] | None = None) -> int:
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    sys.stderr.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    cfg = parse_args(argv)
    log(f"starting (pid {os.getpid()})")

    # Spawn the grandchild before touching signal dispositions: SIG_IGN would
    # be inherited across exec and make the grandchild ignore SIGTERM too.
    if cfg.fork_grandchild:
        grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
        print(f"grandchild pid {grandchild.pid}", flush=True)

    if cfg.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, sigterm_during_startup)

    if cfg.big_line is not None:
        for i in range(cfg.big_line_count):
            print("x" * cfg.big_line + ("" if cfg.big_line_count == 1 else f" {i}"), flush=True)
    if cfg.exit_during_startup is not None:
        exit_during_startup(cfg, cfg.exit_during_startup)
    if cfg.bind_delay > 0:
        log(f"waiting {cfg.bind_delay:g}s before binding")
        time.sleep(cfg.bind_delay)

    try:
        sock = bind_socket(cfg.host, cfg.port)
    except OSError as exc:
        log_err(f"error: couldn't bind HTTP server socket, hostname: {cfg.host}, port: {cfg.port}: {exc}")
        return 1
    try:
        return asyncio.run(serve(cfg, sock))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
