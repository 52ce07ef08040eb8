"""``python runners/sweep.py zoo=all metric=pixel_removal``: the same as ``interpbench sweep ...``."""
from interpbench.cli import sweep_main

if __name__ == "__main__":
    sweep_main()
