"""Request/response captures for ``GET /api/captures/{id}``: what went to a model and what came back.

Captures live in memory only, in a FIFO bounded in bytes (``captureBuffer`` MB; the
oldest go first, one larger than the whole buffer is not kept). Each body is cut at
:func:`body_cap` bytes; bodies of :data:`COMPRESS_FROM` bytes or more are kept
zlib-compressed. Routes whose payloads are audio or images keep only some parts
(:data:`PARTS_BY_PATH`); an answer that is not 2xx keeps no response body (its error
message is in the request's history row).

The request path pays only for references: the request's headers and the body sent
upstream as they are, the response's first chunks (:class:`CaptureTap`); everything
else — cutting, compressing, and storing — is done by the history's thread. Secrets are
taken out when a capture is read (:func:`capture_json`): the values of credential headers
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
from typing import Any

from .metrics import TokenTap
from .redact import REDACTED, Redactor, is_secret_name

__all__ = ["CaptureTap", "Captures", "Material", "body_cap", "capture_json", "PARTS_BY_PATH"]

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
#: Bodies this large or larger are kept compressed (zlib, fastest level).
COMPRESS_FROM = 4096
_CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key"})
_HEADER_COST = 48  # bytes a header is counted for in the buffer's bound (names and values are short)


def body_cap(buffer_bytes: int) -> int:
    """The most of one body kept with a buffer of ``buffer_bytes`` (0: captures are off)."""
    return min(MAX_BODY, buffer_bytes // 4) if buffer_bytes > 0 else 0


class CaptureTap(TokenTap):
    """A :class:`~swapproxy.metrics.TokenTap` that also keeps the body's first ``cap`` bytes (as the chunks came)."""

    __slots__ = ("chunks", "kept", "cap")

    def __init__(self, cap: int) -> None:
        super().__init__()
        self.chunks: list[bytes] = []
        self.kept = 0
        self.cap = cap

    def __call__(self, chunk: bytes) -> None:
        TokenTap.__call__(self, chunk)
        if self.kept < self.cap:
            self.chunks.append(chunk)
            self.kept += len(chunk)


@dataclass(slots=True)
class Material:
    """What the request path hands over for one capture: references, nothing copied."""

    path: str
    status: int
    req_headers: Mapping[str, str] | None
    req_body: bytes | None
    resp_headers: Mapping[str, str] | None
    tap: TokenTap | None


@dataclass(slots=True)
class _Body:
    data: bytes
    compressed: bool
    truncated: bool

    @classmethod
    def of(cls, data: bytes, cap: int, truncated: bool = False) -> _Body:
        if len(data) > cap:
            data, truncated = data[:cap], True
        if len(data) >= COMPRESS_FROM:
            return cls(zlib.compress(data, 1), True, truncated)
        return cls(data, False, truncated)

    def raw(self) -> bytes:
        return zlib.decompress(self.data) if self.compressed else self.data


@dataclass(slots=True)
class _Stored:
    path: str
    req_headers: Mapping[str, str] | None
    req_body: _Body | None
    resp_headers: Mapping[str, str] | None
    resp_body: _Body | None
    size: int


def _parts(path: str) -> int:
    for suffix, parts in PARTS_BY_PATH.items():
        if path.endswith(suffix):
            return parts
    return ALL_PARTS


def _response_body(tap: TokenTap, cap: int) -> _Body | None:
    if isinstance(tap, CaptureTap):
        data = b"".join(tap.chunks)
        return _Body.of(data, cap, truncated=tap.total > len(data))
    if tap.complete:  # a tap that kept everything it saw (a small body)
        return _Body.of(bytes(tap.tail), cap)
    return None


class Captures:
    """The byte-bounded FIFO of captures, by history row id. Used from the history's thread only."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self._items: OrderedDict[int, _Stored] = OrderedDict()

    def add(self, row_id: int, material: Material) -> bool:
        """Keep ``material`` as capture ``row_id``; False when captures are off or it is larger than the buffer."""
        cap = body_cap(self.limit)
        if not cap:
            return False
        parts = _parts(material.path)
        ok = 200 <= material.status < 300
        req_body = _Body.of(material.req_body, cap) if parts & REQ_BODY and material.req_body else None
        resp_body = (_response_body(material.tap, cap)
                     if ok and parts & RESP_BODY and material.tap is not None and material.tap.total else None)
        req_headers = material.req_headers if parts & REQ_HEADERS else None
        resp_headers = material.resp_headers if parts & RESP_HEADERS else None
        size = 128 + sum(len(b.data) for b in (req_body, resp_body) if b is not None)
        size += _HEADER_COST * sum(len(h) for h in (req_headers, resp_headers) if h is not None)
        if size > self.limit:
            return False
        self._items[row_id] = _Stored(material.path, req_headers, req_body, resp_headers, resp_body, size)
        self.size += size
        self._evict()
        return True

    def _evict(self) -> None:
        while self.size > self.limit and self._items:
            _, gone = self._items.popitem(last=False)
            self.size -= gone.size

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

    def get(self, row_id: int) -> _Stored | None:
        return self._items.get(row_id)


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


def _b64(body: _Body | None, redactor: Redactor, encoding: str | None = None) -> str | None:
    if body is None:
        return None
    return base64.b64encode(redactor.data(_decoded(body.raw(), encoding))).decode("ascii")


def capture_json(row_id: int, stored: _Stored, redactor: Redactor) -> dict[str, Any]:
    """llama-swap's capture shape (bodies base64), secrets taken out; plus whether a body was cut."""
    resp_headers = _headers(stored.resp_headers, redactor)
    encoding = None
    if stored.resp_headers is not None:
        encoding = stored.resp_headers.get("Content-Encoding")
        if encoding is not None and resp_headers is not None:  # the body shown is decoded
            resp_headers = {k: v for k, v in resp_headers.items() if k.lower() != "content-encoding"}
    return {
        "id": row_id,
        "req_path": stored.path,
        "req_headers": _headers(stored.req_headers, redactor),
        "req_body": _b64(stored.req_body, redactor),
        "resp_headers": resp_headers,
        "resp_body": _b64(stored.resp_body, redactor, encoding),
        "req_body_truncated": bool(stored.req_body and stored.req_body.truncated),
        "resp_body_truncated": bool(stored.resp_body and stored.resp_body.truncated),
    }
