#!/usr/bin/env python3
"""slotCache with the real llama-server: a long conversation's next message after a swap, restored or not.

The benchmark lives in scripts/bench/slotcache.py (its docstring says what it measures;
``--help`` prints it); this file keeps ``python scripts/bench_slotcache.py`` working.
"""

import sys

from bench.slotcache import main  # scripts/ is first on sys.path when this file runs

if __name__ == "__main__":
    sys.exit(main())
