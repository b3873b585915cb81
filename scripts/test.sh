#!/usr/bin/env bash
# Install what the tests need (a virtualenv in .venv) and run the whole suite.
# This is the README's test command, and .ci/run calls exactly this script.
# Extra arguments go to pytest (e.g. scripts/test.sh -k swap).
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

echo "==> running the test suite"
# pytest exits 5 when it collected no tests: that is a failure here, never a pass.
set +e
.venv/bin/python -m pytest "$@"
code=$?
set -e
if [ "$code" -eq 5 ]; then
    echo "pytest collected no tests: failing" >&2
fi
exit "$code"
