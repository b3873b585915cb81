#!/usr/bin/env python3
"""Install a real Open WebUI into a virtualenv cached beside the real llama-server.

The ``openwebui`` marker's tests (``tests/test_openwebui.py``) start a genuine
Open WebUI against swapproxy and drive it through its own HTTP API. Open WebUI
is a large install (it pulls torch: about 7 GB and several minutes on a fresh
machine), so it lives in its own virtualenv under the cache folder and is
installed once::

    $SWAPPROXY_CACHE/openwebui/          (default ~/.cache/swapproxy/openwebui)
        venv/                            the virtualenv; venv/bin/open-webui
        manifest.json                    version, size, install seconds
        install.log                      pip's whole output of the last install

Usage::

    python3 scripts/install_openwebui.py            # install (a no-op when already there)
    python3 scripts/install_openwebui.py --check    # exit 0 if installed, 1 if not
    python3 scripts/install_openwebui.py --force    # remove and reinstall

Before installing, the free disk space of the cache folder is checked: with less
than :data:`NEEDED_GIB` free it fails with a clear message (it never half-installs
and never skips). Progress is shown as pip reports it (one line per package
collected, downloaded and installed). Standard library only.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

__all__ = ["OPEN_WEBUI_VERSION", "main"]

#: The Open WebUI release the tests were written against (its field names, its API).
OPEN_WEBUI_VERSION = "0.12.4"
#: Free space the install needs (it takes about 7 GB; pip's unpacking needs room on top).
NEEDED_GIB = 12
#: Open WebUI supports Python 3.11 and 3.12 only.
PYTHONS = ("python3.11", "python3.12")


def cache_root() -> Path:
    override = os.environ.get("SWAPPROXY_CACHE")
    return Path(override).expanduser().resolve() if override else Path.home() / ".cache" / "swapproxy"


def home() -> Path:
    return cache_root() / "openwebui"


def venv_python(root: Path) -> Path:
    return root / "venv" / "bin" / "python"


def installed_version(root: Path) -> str | None:
    """The Open WebUI version the cached venv holds, or None (no venv, or a broken one)."""
    py = venv_python(root)
    if not py.exists():
        return None
    try:
        done = subprocess.run([str(py), "-c", "import importlib.metadata as m; print(m.version('open-webui'))"],
                              capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0 or not (root / "venv" / "bin" / "open-webui").exists():
        return None
    return done.stdout.strip() or None


def find_python() -> str:
    for name in (*PYTHONS, "python3"):
        path = shutil.which(name)
        if path is None:
            continue
        done = subprocess.run([path, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                              capture_output=True, text=True, check=False)
        if done.stdout.strip() in ("3.11", "3.12"):
            return path
    raise SystemExit("install_openwebui: Open WebUI needs Python 3.11 or 3.12, and neither was found")


def check_disk(root: Path) -> None:
    """Fail (never skip) when the cache folder's disk cannot take the install."""
    probe = root
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < NEEDED_GIB * (1 << 30):
        raise SystemExit(
            f"install_openwebui: only {free / (1 << 30):.1f} GiB free on the disk of {probe}; installing "
            f"Open WebUI {OPEN_WEBUI_VERSION} (it pulls torch) needs about {NEEDED_GIB} GiB. Free some space or "
            f"set SWAPPROXY_CACHE to a folder on a larger disk, then run this again."
        )


def folder_size(path: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


@contextlib.contextmanager
def locked(root: Path) -> Iterator[None]:
    """One install at a time (two test runs starting together wait for each other)."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def run_logged(argv: Sequence[str], log: Path) -> None:
    """Run ``argv``, its output to ``log`` in full and pip's progress lines to our stdout."""
    started = time.monotonic()
    with open(log, "a") as out:
        out.write(f"$ {' '.join(argv)}\n")
        proc = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(line)
            if line.startswith(("Collecting", "Downloading", "Installing", "Successfully", "ERROR", "error")):
                minutes, secs = divmod(int(time.monotonic() - started), 60)
                print(f"  [{minutes}:{secs:02d}] {line.rstrip()[:150]}", flush=True)
        code = proc.wait()
    if code != 0:
        raise SystemExit(f"install_openwebui: `{' '.join(argv[:4])} ...` failed with exit code {code}; "
                         f"the whole output is in {log}")


def install(root: Path, force: bool) -> int:
    with locked(root):
        version = installed_version(root)
        if version == OPEN_WEBUI_VERSION and not force:
            print(f"==> Open WebUI {version} already installed in {root / 'venv'}", flush=True)
            return 0
        check_disk(root)
        started = time.monotonic()
        if (root / "venv").exists():
            print(f"==> removing the old venv ({version or 'incomplete'})", flush=True)
            shutil.rmtree(root / "venv")
        log = root / "install.log"
        log.write_text("")
        print(f"==> installing Open WebUI {OPEN_WEBUI_VERSION} into {root / 'venv'} (once: about 7 GB and several "
              f"minutes, it pulls torch; the whole output goes to {log})", flush=True)
        run_logged([find_python(), "-m", "venv", str(root / "venv")], log)
        py = str(venv_python(root))
        run_logged([py, "-m", "pip", "install", "--disable-pip-version-check", "--progress-bar", "off",
                     f"open-webui=={OPEN_WEBUI_VERSION}"], log)
        version = installed_version(root)
        if version != OPEN_WEBUI_VERSION:
            raise SystemExit(f"install_openwebui: installed, but the venv reports version {version!r}; see {log}")
        seconds = round(time.monotonic() - started)
        size = folder_size(root / "venv")
        (root / "manifest.json").write_text(json.dumps(
            {"open_webui": version, "install_seconds": seconds, "venv_bytes": size,
             "installed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, indent=2) + "\n")
        print(f"==> Open WebUI {version} installed in {seconds // 60}:{seconds % 60:02d} "
              f"({size / (1 << 30):.1f} GiB)", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 0 if installed, 1 if not")
    parser.add_argument("--force", action="store_true", help="remove the cached venv and install again")
    args = parser.parse_args(argv)
    root = home()
    if args.check:
        version = installed_version(root)
        print(f"Open WebUI {version} in {root / 'venv'}" if version else f"Open WebUI not installed in {root}")
        return 0 if version == OPEN_WEBUI_VERSION else 1
    return install(root, args.force)


if __name__ == "__main__":
    sys.exit(main())
