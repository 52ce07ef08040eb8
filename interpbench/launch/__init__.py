"""Launchers: where jobs run (in this process, local processes, SLURM job arrays)."""
