"""Free local ports for the benchmarks and the soak.

Ports come from below the kernel's ephemeral range (where outgoing connections
take theirs: a benchmark opens thousands), from a region the test suite does not
use (tests/conftest.py takes 16000..31000), and are checked free just before they
are handed out. Someone may still take one before it is used: callers that start
servers on them check that their servers came up.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

__all__ = ["free_port", "free_ports", "free_port_block", "bindable", "ephemeral_low"]

#: tests/conftest.py hands out 16000..31000 to its workers; these scripts take the rest.
_LOW, _HIGH = 31000, 32700


def ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (where outgoing connections take theirs)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def bindable(port: int) -> bool:
    """Whether a loopback socket can bind ``port`` right now."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """One loopback port that is free right now."""
    return free_port_block(1)


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports that are free right now."""
    base = free_port_block(n)
    return list(range(base, base + n))


def free_port_block(n: int) -> int:
    """A first port with ``n`` consecutive ports free right now (for ``startPort`` + ${PORT})."""
    for _ in range(500):
        if _HIGH <= ephemeral_low() and n < (_HIGH - _LOW) // 2:
            base = random.randrange(_LOW, _HIGH - n)
        else:  # an unusual ephemeral range: ask the kernel
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                base = int(s.getsockname()[1])
            if base + n >= 65000:
                continue
        if all(bindable(port) for port in range(base, base + n)):
            return base
    raise RuntimeError(f"no block of {n} free ports found")
