#!/usr/bin/env python3
"""The GGUF memory estimate against the real llama-server's own figures and RSS, side by side.

The benchmark lives in scripts/bench/footprint.py (its docstring says what it measures;
``--help`` prints it); this file keeps ``python scripts/bench_footprint.py`` working.
"""

import sys

from bench.footprint import main  # scripts/ is first on sys.path when this file runs

if __name__ == "__main__":
    sys.exit(main())
