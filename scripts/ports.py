"""Free local ports for the benchmark and soak scripts (one copy, imported by each).

The scripts run as ``python scripts/<name>.py``, so this folder is first on
``sys.path`` and ``import ports`` finds this file. A port found free may be
taken by someone else before it is used: callers that start servers on them
check that their servers came up.
"""

from __future__ import annotations

import socket

__all__ = ["free_port", "free_ports", "free_port_block"]


def free_port() -> int:
    """One loopback port that is free right now."""
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports that are free right now (held open together while choosing)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port_block(n: int) -> int:
    """A first port with ``n`` consecutive ports free right now (for ``startPort`` + ${PORT})."""
    for _ in range(200):
        base = free_port()
        if base + n >= 65000:
            continue
        try:
            for port in range(base, base + n):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError(f"no block of {n} free ports found")
