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
