#!/usr/bin/env python3
"""Swap time with the real llama-server: swapproxy vs router mode vs a bare start.

The benchmark lives in scripts/bench/swap.py (its docstring says what it measures;
``--help`` prints it); this file keeps ``python scripts/bench_swap.py`` working.
"""

import sys

from bench.swap import main  # scripts/ is first on sys.path when this file runs

if __name__ == "__main__":
    sys.exit(main())
