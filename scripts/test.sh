#!/usr/bin/env bash
# Install what the tests need (a virtualenv in .venv) and run the whole suite.
# This is the README's test command, and .ci/run calls exactly this script.
# With no arguments: the default suite on two workers, then the real-llama-server tests
# (scripts/install_llama.py builds llama-server and fetches a small model first, once).
# With arguments, only pytest with those (e.g. scripts/test.sh -k swap, scripts/test.sh -m llama).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "==> creating .venv"
    "$PYTHON" -m venv .venv
fi
echo "==> installing swapproxy and its test dependencies into .venv"
.venv/bin/python -m pip install --disable-pip-version-check -q -e '.[test]'

# The UI test drives a real headless browser: Debian's chromium (Playwright never downloads one
# here). Install it when missing, if we may (root, or password-less sudo); once there, the UI
# test must run rather than skip.
have_chromium() { command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; }
if ! have_chromium && command -v apt-get >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ]; then
        as_root=(env)
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        as_root=(sudo -n env)
    else
        as_root=()
    fi
    if [ "${#as_root[@]}" -gt 0 ]; then
        echo "==> installing chromium for the UI test (apt-get)"
        if ! { "${as_root[@]}" apt-get update -qq \
               && "${as_root[@]}" DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }; then
            echo "could not install chromium: the UI test will be skipped" >&2
        fi
    else
        echo "no chromium, and no root or sudo to install it: the UI test will be skipped" >&2
    fi
fi
if have_chromium; then
    export SWAPPROXY_REQUIRE_BROWSER=1
fi

# systemd-analyze checks scripts/swapproxy.service (Debian's systemd package has it).
if ! command -v systemd-analyze >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then
    echo "==> installing systemd (for systemd-analyze verify)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null; } \
        || echo "could not install systemd: the unit test will fail" >&2
fi

# pytest exits 5 when it collected no tests: that is a failure here, never a pass.
run_pytest() {
    set +e
    .venv/bin/python -m pytest "$@"
    local code=$?
    set -e
    if [ "$code" -eq 5 ]; then
        echo "pytest collected no tests: failing" >&2
    fi
    return "$code"
}

if [ "$#" -gt 0 ]; then  # a developer's selection: just that, as asked
    echo "==> running pytest $*"
    run_pytest "$@"
    exit $?
fi

echo "==> running the test suite (two workers)"
run_pytest -n 2

echo "==> real llama-server tests: building/fetching llama-server and the model if not cached"
.venv/bin/python scripts/install_llama.py
run_pytest -m llama
