"""Where swapproxy listens: ``--listen`` addresses, and TLS from ``--tls-cert-file``/``--tls-key-file``.

``--listen`` takes one address or several, comma-separated, as llama-server's
``--host 127.0.0.1,::1`` does: ``HOST:PORT``, ``:PORT`` (all interfaces),
``[v6]:PORT``, or a bare ``HOST`` (an IPv6 literal needs no brackets then),
which takes the port the other addresses give (else 8080, or 8443 with TLS, as
llama-swap's defaults). TLS uses the standard library's :mod:`ssl`.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

__all__ = ["Address", "DEFAULT_PORT", "DEFAULT_TLS_PORT", "parse_listen", "tls_context"]

DEFAULT_PORT = 8080
DEFAULT_TLS_PORT = 8443


@dataclass(frozen=True)
class Address:
    """One address to listen on; ``host`` None means every interface."""

    host: str | None
    port: int

    def __str__(self) -> str:
        host = self.host or "*"
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    @property
    def loopback(self) -> bool:
        return self.host in ("127.0.0.1", "localhost", "::1")


def _one(item: str) -> tuple[str | None, int | None]:
    """``item`` → (host, port or None when it gives none)."""
    if item.startswith("["):
        host, close, rest = item[1:].partition("]")
        if not close or (rest and not rest.startswith(":")):
            raise ValueError(f"listen address {item!r}: expected [IPv6]:PORT")
        port_text = rest[1:] if rest else None
    elif item.count(":") > 1:  # a bare IPv6 literal such as ::1
        host, port_text = item, None
    else:
        host, sep, port_text_or_host = item.rpartition(":")
        if not sep:
            host, port_text = port_text_or_host, None
        else:
            port_text = port_text_or_host
    if port_text is None:
        return host or None, None
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"listen address {item!r}: port {port_text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"listen address {item!r}: port out of range")
    return host or None, port


def parse_listen(value: str, default_port: int = DEFAULT_PORT) -> list[Address]:
    """Every address of a ``--listen`` value, in order, without repeats."""
    items = [item.strip() for item in value.split(",")]
    if not value.strip() or any(not item for item in items):
        raise ValueError(f"listen address {value!r}: an empty address")
    parsed = [_one(item) for item in items]
    ports = {port for _, port in parsed if port is not None}
    if len(ports) > 1 and any(port is None for _, port in parsed):
        raise ValueError(f"listen address {value!r}: give every address its port, or one port for all")
    shared = ports.pop() if len(ports) == 1 else default_port
    out: list[Address] = []
    for host, port in parsed:
        address = Address(host, shared if port is None else port)
        if address not in out:
            out.append(address)
    return out


def tls_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """A server context for ``cert_file`` (the chain, PEM) and ``key_file``; OSError or
    ssl.SSLError when they cannot be read or do not match."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return context
