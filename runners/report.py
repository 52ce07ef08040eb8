"""``python runners/report.py <path> ...``: the same as ``interpbench report ...``."""
from interpbench.cli import report_main

if __name__ == "__main__":
    report_main()
