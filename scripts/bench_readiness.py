#!/usr/bin/env python3
"""How soon after an upstream turns healthy swapproxy notices.

The benchmark lives in scripts/bench/readiness.py (its docstring says what it measures;
``--help`` prints it); this file keeps ``python scripts/bench_readiness.py`` working.
"""

import sys

from bench.readiness import main  # scripts/ is first on sys.path when this file runs

if __name__ == "__main__":
    sys.exit(main())
