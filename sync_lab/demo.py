"""
``python -m sync_lab.demo``: the demo and benchmark, kept at this name for the
command; the code is :mod:`sync_lab.bench.demo`.
"""

import sys

from sync_lab.bench.demo import main

if __name__ == "__main__":
    sys.exit(main())
