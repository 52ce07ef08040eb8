"""The hydra config of the sweep (package data)."""
