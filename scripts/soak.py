#!/usr/bin/env python3
"""Soak test: many requests over three models, with real swaps, against a real swapproxy.

The benchmark lives in scripts/bench/soak.py (its docstring says what it measures;
``--help`` prints it); this file keeps ``python scripts/soak.py`` working.
"""

import sys

from bench.soak import main  # scripts/ is first on sys.path when this file runs

if __name__ == "__main__":
    sys.exit(main())
