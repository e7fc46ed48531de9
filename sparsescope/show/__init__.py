"""Show layer: what the explorer app and the notebooks draw, read from the run store and nothing else."""
