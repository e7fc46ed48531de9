"""Harvest: turn measured sparsity into cheaper models and compare them on one footing."""
