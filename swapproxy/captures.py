"""Request/response captures for ``GET /api/captures/{id}``: what went to a model and what came back.

Captures live in memory only, in a FIFO bounded in bytes (``captureBuffer`` MB; the
oldest go first, one larger than the whole buffer is not kept). Each body is cut at
:func:`body_cap` bytes. Routes whose payloads are audio or images keep only some parts
(:data:`PARTS_BY_PATH`); an answer that is not 2xx keeps no response body (its error
message is in the request's history row).

Capturing costs next to nothing per request: the request path hands over references
(the request's headers, the body sent upstream, the response's first chunks as
:class:`~swapproxy.tokens.TokenTap` kept them, given a ``cap``), and the history's thread
files them, cutting a body that is too long (the one copy). Nothing is compressed: compressing every body would cost
more CPU than the whole history may (scripts/bench_history.py). Secrets are taken out
when a capture is read (:func:`capture_json`), as is a gzip or deflate response body
decoded: the values of credential headers
(``Authorization``, ``Cookie``, ``x-api-key``, any header whose name says key, token,
secret or password) become ``***``, and every configured key is hidden wherever it
occurs in the other headers and in the bodies.
"""

from __future__ import annotations

import base64
import zlib
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from .tokens import TokenTap
from .redact import REDACTED, Redactor, is_secret_name

__all__ = ["Captures", "Material", "body_cap", "capture_json", "PARTS_BY_PATH"]

REQ_HEADERS, REQ_BODY, RESP_HEADERS, RESP_BODY = 1, 2, 4, 8
ALL_PARTS = REQ_HEADERS | REQ_BODY | RESP_HEADERS | RESP_BODY
#: Routes whose request or response body is audio or an image: those bodies are not kept
#: (matched at the end of the path, so ``/upstream/<model>/v1/audio/speech`` too).
PARTS_BY_PATH = {
    "/v1/audio/speech": REQ_HEADERS | REQ_BODY | RESP_HEADERS,
    "/v1/audio/voices": REQ_HEADERS | RESP_HEADERS | RESP_BODY,
    "/audio/transcriptions": REQ_HEADERS | RESP_HEADERS | RESP_BODY,
    "/v1/images/generations": REQ_HEADERS | REQ_BODY | RESP_HEADERS,
    "/v1/images/edits": REQ_HEADERS | RESP_HEADERS,
    "/sdapi/v1/txt2img": REQ_HEADERS | REQ_BODY | RESP_HEADERS,
    "/sdapi/v1/img2img": REQ_HEADERS | RESP_HEADERS,
}
#: The most of one body a capture keeps (less with a small buffer: see body_cap).
MAX_BODY = 1 << 20
_CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key"})
#: What a header and a capture's book-keeping are counted for in the buffer's bound: measured with
#: tracemalloc (a chat request's and answer's nine headers, its objects), so that the buffer's
#: bytes are about the memory it holds.
_HEADER_COST = 100
_ITEM_COST = 400


def body_cap(buffer_bytes: int) -> int:
    """The most of one body kept with a buffer of ``buffer_bytes`` (0: captures are off)."""
    return min(MAX_BODY, buffer_bytes // 4) if buffer_bytes > 0 else 0


@dataclass(slots=True)
class Material:
    """What the request path hands over for one capture: references, nothing copied."""

    path: str
    status: int
    req_headers: Mapping[str, str] | None
    req_body: bytes | None
    resp_headers: Mapping[str, str] | None
    tap: TokenTap | None  # the response body's tap; once filed, its first bytes are in resp_body
    req_cut: bool = False  # the request body was longer than the capture keeps
    resp_body: bytes | None = None
    resp_cut: bool = False


def _response_body(tap: TokenTap, cap: int) -> tuple[bytes | None, bool]:
    """(the response body kept, whether it was cut): one bytes object, the tap's chunks joined."""
    if tap.chunks is not None:
        data = b"".join(tap.chunks)
        if len(data) > cap:
            data = data[:cap]
        return data, tap.total > len(data)
    return (bytes(tap.tail), False) if tap.complete else (None, False)


@lru_cache(maxsize=512)
def _parts(path: str) -> int:
    for suffix, parts in PARTS_BY_PATH.items():
        if path.endswith(suffix):
            return parts
    return ALL_PARTS


class Captures:
    """The byte-bounded FIFO of captures, by history row id. Used from the history's thread only.

    A capture keeps the references it was handed (a body longer than :func:`body_cap` is cut,
    the one copy made); what a route does not keep (:data:`PARTS_BY_PATH`) and a failed
    answer's body are dropped and not counted.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self._items: OrderedDict[int, tuple[Material, int]] = OrderedDict()

    def add(self, row_id: int, material: Material) -> bool:
        """Keep ``material`` as capture ``row_id``; False when captures are off or it is larger than the buffer."""
        cap = body_cap(self.limit)
        if not cap:
            return False
        parts = _parts(material.path)
        body = material.req_body
        if body is not None:
            if not parts & REQ_BODY:
                body = material.req_body = None
            elif len(body) > cap:
                body = material.req_body = body[:cap]
                material.req_cut = True
        tap, material.tap = material.tap, None  # its tail (a copy of the body's end) is not kept
        if tap is not None and parts & RESP_BODY and 200 <= material.status < 300:
            material.resp_body, material.resp_cut = _response_body(tap, cap)
        if not parts & REQ_HEADERS:
            material.req_headers = None
        if not parts & RESP_HEADERS:
            material.resp_headers = None
        size = _ITEM_COST + (len(body) if body is not None else 0)
        if material.resp_body is not None:
            size += len(material.resp_body)
        for headers in (material.req_headers, material.resp_headers):
            if headers is not None:
                size += _HEADER_COST * len(headers)
        if size > self.limit:
            return False
        self._items[row_id] = (material, size)
        self.size += size
        if self.size > self.limit:
            self._evict()
        return True

    def _evict(self) -> None:
        items = self._items
        while self.size > self.limit and items:
            self.size -= items.popitem(last=False)[1][1]

    def resize(self, limit: int) -> None:
        self.limit = limit
        self._evict()

    def clear(self) -> None:
        self._items.clear()
        self.size = 0

    def __contains__(self, row_id: object) -> bool:
        return row_id in self._items

    def __len__(self) -> int:
        return len(self._items)

    def get(self, row_id: int) -> Material | None:
        found = self._items.get(row_id)
        return None if found is None else found[0]


def _headers(headers: Mapping[str, str] | None, redactor: Redactor) -> dict[str, str] | None:
    """The first value of each header, credentials replaced (llama-swap's one-value-per-name shape)."""
    if headers is None:
        return None
    out: dict[str, str] = {}
    for name, value in headers.items():
        if name in out:
            continue
        hidden = name.lower() in _CREDENTIAL_HEADERS or is_secret_name(name)
        out[name] = REDACTED if hidden else redactor.text(value)
    return out


def _decoded(body: bytes, encoding: str | None) -> bytes:
    """A gzip or deflate response body decoded (as far as a cut body allows); others as they are."""
    if encoding is None or encoding.strip().lower() not in ("gzip", "deflate", "x-gzip"):
        return body
    try:
        inflater = zlib.decompressobj(wbits=47)  # gzip or zlib, found from the header
        return inflater.decompress(body, MAX_BODY)
    except zlib.error:
        return body


def _b64(body: bytes | None, redactor: Redactor) -> str | None:
    return None if body is None else base64.b64encode(redactor.data(body)).decode("ascii")


def capture_json(row_id: int, material: Material, redactor: Redactor) -> dict[str, Any]:
    """llama-swap's capture shape (bodies base64), secrets taken out; plus whether a body was cut."""
    resp_headers = _headers(material.resp_headers, redactor)
    resp_body = material.resp_body
    encoding = material.resp_headers.get("Content-Encoding") if material.resp_headers is not None else None
    if encoding is not None and resp_body is not None:  # the body shown is decoded
        resp_body = _decoded(resp_body, encoding)
        if resp_headers is not None:
            resp_headers = {k: v for k, v in resp_headers.items() if k.lower() != "content-encoding"}
    req_body = material.req_body
    return {
        "id": row_id,
        "req_path": material.path,
        "req_headers": _headers(material.req_headers, redactor),
        "req_body": _b64(req_body, redactor),
        "resp_headers": resp_headers,
        "resp_body": _b64(resp_body, redactor),
        "req_body_truncated": material.req_cut,
        "resp_body_truncated": material.resp_cut,
    }
