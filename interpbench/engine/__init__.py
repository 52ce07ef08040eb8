"""The train/evaluate engine: one model's training, one cell's evaluation, the jobs that hold them, the plan."""
