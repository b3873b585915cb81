"""Helpers shared by the tests, beside conftest.py (``from support import ...``).

Nothing here imports from scripts/, nor does scripts/ import from here.
"""

from __future__ import annotations

import socket
from pathlib import Path


# -- ports ---------------------------------------------------------------------------------------
# The same two checks as scripts/bench/ports.py (the benchmarks' copy): conftest.py hands out
# ports from 16000..31000, below the kernel's ephemeral range; the benchmarks take 31000 and up.
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
