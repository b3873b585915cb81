"""Request bodies that must be read whole before they are sent on: kept in memory up to 1 MiB, on disk beyond.

Multipart uploads are spooled so the ``model`` form field can be found wherever
it sits; chunked bodies of unknown length are spooled so the body limit holds
before anything goes upstream.
"""

from __future__ import annotations

import mmap
import tempfile
from collections.abc import AsyncIterator
from typing import IO

from aiohttp import web

from ..errors import PayloadTooLarge
from ..routing import find_multipart_field, multipart_field_span

__all__ = ["Spool", "spool_body", "too_large"]

_IN_MEMORY = 1 << 20


def too_large(limit: int) -> PayloadTooLarge:
    """The 413 for a body over ``limit`` bytes."""
    return PayloadTooLarge(f"request body is larger than the limit of {limit} bytes (maxRequestBodyMB)")


class Spool:
    """A request body kept in memory up to 1 MiB, in a temporary file beyond."""

    def __init__(self) -> None:
        self.size = 0
        self._memory = bytearray()
        self._file: IO[bytes] | None = None

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self._file is None and len(self._memory) + len(chunk) <= _IN_MEMORY:
            self._memory += chunk
            return
        if self._file is None:
            self._file = tempfile.TemporaryFile()
            self._file.write(self._memory)
            self._memory = bytearray()
        self._file.write(chunk)

    def find_model(self, boundary: bytes) -> str | None:
        """The multipart ``model`` field, read from memory or through an mmap of the file."""
        if self._file is None:
            return find_multipart_field(bytes(self._memory), boundary)
        self._file.flush()
        with mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ) as view:
            return find_multipart_field(view, boundary)

    def renamed(self, boundary: bytes, model: str) -> tuple[AsyncIterator[bytes], int]:
        """The body with its multipart ``model`` field set to ``model`` (as is when it has none), and its size."""
        if self._file is None:
            span = multipart_field_span(bytes(self._memory), boundary)
        else:
            self._file.flush()
            with mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ) as view:
                span = multipart_field_span(view, boundary)
        if span is None:
            return self.chunks(), self.size
        value = model.encode()
        return self.chunks((span[0], span[1], value)), self.size - (span[1] - span[0]) + len(value)

    async def chunks(self, replace: tuple[int, int, bytes] | None = None) -> AsyncIterator[bytes]:
        """The body, in chunks; with ``replace`` (start, end, value), bytes start..end become value."""
        if self._file is None:
            data = bytes(self._memory)
            yield data if replace is None else data[:replace[0]] + replace[2] + data[replace[1]:]
            return
        self._file.seek(0)
        offset = 0
        while chunk := self._file.read(1 << 16):
            start, offset = offset, offset + len(chunk)
            if replace is not None:
                lo, hi, value = replace
                size = len(chunk)
                inserted = value if start <= lo < offset else b""
                chunk = chunk[:max(0, min(lo - start, size))] + inserted + chunk[max(0, min(hi - start, size)):]
            yield chunk

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


async def spool_body(request: web.Request, limit: int) -> Spool:
    """Read the request body into a spool; 413 as soon as it passes ``limit`` bytes."""
    spool = Spool()
    try:
        async for chunk in request.content.iter_chunked(1 << 16):
            spool.write(chunk)
            if spool.size > limit:
                raise too_large(limit)
    except BaseException:
        spool.close()
        raise
    return spool
