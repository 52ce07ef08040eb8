"""``python runners/status.py <the sweep's overrides>``: the same as ``interpbench status ...``
(``--verify store=PATH``: check the whole store, quarantine what is corrupt)."""
from interpbench.cli import status_main

if __name__ == "__main__":
    status_main()
