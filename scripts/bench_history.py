#!/usr/bin/env python3
"""What recording the request history costs: swapproxy's CPU per request, history on vs off, in paired rounds.

The benchmark lives in scripts/bench/history.py (its docstring says what it measures;
``--help`` prints it); this file runs it as ``python scripts/bench_history.py``.
"""

import sys

from bench.history import main  # scripts/ is first on sys.path when this file runs

if __name__ == "__main__":
    sys.exit(main())
