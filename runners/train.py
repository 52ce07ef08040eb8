"""``python runners/train.py zoo=fa_cnn ...``: the same as ``interpbench train ...`` (train only)."""
from interpbench.cli import train_main

if __name__ == "__main__":
    train_main()
