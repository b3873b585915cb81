#!/usr/bin/env python3
"""swapproxy's performance: direct vs nginx vs swapproxy, in one run.

The benchmark lives in scripts/bench/perf.py (its docstring says what it measures;
``--help`` prints it); this file keeps ``python scripts/bench.py`` working.
"""

import sys

from bench.perf import run  # scripts/ is first on sys.path when this file runs

if __name__ == "__main__":
    sys.exit(run())
