"""Compare the runs of one or more sweeps (table and figures); see ceexp/compare.py.

    python scripts/compare.py outputs/multirun/<date>/<time> [--metrics acc ece smece] [--by loss] [--ref loss=ce]
"""
import sys

from ceexp.compare import main

if __name__ == "__main__":
    sys.exit(main())
