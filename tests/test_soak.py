"""The soak (scripts/soak.py) in a short mode: real swapproxy subprocess, real swaps, no failures.

300 requests from 16 concurrent clients over alpha/beta (a swap group) and
gamma (non-exclusive), with the hot swap model flipping about every 60
requests, so a handful of real swaps happen under load. Every request must end
in 200 or an explicit 429/503 (see the script's docstring), none may hang, and
swapproxy must leave no upstream behind when it gets SIGTERM. RSS is measured
and shown on failure but not asserted: 300 requests are too few for a leak to
show through the interpreter's own warm-up.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path
from types import ModuleType

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "soak.py"


def _load_soak() -> ModuleType:
    if str(SCRIPT.parent) not in sys.path:  # as when it runs as a script: its helpers sit beside it
        sys.path.insert(0, str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("swapproxy_soak_script", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


soak = _load_soak()


async def test_short_soak_has_no_failures_or_hangs() -> None:
    opts = soak.SoakOptions(requests=300, concurrency=16, seed=6, phase=60, cross=0.0, deadline=10.0, quiet=True)
    began = time.monotonic()
    result = await soak.soak(opts)
    elapsed = time.monotonic() - began
    table = soak.format_table(result)
    assert result.done == 300, table
    assert result.failures == 0, table
    assert result.hangs == 0, table
    assert result.orphans == [], table
    assert result.proxy_exit_code == 0, table
    assert result.statuses["200"] > 150, table
    assert sum(result.model_starts.values()) >= 4, table  # alpha, beta, gamma, and at least one swap back
    assert elapsed < 15, table
