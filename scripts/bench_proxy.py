#!/usr/bin/env python3
"""What going through swapproxy costs: direct vs proxied, with control rows.

The benchmark lives in scripts/bench/proxy.py (its docstring says what it measures;
``--help`` prints it); this file keeps ``python scripts/bench_proxy.py`` working.
"""

import sys

from bench.proxy import run  # scripts/ is first on sys.path when this file runs

if __name__ == "__main__":
    sys.exit(run())
