#!/usr/bin/env python3
"""The scheduler on seeded traces: the batching scheduler vs strict arrival order, side by side.

The benchmark lives in scripts/bench/sched.py (its docstring says what it measures;
``--help`` prints it); this file keeps ``python scripts/bench_sched.py`` working.
"""

import sys

from bench.sched import main  # scripts/ is first on sys.path when this file runs

if __name__ == "__main__":
    sys.exit(main())
