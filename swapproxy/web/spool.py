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
from ..routing import find_multipart_field

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

    async def chunks(self) -> AsyncIterator[bytes]:
        if self._file is None:
            yield bytes(self._memory)
            return
        self._file.seek(0)
        while chunk := self._file.read(1 << 16):
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
