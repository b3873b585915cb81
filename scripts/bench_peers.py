#!/usr/bin/env python3
"""Scale-out: the latency a peer hop adds, and the CPU a /metrics scrape costs with ten models.

The benchmark lives in scripts/bench/peers.py (its docstring says what it measures;
``--help`` prints it); this file keeps ``python scripts/bench_peers.py`` working.
"""

import sys

from bench.peers import main  # scripts/ is first on sys.path when this file runs

if __name__ == "__main__":
    sys.exit(main())
