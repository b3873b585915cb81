#!/usr/bin/env bash
# The README's first command: install swapproxy (into .venv), build/fetch a real
# llama-server and a small model into ~/.cache/swapproxy (once; later runs take
# seconds), then serve config.example.yaml on 127.0.0.1:8080 until Ctrl-C.
# Extra arguments go to swapproxy (e.g. scripts/run.sh --listen :8080).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "==> creating .venv"
    "$PYTHON" -m venv .venv
fi
echo "==> installing swapproxy into .venv"
.venv/bin/python -m pip install --disable-pip-version-check -q -e .

.venv/bin/python scripts/install_llama.py

echo "==> starting swapproxy on http://127.0.0.1:8080 (Ctrl-C stops it and every model)"
exec .venv/bin/swapproxy -c config.example.yaml "$@"
