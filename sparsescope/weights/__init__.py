"""Weight sparsity statistics per layer × weight site and pruning sensitivity (the levers themselves live in
`sparsescope.levers`)."""

from sparsescope.weights.stats import nm_readiness, weight_stats, weight_table

__all__ = ["nm_readiness", "weight_stats", "weight_table"]
