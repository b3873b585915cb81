"""scripts/swapproxy.service: systemd-analyze accepts it, and it says what the README promises."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[1] / "scripts" / "swapproxy.service"


def test_unit_has_the_required_settings() -> None:
    text = UNIT.read_text()
    for line in ("Type=notify", "ExecReload=/bin/kill -HUP $MAINPID", "KillMode=mixed", "Restart=on-failure",
                 "WatchdogSec=", "User=swapproxy"):
        assert line in text, line
    active = [ln for ln in text.splitlines() if not ln.startswith("#")]
    assert not any(ln.startswith(("PrivateDevices=yes", "MemoryDenyWriteExecute=yes")) for ln in active)


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is missing: scripts/test.sh installs Debian's systemd package")
    # verify checks that ExecStart exists: point it at this environment's interpreter.
    unit = tmp_path / "swapproxy.service"
    unit.write_text(UNIT.read_text().replace("/opt/swapproxy/bin/swapproxy", str(Path(sys.executable).resolve())))
    out = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "swapproxy.service" not in out.stderr, out.stderr  # no warnings about our unit
